"""python -m asl.bench calibrate: choose ASL's threshold (and l_min) for a model from prompts
without gold answers. The full cache's greedy answer is the label; the oracle says, for every
layer, whether selecting there keeps it; one ASL run per prompt records its variance ratios,
from which the layer ASL would pick at every candidate tau follows. Half the prompts tune
(the cheapest tau whose answers equal the full cache's on at least --agreement of them), the
other half judge: `target_met` only where the held-out agreement reaches --agreement too,
its Wilson interval beside it (docs/calibration.md).

Writes a calibration file that asl.ASL.for_model and the benchmark read (--out). Each prompt's
measurement is kept beside it as it is made (.<out>.partial.jsonl): an interrupted run, rerun
with the same command, measures only the prompts left. One run per --out at a time; an
existing --out is replaced only with --force.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import statistics
import sys
import time
from dataclasses import dataclass

import torch

from asl.atomic import write_atomic
from asl.bench.args import (Formatter, add_dtype, check_device, ints, model_config, one_line_errors, parse_tasks,
                            resolve_dtype_flag)
from asl.calibration.file import FORMAT
from asl.calibration.search import RULE_THRESHOLDS, PromptMeasure, check_grid, choose, choose_rule
from asl.policies import EntropyStop, JaccardStop

# Prompts of an easy task (ASL may select early) and two retrieval tasks (it must not).
DEFAULT_TASKS = "passkey,kv_retrieval,niah_single_2"
DEFAULT_TAUS = [round(0.05 * i, 2) for i in range(1, 31)]  # 0.05 .. 1.5
# The stopping rules calibrated beside ASL (the bench's names), each with its grid from the
# threshold that fires latest: Jaccard >= t fires later the higher t, entropy <= t the lower.
RULES = {"jaccard-stop": (JaccardStop, sorted(RULE_THRESHOLDS, reverse=True)),
         "entropy-stop": (EntropyStop, sorted(RULE_THRESHOLDS))}


@dataclass(frozen=True)
class Prompt:
    text: str
    max_new_tokens: int
    stop: tuple[str, ...] = ()
    held_out: bool = False  # judged, not tuned on
    label: str = ""  # task/length/sample, or the line of a --prompts file


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m asl.bench calibrate", description=__doc__, formatter_class=Formatter)
    ap.add_argument("--model", required=True, help="bundled name (qwen2.5-0.5b, smollm2-135m, gemma3-270m), HF folder or .gguf")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--prompts", default=None,
                     help="JSON lines: a string, or an object with \"prompt\" (and optional \"max_new_tokens\", "
                          "\"stop\") per line, used as given (no chat template is applied)")
    src.add_argument("--tasks", default=None,
                     help=f"bench tasks to draw prompts from; with neither flag: {DEFAULT_TASKS}")
    ap.add_argument("--lengths", default="2048", help="with --tasks: comma-separated prompt lengths in tokens")
    ap.add_argument("--samples", type=int, default=20, help="with --tasks: prompts per task and length")
    ap.add_argument("--seed", type=int, default=0, help="with --tasks: the samples' seed")
    ap.add_argument("--agreement", type=float, default=0.9,
                    help="the least share of answers equal to the full cache's, on the tuning prompts (to choose) "
                         "and on the held-out ones (target_met)")
    ap.add_argument("--taus", default=None, help="comma-separated candidate thresholds (default 0.05, 0.10, .., 1.5)")
    ap.add_argument("--l-min", default=None,
                    help="comma-separated candidate l_min (default: the paper's 10 of 32 layers, scaled)")
    ap.add_argument("--l-obs", type=int, default=8, help="ASL's l_obs (at most l_min + 1)")
    ap.add_argument("--select-tokens", type=int, default=None,
                    help="tokens kept by selection, the window included (default 512; 2048 with --preset paper)")
    ap.add_argument("--preset", choices=("paper",), default=None,
                    help="paper: the ASL authors' select_k (2048) and l_obs (8); l_min 10 of 32 layers scaled "
                         "(docs/algorithms.md section 17)")
    ap.add_argument("--max-new-tokens", type=int, default=32, help="with --prompts: answer length (the label's)")
    ap.add_argument("--out", default=None, help="the calibration file (default: calibration-<model>.json)")
    ap.add_argument("--force", action="store_true",
                    help="replace an existing --out, and measure again what an interrupted run of other settings left")
    add_dtype(ap)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    return ap


def _floats(text: str, name: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--{name} must be comma-separated numbers, got {text!r}") from None


def read_prompts(path: pathlib.Path, max_new_tokens: int) -> tuple[list[Prompt], str]:
    """The prompts of a JSON-lines file, and the file's sha256."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"--prompts {path}: cannot be read ({e.strerror or e})") from None
    prompts = []
    for i, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as e:
            raise ValueError(f"--prompts {path}, line {i}: not JSON ({getattr(e, 'msg', 'nested too deeply')})"
                             ) from None
        item = {"prompt": item} if isinstance(item, str) else item
        ok = (isinstance(item, dict) and isinstance(item.get("prompt"), str) and item["prompt"].strip()
              and isinstance(item.get("max_new_tokens", 1), int) and item.get("max_new_tokens", 1) >= 1
              and isinstance(item.get("stop", []), list) and all(isinstance(s, str) for s in item.get("stop", [])))
        if not ok:
            raise ValueError(f"--prompts {path}, line {i}: must be a non-empty string or an object with a non-empty "
                             "\"prompt\" string (optional \"max_new_tokens\" >= 1, \"stop\" list of strings)")
        prompts.append(Prompt(item["prompt"], item.get("max_new_tokens", max_new_tokens), tuple(item.get("stop", [])),
                              held_out=len(prompts) % 2 == 1, label=f"line {i}"))  # every second prompt judges
    if not prompts:
        raise ValueError(f"--prompts {path}: holds no prompt")
    return prompts, hashlib.sha256(data).hexdigest()


