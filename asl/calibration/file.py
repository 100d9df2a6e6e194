"""The per-model calibration file: ASL's settings chosen by `python -m asl.bench calibrate`,
with what they were chosen from. Read strictly: a file that would silently give a wrong
threshold fails, naming the file and the field (docs/algorithms.md section 14)."""
from __future__ import annotations

import json
import math
import pathlib

from ..atomic import write_atomic

FORMAT = 2  # 2: chosen by agreement with the full cache, judged on held-out prompts
POOLINGS = ("avg", "max")
SOURCES = ("tasks", "file")


class CalibrationError(ValueError):
    """A calibration file that cannot be used; the message names the file and the field."""


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _str_list(v) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, str) for x in v)


def _int_list(v) -> bool:
    return isinstance(v, list) and bool(v) and all(_is_int(x) for x in v)


# dotted field -> (check, what is allowed)
FIELDS = {
    "format": (lambda v: v == FORMAT, f"the integer {FORMAT}"),
    "model": (lambda v: isinstance(v, str) and bool(v), "a non-empty string (the model's name)"),
    "num_layers": (lambda v: _is_int(v) and v >= 2, "an integer >= 2"),
    "asl": (lambda v: isinstance(v, dict), "an object"),
    "asl.tau": (lambda v: _is_number(v) and v >= 0, "a finite number >= 0"),
    "asl.l_min": (_is_int, "an integer (a layer)"),
    "asl.l_obs": (lambda v: _is_int(v) and v >= 2, "an integer >= 2"),
    "asl.select_tokens": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "asl.window": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "asl.kernel": (lambda v: _is_int(v) and v >= 1 and v % 2 == 1, "an odd integer >= 1"),
    "asl.pooling": (lambda v: v in POOLINGS, f"one of {', '.join(POOLINGS)}"),
    "target": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "prompts": (lambda v: isinstance(v, dict), "an object"),
    "prompts.source": (lambda v: v in SOURCES, f"one of {', '.join(SOURCES)}"),
    "figures": (lambda v: isinstance(v, dict), "an object"),
    "figures.n": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "figures.tuning": (lambda v: isinstance(v, dict), "an object"),
    "figures.tuning.agreement": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "figures.tuning.kv_share": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "figures.held_out": (lambda v: v is None or isinstance(v, dict) and all(
        _is_number(v.get(k)) and 0 <= v[k] <= 1 for k in ("agreement", "kv_share")),
        "null or an object with agreement and kv_share in [0, 1]"),
    "figures.agreement_interval": (lambda v: v is None or isinstance(v, list) and len(v) == 2 and all(
        _is_number(x) and 0 <= x <= 1 for x in v), "null or [low, high] in [0, 1]"),
    "figures.target_met": (lambda v: isinstance(v, bool), "true or false"),
    "code": (lambda v: isinstance(v, str), "a string (the code version)"),
}
PROMPT_FIELDS = {
    "tasks": {"prompts.tasks": (_str_list, "a non-empty list of task names"),
              "prompts.lengths": (_int_list, "a non-empty list of integers"),
              "prompts.samples": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
              "prompts.seed": (_is_int, "an integer")},
    "file": {"prompts.file": (lambda v: isinstance(v, str) and bool(v), "a file name"),
             "prompts.sha256": (lambda v: isinstance(v, str) and len(v) == 64, "a sha256 hex digest")},
}


