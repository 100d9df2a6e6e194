"""python -m asl.bench: long-context tasks (InfiniteBench, RULER and NIAH style) generated
offline in the model's own tokens, every method side by side at one KV budget and selection
size; accuracy, time to first token, time per output token, KV bytes and peak memory.

Writes to --out: samples.jsonl (one line per sample and method), summary.csv/.json, config.json
and plots/. A rerun with the same --out skips what is done. Shard with
`torchrun --nproc-per-node N -m asl.bench ...`.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch

DEFAULT_TASKS = "passkey,niah_single_1,kv_retrieval,niah_multikey_3"
DEFAULT_METHODS = "full,snapkv,fastkv,gemfilter,asl"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m asl.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="bundled name (smollm2-135m, qwen2.5-0.5b), HF folder or .gguf")
    ap.add_argument("--tasks", default=DEFAULT_TASKS, help="comma-separated task names (see --list)")
    ap.add_argument("--lengths", default="2048", help="comma-separated prompt lengths in the model's tokens")
    ap.add_argument("--samples", type=int, default=3, help="samples per task and length")
    ap.add_argument("--methods", default=DEFAULT_METHODS,
                    help="comma-separated: full, snapkv, fastkv, gemfilter, asl, asl-2pass, streaming, or "
                         "module:Class; arguments as name(key=value,...)")
    ap.add_argument("--budget", default="512", help="KV tokens per head per layer; comma-separated for several")
    ap.add_argument("--select-tokens", type=int, default=None, help="tokens kept by selection (default: the budget)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench-out", help="results folder (a rerun resumes it)")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads per process (default: cores / processes)")
    ap.add_argument("--compile", action="store_true", help="compile the decode step (pays off on long answers only)")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: rebuild the summary, table and plots from what --out holds")
    ap.add_argument("--list", action="store_true", help="list the tasks and methods, then exit")
    return ap


def _ints(text: str, name: str, minimum: int = 1) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--{name} must be comma-separated integers, got {text!r}") from None
    if not values or any(v < minimum for v in values):
        raise ValueError(f"--{name} must be integers >= {minimum}, got {text!r}")
    return sorted(set(values))


def parse(argv=None):
    """Checks every argument that needs no model; raises ValueError naming the argument."""
    from asl.bench.methods import parse_methods
    from asl.bench.tasks import TASKS

    args = parser().parse_args(argv)
    if args.list:
        return args
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"--tasks: unknown task(s) {', '.join(unknown) or '(none given)'}; allowed: {', '.join(TASKS)}")
    args.tasks = list(dict.fromkeys(tasks))
    args.lengths = _ints(args.lengths, "lengths")
    short = [f"{t} needs >= {TASKS[t].min_length}" for t in args.tasks if TASKS[t].min_length > args.lengths[0]]
    if short:
        raise ValueError(f"--lengths {args.lengths[0]} is too short: {'; '.join(short)}")
    args.budget = _ints(args.budget, "budget")
    if args.samples < 1:
        raise ValueError(f"--samples must be >= 1, got {args.samples}")
    if args.select_tokens is not None and args.select_tokens < 1:
        raise ValueError(f"--select-tokens must be >= 1, got {args.select_tokens}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    args.methods = parse_methods(args.methods)
    return args


def resolve(args):
    """Model-dependent checks and each method's parameters, before any generation.
    Returns (folder, model config, {label: params})."""
    from asl.bench.methods import build, default_params
    from asl.models.config import ModelConfig
    from asl.models.loading import resolve_checkpoint

    try:
        folder = resolve_checkpoint(args.model)
    except ValueError as e:
        raise ValueError(f"--model: {e}") from None
    config = ModelConfig.from_hf(json.loads((folder / "config.json").read_text()))
    limit = config.max_position_embeddings - 256  # room for the answer
    too_long = [n for n in args.lengths if n > limit]
    if too_long:
        raise ValueError(f"--lengths: {too_long} exceed what {args.model} can take ({config.max_position_embeddings} "
                         f"positions, so at most {limit} prompt tokens)")
    params = {}
    for spec in args.methods:
        for budget in args.budget:
            select = args.select_tokens or budget
            p = default_params(spec, args.model, config.num_layers, budget, select)
            try:
                build(spec, p, budget, select)
            except (ValueError, TypeError) as e:
                raise ValueError(f"--budget {budget} / --select-tokens {select} / --methods {spec.label}: {e}") from None
            for key in ("layer", "l_min", "l_max"):
                if isinstance(p.get(key), int) and not 0 <= p[key] < config.num_layers:
                    raise ValueError(f"--methods {spec.label}: {key}={p[key]} is not a layer of {args.model} "
                                     f"(0..{config.num_layers - 1})")
        params[spec.label] = default_params(spec, args.model, config.num_layers, args.budget[0],
                                            args.select_tokens or args.budget[0])
    return folder, config, params


def run_config(args, params, config) -> dict:
    return {
        "run": {"model": args.model, "dtype": args.dtype, "seed": args.seed},
        "tasks": args.tasks, "lengths": args.lengths, "samples": args.samples, "budgets": args.budget,
        "select_tokens": args.select_tokens, "methods": params, "device": args.device,
        "layers": config.num_layers, "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def main(argv=None) -> int:
    try:
        args = parse(argv)
        if args.list:
            return _list()
        folder, config, params = resolve(args)
    except ValueError as e:
        print(f"python -m asl.bench: error: {e}", file=sys.stderr)
        return 2
    from asl.bench.session import Session

    return Session(args, folder, config, params).run()


def _list() -> int:
    from asl.bench.methods import BUILTIN
    from asl.bench.tasks import TASKS

    print("tasks:  ", ", ".join(TASKS))
    print("methods:", ", ".join(BUILTIN), "or module:Class(key=value,...)")
    return 0