def parse(argv) -> argparse.Namespace:
    """Every check that needs no model; ValueError naming the argument."""
    args = parser().parse_args(argv)
    if args.prompts is None:
        args.tasks, args.lengths = parse_tasks(args.tasks or DEFAULT_TASKS, args.lengths)
        if args.samples < 1:
            raise ValueError(f"--samples must be >= 1, got {args.samples}")
    else:
        args.prompt_list, args.prompts_sha256 = read_prompts(pathlib.Path(args.prompts), args.max_new_tokens)
    args.taus = DEFAULT_TAUS if args.taus is None else _floats(args.taus, "taus")
    args.l_min = None if args.l_min is None else ints(args.l_min, "l-min", 0)
    check_grid(args.taus, args.l_min or [0], args.agreement, 10 ** 9)
    if args.select_tokens is None:
        args.select_tokens = 2048 if args.preset == "paper" else 512
    for name in ("l_obs", "select_tokens", "max_new_tokens", "threads"):
        value, least = getattr(args, name), 2 if name == "l_obs" else 1
        if value is not None and value < least:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {least}, got {value}")
    if args.select_tokens <= 32:
        raise ValueError(f"--select-tokens must be larger than ASL's window (32), got {args.select_tokens}")
    check_device(args.device)
    resolve_dtype_flag(args, "calibrate")
    args.out = pathlib.Path(args.out or f"calibration-{pathlib.Path(args.model).name}.json")
    if not args.out.parent.is_dir():
        raise ValueError(f"--out {args.out}: the folder {args.out.parent} does not exist")
    return args