def _get(data: dict, dotted: str):
    node = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def check(data, where) -> dict:
    """`data` if it is a valid calibration, else CalibrationError naming `where` and the field."""
    if not isinstance(data, dict):
        raise CalibrationError(f"calibration file {where}: must hold a JSON object, got {type(data).__name__}")
    fields = dict(FIELDS)
    source = data.get("prompts", {}).get("source") if isinstance(data.get("prompts"), dict) else None
    fields.update(PROMPT_FIELDS.get(source, {}))
    for name, (ok, allowed) in fields.items():
        try:
            value = _get(data, name)
        except KeyError:
            raise CalibrationError(f"calibration file {where}: field {name!r} is missing ({allowed})") from None
        if not ok(value):
            raise CalibrationError(f"calibration file {where}: field {name!r} must be {allowed}, got {value!r}")
    if data["figures"]["target_met"] and data["figures"]["held_out"] is None:
        raise CalibrationError(f"calibration file {where}: field 'figures.target_met' is true with no held-out "
                               "prompt: only held-out agreement can meet the target")
    a, layers = data["asl"], data["num_layers"]
    _check_rules(data.get("rules", {}), layers, where)
    if not 0 <= a["l_min"] < layers:
        raise CalibrationError(f"calibration file {where}: field 'asl.l_min' must be a layer of the model "
                               f"(0..{layers - 1}), got {a['l_min']}")
    if a["l_obs"] > a["l_min"] + 1:
        raise CalibrationError(f"calibration file {where}: field 'asl.l_obs' must be <= asl.l_min + 1 = "
                               f"{a['l_min'] + 1}, got {a['l_obs']}")
    if a["select_tokens"] <= a["window"]:
        raise CalibrationError(f"calibration file {where}: field 'asl.select_tokens' must be larger than "
                               f"asl.window ({a['window']}), got {a['select_tokens']}")
    return data


def _check_rules(rules, layers: int, where) -> None:
    """The optional stopping rules' settings: {rule name: {threshold in [0, 1], l_min a layer, target_met}}."""
    if not isinstance(rules, dict):
        raise CalibrationError(f"calibration file {where}: field 'rules' must be an object, got {rules!r}")
    for name, r in rules.items():
        ok = (isinstance(r, dict) and _is_number(r.get("threshold")) and 0 <= r["threshold"] <= 1
              and _is_int(r.get("l_min")) and 0 <= r["l_min"] < layers and isinstance(r.get("target_met"), bool))
        if not ok:
            raise CalibrationError(f"calibration file {where}: field 'rules.{name}' must hold threshold (a number "
                                   f"in [0, 1]), l_min (a layer, 0..{layers - 1}) and target_met (true or false), "
                                   f"got {r!r}")


def read(path, model: str | None = None, num_layers: int | None = None, architecture: dict | None = None) -> dict:
    """The calibration in `path`, checked; with `model` / `num_layers`, also that it is that
    model's (a threshold calibrated on another model does not transfer). With `architecture`
    (the model's config fingerprint) the file's recorded one must equal it, and then the name
    may differ (the same model given by a folder path)."""
    path = pathlib.Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise CalibrationError(f"calibration file {path}: cannot be read ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CalibrationError(f"calibration file {path}: is not valid JSON ({e})") from None
    except RecursionError:
        raise CalibrationError(f"calibration file {path}: is not valid JSON (nested too deeply)") from None
    check(data, path)
    recorded = data.get("config")
    if architecture is not None and isinstance(recorded, dict):
        changed = [f"{k}: {recorded.get(k)!r} -> {v!r}" for k, v in architecture.items() if recorded.get(k) != v]
        if changed:
            raise CalibrationError(f"calibration file {path}: calibrated on another architecture: {'; '.join(changed)}"
                                   " (the file's model -> this model); calibrate this model")
    elif model is not None and data["model"] != model:
        raise CalibrationError(f"calibration file {path}: field 'model' is {data['model']!r}, not the model asked "
                               f"for ({model!r}); calibrate that model with python -m asl.bench calibrate")
    if num_layers is not None and data["num_layers"] != num_layers:
        raise CalibrationError(f"calibration file {path}: field 'num_layers' is {data['num_layers']}, but the model "
                               f"has {num_layers} layers")
    return data


def write(path, data: dict) -> pathlib.Path:
    """Check `data`, then write it (whole, via a temporary file)."""
    path = pathlib.Path(path)
    check(data, path)
    write_atomic(path, json.dumps(data, indent=1) + "\n")
    return path
