"""ASL's settings for a model: from its calibration file when there is one (bundled here as
`<name>.json`, or a path given), else the hand-set values the benchmark always used."""
from __future__ import annotations

import json
import pathlib
import re

from .file import read

BUNDLED_DIR = pathlib.Path(__file__).resolve().parent
PAPER_TAU = 0.3
PAPER_LAYERS = 32  # FastKV (layer 15), GemFilter (13) and ASL (l_min 10) are tuned on 32-layer models
# Hand-set, not calibrated, and used only if a bundled model's calibration file is missing (both
# ship one: qwen2.5-0.5b.json, smollm2-135m.json): the paper's tau = 0.3 never fires on these
# small models (docs/algorithms.md section 9); 0.7 is what the benchmark used before calibration.
FALLBACK_TAU = {"qwen2.5-0.5b": 0.7, "smollm2-135m": 0.7}
# The ASL paper's comparison scores every method's tokens the same way (window 32, average
# pooling, kernel 7; the authors' run_ruler_per_task.sh): only the layer differs.
SCORING = {"window": 32, "kernel": 7, "pooling": "avg"}
CONFIG_FIELDS = ("model_type", "num_layers", "hidden_size", "num_heads", "num_kv_heads", "vocab_size")
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def scaled_layer(paper_layer: int, num_layers: int) -> int:
    """A layer tuned on a 32-layer model, at the same relative depth of this model."""
    return min(num_layers - 1, max(0, round(paper_layer * num_layers / PAPER_LAYERS)))


def fingerprint(config) -> dict:
    """What identifies a model's architecture in a calibration file (a ModelConfig's fields)."""
    return {k: getattr(config, k) for k in CONFIG_FIELDS}


def bundled_file(name: str | None) -> pathlib.Path | None:
    """The calibration shipped with the package for the model `name`, if any."""
    if not isinstance(name, str) or not _SAFE.fullmatch(name):
        return None
    path = BUNDLED_DIR / f"{name}.json"
    return path if path.is_file() else None


def _bundled_for_config(config) -> pathlib.Path | None:
    """The bundled calibration whose recorded architecture is this config's, if exactly one."""
    want = fingerprint(config)
    hits = []
    for path in sorted(BUNDLED_DIR.glob("*.json")):
        try:
            if json.loads(path.read_text()).get("config") == want:
                hits.append(path)
        except (OSError, ValueError, AttributeError):
            continue
    return hits[0] if len(hits) == 1 else None


def asl_settings(name: str | None, num_layers: int, calibration=None, config=None, found=None) -> tuple[dict, str]:
    """({tau, l_min, l_obs, window, kernel, pooling[, select_tokens]}, where they come from).

    `calibration`: a file to use (it must name `name` when a name is given); else the bundled
    file of `name` (or, from `config`, of that architecture); else the fallback: tau 0.7 on the
    bundled models (hand-set), the paper's 0.3 on any other, l_min the paper's 10 of 32 layers
    scaled to this depth, l_obs 8 (at most l_min + 1). `found`: calibration_file's answer, read before."""
    data, path = found if found is not None else calibration_file(name, num_layers, calibration, config)
    if data is not None:
        a = data["asl"]
        settings = {k: a[k] for k in ("tau", "l_min", "l_obs", "window", "kernel", "pooling", "select_tokens")}
        return settings, f"calibrated ({path}: {judged(data)})"
    l_min = scaled_layer(10, num_layers)
    tau = FALLBACK_TAU.get(name, PAPER_TAU)
    why = "hand-set for the bundled model" if name in FALLBACK_TAU else "the paper's"
    return ({"tau": tau, "l_min": l_min, "l_obs": min(8, l_min + 1), **SCORING},
            f"not calibrated: tau {why}, l_min 10 of 32 layers scaled to {num_layers}")


def calibration_file(name: str | None, num_layers: int, calibration=None, config=None):
    """(the calibration that applies, read strictly, its path): `calibration` if given, else
    the bundled file of `name` or, from `config`, of that architecture; (None, None) without one."""
    path = pathlib.Path(calibration) if calibration is not None else bundled_file(name)
    if path is None and config is not None:
        path = _bundled_for_config(config)
    if path is None:
        return None, None
    return read(path, model=name, num_layers=num_layers,
                architecture=fingerprint(config) if config is not None else None), path


def rule_settings(data: dict | None) -> dict[str, dict]:
    """The stopping rules' calibrated settings in a calibration (`calibrate` chooses their
    thresholds from the same records as ASL's tau): {rule: {"threshold", "l_min"}}, empty
    without a file (None) or without rules."""
    rules = (data or {}).get("rules") or {}
    return {rule: {"threshold": r["threshold"], "l_min": r["l_min"]} for rule, r in rules.items()}


def judged(data: dict) -> str:
    """The calibration's verdict in one phrase: its held-out agreement, interval and target."""
    f, target = data["figures"], 100 * data["target"]
    held = f["held_out"]
    if held is None:
        return f"{f['n']} prompts, none held out: target {target:.0f}% NOT met"
    low, high = f["agreement_interval"]
    return (f"{100 * held['agreement']:.0f}% [{100 * low:.0f}, {100 * high:.0f}] of {held['n']} held-out answers equal "
            f"the full cache's at {100 * held['kv_share']:.0f}% of its KV, target {target:.0f}% "
            f"{'met' if f['target_met'] else 'NOT met'}")


def config_of(name: str):
    """The ModelConfig of a model given by name (bundled, folder, .gguf or cached hub id)."""
    from asl.models.config import ModelConfig
    from asl.models.loading import resolve_checkpoint

    folder = resolve_checkpoint(name)
    try:
        return ModelConfig.from_hf(json.loads((folder / "config.json").read_text()))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{folder / 'config.json'} cannot be read as a model config: {e}") from None


def settings_for(model, calibration=None) -> tuple[dict, str]:
    """asl_settings for a model given by name, ModelConfig, or anything with a `.config` (our
    Decoder, a transformers model). A name with a calibration file needs no checkpoint."""
    from asl.models.config import ModelConfig

    if isinstance(model, str):
        path = pathlib.Path(calibration) if calibration is not None else bundled_file(model)
        if path is not None:  # a file of this very name needs no checkpoint
            data = read(path)
            if data["model"] == model or not pathlib.Path(model).expanduser().exists():
                return asl_settings(model, data["num_layers"], path)  # the name must match then
        config = config_of(model)  # a folder or file: its architecture finds (or checks) the calibration
        return asl_settings(model, config.num_layers, calibration, config)
    config = getattr(model, "config", model)
    if not isinstance(config, ModelConfig):
        try:
            config = ModelConfig.from_hf(config)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"model must be a model name, a ModelConfig or a model with a .config, got "
                             f"{type(model).__name__} ({e})") from None
    return asl_settings(None, config.num_layers, calibration, config)