def measure(model, tokenizer, prompt: Prompt, select_tokens: int, l_mins: list[int],
            l_obs: int) -> tuple[PromptMeasure, float]:
    """One prompt: the oracle (every layer but the last), then one ASL run per l_min that never
    fires before the last layer, for its ratios, and one run of a rule that never fires, for
    the other adaptive rules' signals, all forked from one full pass of the prompt (asl.sweep).
    Also the oracle's cost in prefills."""
    import asl
    from asl.calibration import SCORING

    last = model.config.num_layers - 1
    stop = list(prompt.stop) or None
    trunk = asl.prompt_trunk(model, tokenizer, prompt.text)
    result = asl.oracle_layer(model, tokenizer, prompt.text, select_tokens=select_tokens,
                              max_new_tokens=prompt.max_new_tokens, stop=stop, partials=False, trunk=trunk, **SCORING)
    points = [asl.ASL(tau=0.0, l_min=l_min, l_obs=min(l_obs, l_min + 1), select_tokens=select_tokens, l_max=last,
                      **SCORING) for l_min in l_mins]
    points.append(_SignalsOnly(select_tokens=select_tokens, l_min=0, **SCORING))
    outputs = asl.sweep(model, tokenizer, prompt.text, points, max_new_tokens=1, trunk=trunk).outputs
    ratios = {l_min: dict(out.trace.ratios) for l_min, out in zip(l_mins, outputs)}
    signals = outputs[-1].trace.signals
    return (PromptMeasure({o.layer: o.matches for o in result.layers}, ratios, result.prompt_tokens, prompt.held_out,
                          signals, prompt.label), result.cost)


class _SignalsOnly(JaccardStop):
    """Records the adaptive rules' signals at every layer and never selects."""

    def fires(self, signals):
        return torch.zeros_like(signals["depth"], dtype=torch.bool)


def calibrate(model, tokenizer, prompts: list[Prompt], taus, l_mins, target: float, select_tokens: int = 512,
              l_obs: int = 8, show: bool = False, progress: "Progress | None" = None) -> dict:
    """The choice over `prompts` (the calibration file's asl, target, figures and search).
    With `progress`, prompts it already holds are not measured again and new ones are added."""
    from asl.calibration import SCORING

    layers = model.config.num_layers
    check_grid(taus, l_mins, target, layers)
    done = progress.done if progress is not None else {}
    measures, costs = [], []
    for i, prompt in enumerate(prompts):
        before = i in done  # (add() below puts it there)
        if before:
            m, cost = done[i]
        else:
            m, cost = measure(model, tokenizer, prompt, select_tokens, l_mins, l_obs)
            if progress is not None:
                progress.add(i, m, cost)
        measures.append(m)
        costs.append(cost)
        if show:
            again = " (measured before)" if before else ""
            role = "held out" if m.held_out else "tuning"
            print(f"  prompt {i + 1}/{len(prompts)} ({role}): earliest matching layer {m.earliest}, stable from "
                  f"{m.stable} ({cost:.1f} prefills){again}", flush=True)
    c = choose(measures, taus, l_mins, target, layers, select_tokens)
    best, held = c.best, c.held
    return {
        "num_layers": layers,
        "asl": {"tau": best.tau, "l_min": best.l_min, "l_obs": min(l_obs, best.l_min + 1),
                "select_tokens": select_tokens, **SCORING},
        "target": target,
        "figures": {"n": best.n + (held.n if held else 0), "tuning": _figures(best),
                    "held_out": _figures(held) if held else None,
                    "agreement_interval": list(c.interval) if held else None,
                    "target_tuned": c.tuned, "target_met": c.met,
                    "earliest_layers": [m.earliest for m in measures], "stable_layers": [m.stable for m in measures]},
        "rules": rules(measures, best.l_min, target, layers, select_tokens),
        "measures": [m.as_json() for m in measures],  # every prompt's record: the choice can be redone from them
        "timing": {"oracle_cost_median": statistics.median(costs)},  # measured: the one part that varies
        "search": {"taus": sorted(set(taus)), "l_mins": sorted(set(l_mins)),
                   "columns": ["l_min", "tau", "agreement", "kv_share", "too_early", "layers_lost"],
                   "sweep": [[o.l_min, o.tau, round(o.agreement, 4), round(o.kv, 4), round(o.too_early, 4),
                              round(o.layers_lost, 3)] for o in c.sweep]},
    }


def rules(measures: list[PromptMeasure], l_min: int, target: float, layers: int, select_tokens: int) -> dict:
    """Each stopping rule's threshold, chosen from the same records and at the same l_min as
    ASL's tau (none from records without the rules' signals)."""
    if not all(m.signals for m in measures):
        return {}
    out = {}
    for name, (cls, thresholds) in RULES.items():
        c = choose_rule(measures, lambda t, cls=cls: cls(threshold=t), thresholds, l_min, target, layers, select_tokens)
        out[name] = {"threshold": c.best.tau, "l_min": l_min, "tuning": _figures(c.best),
                     "held_out": _figures(c.held) if c.held else None,
                     "agreement_interval": list(c.interval) if c.held else None,
                     "target_tuned": c.tuned, "target_met": c.met}
    return out


def _figures(o) -> dict:
    return {"n": o.n, "agree": o.agree, "agreement": o.agreement, "kv_share": o.kv, "too_early": o.too_early,
            "layers_lost": o.layers_lost}


def _task_prompts(tokenizer, args) -> list[Prompt]:
    from asl.bench.tasks import make_sample

    samples = [make_sample(t, tokenizer, n, i, args.seed) for i in range(args.samples) for n in args.lengths
               for t in args.tasks]
    return [Prompt(s.prompt, s.max_new_tokens, s.stop, held_out=s.index % 2 == 1, label=s.id)  # odd samples judge
            for s in samples]


def main(argv=None) -> int:
    return one_line_errors("python -m asl.bench calibrate", lambda: _main(sys.argv[1:] if argv is None else argv))


def _main(argv) -> int:
    from asl.bench.run.store import FolderLock
    from asl.calibration.defaults import scaled_layer

    args = parse(argv)
    folder, config = model_config(args.model, [] if args.prompts else args.lengths)
    args.l_min = args.l_min or [scaled_layer(10, config.num_layers)]
    check_grid(args.taus, args.l_min, args.agreement, config.num_layers)
    with FolderLock(args.out.parent, f".{args.out.name}.lock", args.out, "asl.bench calibrate"):
        return _locked_run(args, folder, config)


def _locked_run(args, folder, config) -> int:
    import asl
    from asl.bench.run.fingerprint import code_hash, git_commit, model_hash
    from asl.bench.run.runner import set_threads
    from asl.calibration import fingerprint, write
    from asl.models.dtype import describe_cpu

    if args.out.exists() and not args.force:
        raise ValueError(f"--out {args.out} exists; pass --force to replace it (or give another --out)")
    if args.prompts:
        source = {"source": "file", "file": pathlib.Path(args.prompts).name, "sha256": args.prompts_sha256}
    else:
        source = {"source": "tasks", "tasks": args.tasks, "lengths": args.lengths, "samples": args.samples,
                  "seed": args.seed}
    identity = {"model": model_hash(folder), "dtype": args.dtype, "device": args.device, "prompts": source,
                "select_tokens": args.select_tokens, "l_min": args.l_min, "l_obs": args.l_obs, "code": code_hash()}
    progress = Progress.open(args.out, identity, args.force)
    threads = set_threads(args.threads, 1)
    model, tokenizer = asl.load(folder, dtype=getattr(torch, args.dtype), device=args.device)
    prompts = args.prompt_list if args.prompts else _task_prompts(tokenizer, args)
    if progress.done:
        print(f"calibrate: resuming: {len(progress.done)} of {len(prompts)} prompts measured before "
              f"({progress.path})", flush=True)
    print(f"calibrate: dtype {args.dtype} ({args.dtype_reason})")
    print(f"calibrate: {args.model} ({config.num_layers} layers, {args.dtype}, {args.device}, {threads} threads); "
          f"{len(prompts)} prompts, select_tokens {args.select_tokens}, {len(args.taus)} taus x l_min {args.l_min}, "
          f"agreement target {args.agreement:g}", flush=True)
    begun = time.perf_counter()
    found = calibrate(model, tokenizer, prompts, args.taus, args.l_min, args.agreement, args.select_tokens, args.l_obs,
                      show=True, progress=progress)
    data = {"format": FORMAT, "model": args.model, **found, "config": fingerprint(config), "prompts": source,
            "run": {"dtype": args.dtype, "dtype_reason": args.dtype_reason, "cpu": describe_cpu(),
                    "device": args.device, "threads": threads,
                    "seconds": round(time.perf_counter() - begun, 1)},
            "code": identity["code"], "commit": git_commit(), "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    write(args.out, data)
    progress.path.unlink(missing_ok=True)  # its measurements are in --out now
    print(summary_text(data))
    print(f"written: {args.out}")
    return 0


class Progress:
    """The prompts measured so far, one JSON line each beside --out, under the settings that
    decide a measurement (model content, dtype, prompts, select_tokens, l_min, l_obs, code):
    a resume under other settings is refused, naming them. A line cut by a kill is ignored."""

    def __init__(self, path: pathlib.Path, done: dict):
        self.path, self.done = path, done

    @classmethod
    def open(cls, out: pathlib.Path, identity: dict, force: bool) -> "Progress":
        from asl.bench.run.fingerprint import differences

        path = out.with_name(f".{out.name}.partial.jsonl")
        identity = json.loads(json.dumps(identity))  # as it reads back (tuples become lists)
        done, lines = {}, _lines(path)
        if lines and not force:
            old = lines[0].get("identity") if isinstance(lines[0], dict) else None
            if old != identity:
                changed = differences(old, identity) if isinstance(old, dict) else ["its first line"]
                raise ValueError(f"{path} holds prompts measured under other settings ({'; '.join(changed[:4])}); "
                                 "rerun with those settings to resume, or pass --force to measure again")
            for item in lines[1:]:
                try:
                    done[item["i"]] = (PromptMeasure.from_json(item), float(item["cost"]))
                except (KeyError, TypeError, ValueError):
                    continue
        if not lines or force:
            write_atomic(path, json.dumps({"identity": identity}) + "\n")
        return cls(path, done)

    def add(self, i: int, m: PromptMeasure, cost: float) -> None:
        import os

        line = {"i": i, **m.as_json(), "cost": cost}
        with open(self.path, "a") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.done[i] = (m, cost)


def _lines(path: pathlib.Path) -> list:
    try:
        text = path.read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except (ValueError, RecursionError):
            continue  # a line a kill cut short
    return out


def summary_text(data: dict) -> str:
    a, f = data["asl"], data["figures"]
    tune, held = f["tuning"], f["held_out"]
    line = (f"chosen: tau {a['tau']:g}, l_min {a['l_min']} (l_obs {a['l_obs']}, select_tokens {a['select_tokens']}): "
            f"on {tune['n']} tuning prompts {100 * tune['agreement']:.0f}% of answers equal the full cache's at "
            f"{100 * tune['kv_share']:.0f}% of its KV")
    if held is None:
        line += "; no held-out prompt, so the target is NOT met (give at least two prompts)"
    else:
        low, high = f["agreement_interval"]
        line += (f"; on {held['n']} held-out prompts {100 * held['agreement']:.0f}% [{100 * low:.0f}, {100 * high:.0f}] "
                 f"at {100 * held['kv_share']:.0f}% of its KV: target {100 * data['target']:.0f}% "
                 f"{'met' if f['target_met'] else 'NOT met'}")
    if not f["target_tuned"]:
        line += " (no candidate reached it on the tuning prompts: the most agreeing was chosen)"
    lines = [line + f"; the oracle cost {data['timing']['oracle_cost_median']:.1f} prefills per prompt (median)"]
    lines.append("  l_min   tau  agreement  kv_share  too_early  layers_lost   (tuning prompts)")
    lines += [f"  {lm:>5} {tau:>5g} {100 * ag:>9.1f}% {100 * kv:>8.1f}% {100 * e:>9.1f}% {lost:>12.2f}"
              for lm, tau, ag, kv, e, lost in data["search"]["sweep"]]
    for name, r in data.get("rules", {}).items():  # chosen from the same records, the same way
        held = r["held_out"]
        lines.append(f"{name}: threshold {r['threshold']:g}: tuning {100 * r['tuning']['agreement']:.0f}% at "
                     f"{100 * r['tuning']['kv_share']:.0f}% of the KV"
                     + (f"; held out {100 * held['agreement']:.0f}% at {100 * held['kv_share']:.0f}%, target "
                        f"{'met' if r['target_met'] else 'NOT met'}" if held else ""))
    return "\n".join(lines)
