"""python -m asl.bench: long-context tasks (InfiniteBench, RULER and NIAH style) generated
offline in the model's own tokens, every method side by side at one KV budget and selection
size; accuracy, time to first token, time per output token, KV bytes and peak memory.

`python -m asl.bench calibrate --help`: choose ASL's threshold for a model (docs/calibration.md).

Writes to --out: samples.jsonl (one line per sample and method), summary.csv/.json, config.json
and plots/. A rerun with the same --out skips what is done. Shard with
`torchrun --nproc-per-node N -m asl.bench ...`.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import torch

from asl.policies import PrefillInfo
from asl.policies.base import decides_after_prefill
from asl.presets import PAPER_MODELS, PRESETS
from asl.bench.args import (Formatter, add_dtype, check_device, ints, model_config, one_line_errors, parse_tasks,
                            resolve_dtype_flag)

# The default run (about 10 minutes on 2 cores): a hard task where the full cache is near its
# ceiling and the methods differ (kv_retrieval at 2,048 tokens, selection size 25% of the
# prompt), an easy one where ASL selects early, both regimes, enough samples for a paired test.
DEFAULT_MODEL = "qwen2.5-0.5b"
DEFAULT_TASKS = "niah_single_3,niah_multikey_2"
DEFAULT_METHODS = "full,fastkv,asl,asl+snapkv"
DEFAULT_SAMPLES = 10


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m asl.bench", description=__doc__, formatter_class=Formatter)
    ap.add_argument("--model", default=DEFAULT_MODEL, help="bundled name (qwen2.5-0.5b, smollm2-135m, gemma3-270m), HF folder or .gguf")
    ap.add_argument("--tasks", default=DEFAULT_TASKS, help="comma-separated task names (see --list)")
    ap.add_argument("--lengths", default="2048", help="comma-separated prompt lengths in the model's tokens")
    ap.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help="samples per task and length")
    ap.add_argument("--methods", default=DEFAULT_METHODS,
                    help="comma-separated: full; an eviction (snapkv, streaming); a selection alone (asl, fastkv, "
                         "gemfilter, asl-2pass), which keeps the KV of every layer it ran on; or selection+eviction "
                         "(asl+snapkv). module:Class names your own SelectionPolicy or EvictionPolicy subclass, alone "
                         "or composed (mypkg.pol:MySel+snapkv, asl+mypkg.pol:MyEviction). Arguments as "
                         "name(key=value,...); a [list] sweeps: asl(tau=[0.3,0.5])")
    ap.add_argument("--budget", "--budgets", dest="budget", default=None,
                    help="KV tokens per head per layer; comma-separated for several (default 512; 2048 with "
                         "--preset paper)")
    ap.add_argument("--preset", choices=PRESETS, default=None,
                    help="paper: every method as the ASL authors' scripts configure it (docs/algorithms.md "
                         "section 17), layers scaled to the model's depth unless it is one of theirs; kvpress: "
                         "kvpress 0.5.5's defaults for its methods (snapkv window 64 kernel 5, the scorers with no "
                         "window, streaming not rolling; section 19)")
    ap.add_argument("--dry-run", action="store_true",
                    help="resolve every method's parameters on the model, print them, run nothing")
    ap.add_argument("--ratio", "--ratios", dest="ratio", default=None,
                    help="instead of a budget, each eviction keeps int(n * (1 - ratio)) of the n entries each layer "
                         "holds, as kvpress's compression_ratio (comma-separated for several): snapkv runs as "
                         "snapkv(ratio=R); selections keep --select-tokens")
    ap.add_argument("--select-tokens", type=int, default=None, help="tokens kept by selection (default: the budget)")
    ap.add_argument("--calibration", default=None, metavar="FILE",
                    help="ASL's tau, l_min and l_obs from this file (written by `python -m asl.bench calibrate`) "
                         "instead of the bundled calibration or the hand-set values")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench-out", help="results folder (a rerun of the same run resumes it)")
    ap.add_argument("--force", action="store_true",
                    help="discard the results in --out when they come from another configuration or code")
    add_dtype(ap)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads per process (default: cores / processes)")
    ap.add_argument("--compile", action="store_true", help="compile the decode step (pays off on long answers only)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="run each call this many times: the first is scored, TTFT and TPOT are the median of all, "
                         "their spread is recorded (ttft_runs, tpot_runs)")
    ap.add_argument("--share-prefix", action="store_true",
                    help="run a sample's one-shot selections and evictions as one asl.sweep: the layers before each "
                         "selection (all of them, for an eviction alone) run once; answers as alone, TTFT as alone "
                         "would take (estimated), peak memory not recorded")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--reference", default=None, metavar="METHOD",
                    help="mark (*) the cells whose paired test against METHOD (a --methods label, e.g. full) gives "
                         "p < 0.05; default: each row against the ASL method of its regime")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: rebuild the summary, table and plots of every record --out holds, with the "
                         "settings of its config.json (other flags are ignored)")
    ap.add_argument("--list", action="store_true", help="list the tasks and methods, then exit")
    return ap


def parse(argv=None):
    """Checks every argument that needs no model; raises ValueError naming the argument."""
    from asl.bench.methods import parse_methods, with_ratio

    args = parser().parse_args(argv)
    if args.list:
        return args
    args.tasks, args.lengths = parse_tasks(args.tasks, args.lengths)
    args.budget = ints(args.budget or ("2048" if args.preset == "paper" else "512"), "budget")
    if args.samples < 1:
        raise ValueError(f"--samples must be >= 1, got {args.samples}")
    if not 0 <= args.seed < 2**63:
        raise ValueError(f"--seed must be in [0, 2**63), got {args.seed}")
    if args.select_tokens is not None and args.select_tokens < 1:
        raise ValueError(f"--select-tokens must be >= 1, got {args.select_tokens}")
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    check_device(args.device)
    resolve_dtype_flag(args, "python -m asl.bench")
    if args.calibration is not None and not pathlib.Path(args.calibration).is_file():
        raise ValueError(f"--calibration {args.calibration}: no such file (write one with python -m asl.bench calibrate)")
    args.methods = parse_methods(args.methods)
    if args.ratio is not None:
        args.ratio = [_ratio(r) for r in args.ratio.split(",") if r.strip()]
        if not args.ratio:
            raise ValueError("--ratio: give at least one ratio in [0, 1)")
        args.methods = list({s.label: s for s in (with_ratio(spec, r) for spec in args.methods
                                                  for r in args.ratio)}.values())
    labels = [spec.label for spec in args.methods]
    if args.reference is not None and not args.report_only and args.reference not in labels:
        raise ValueError(f"--reference {args.reference!r} is not one of --methods: {', '.join(labels)}")
    return args


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0 <= value < 1:
        raise ValueError(f"--ratio: {text.strip()!r} is not a number in [0, 1) (the share of entries evicted)")
    return value


def resolve(args):
    """Model-dependent checks and every method resolved to its policies, before any generation:
    the calibration file read once, each policy built (and so checked) once.
    Returns (folder, model config, [Method per method and budget it keeps])."""
    from asl.bench.methods import Method, gemfilter_layer, model_defaults

    folder, config = model_config(args.model, args.lengths)
    defaults, why, calibrated_at = model_defaults(args.model, config.num_layers, config, args.calibration, args.preset)
    if any(p.name == "gemfilter" and "layer" not in p.kwargs for spec in args.methods for p in spec.parts):
        layer, reason = gemfilter_layer(config.model_type, config.num_layers)
        print(f"asl.bench: gemfilter at layer {layer}: {reason}", file=sys.stderr)
    if args.preset == "paper":
        print(f"asl.bench: --preset paper: every method as the ASL authors' scripts set it (run_ruler.sh), layers "
              f"{'as they are' if args.model in PAPER_MODELS else f'scaled to {config.num_layers} layers'}",
              file=sys.stderr)
    elif any(p.name in ("asl", "asl-2pass") for spec in args.methods for p in spec.parts):
        print(f"asl.bench: asl's tau, l_min, l_obs: {why}", file=sys.stderr)
        _warn_select_tokens(calibrated_at, args)
    methods, kept = [], set()
    for spec in args.methods:
        for budget in [None] if spec.is_full else args.budget:
            select = None if budget is None else args.select_tokens or budget
            try:
                method = Method.resolve(spec, defaults, budget, select)
            except (ValueError, TypeError) as e:
                raise ValueError(f"--budget {budget} / --select-tokens {select} / --methods {spec.label}: {e}") from None
            for policy in method.policies():
                try:  # what a policy checks against the model when a prefill begins, before any run
                    if hasattr(policy, "per_call"):  # a policy (the oracle is not one)
                        policy.per_call().begin(PrefillInfo(config.num_layers, config.num_heads, config.num_kv_heads,
                                                            config.head_dim, (max(args.lengths),)))
                except ValueError as e:
                    raise ValueError(f"--methods {spec.label}: {e}") from None
                for key in ("layer", "l_min", "l_max"):
                    value = getattr(policy, key, None)
                    if isinstance(value, int) and not 0 <= value < config.num_layers:
                        raise ValueError(f"--methods {spec.label}: {key}={value} is not a layer of {args.model} "
                                         f"(0..{config.num_layers - 1})")
            if (spec.label, method.budget) in kept:
                continue  # one run per budget the method really keeps
            if method.budget != budget and not (method.budget is None and getattr(args, "ratio", None)):
                own = f"its own budget {method.budget}" if method.budget is not None else \
                    "a share of the prompt's entries over all layers" if decides_after_prefill(method.eviction) \
                    and not getattr(method.eviction, "layerwise", False) else \
                    "a share of each layer's tokens"
                print(f"asl.bench: {spec.label} runs at {own}, whatever --budget", file=sys.stderr)
            kept.add((spec.label, method.budget))
            methods.append(method)
    short = [n for n in args.lengths if n <= min(args.budget)]
    if short:
        print(f"python -m asl.bench: warning: --lengths {short} are not above the budget {min(args.budget)}: there "
              "every method keeps every token, like the full cache", file=sys.stderr)
    return folder, config, methods


def _warn_select_tokens(calibrated: int | None, args) -> None:
    run = sorted({args.select_tokens or b for b in args.budget})
    if calibrated is not None and run != [calibrated]:
        print(f"asl.bench: warning: asl's tau was calibrated selecting {calibrated} tokens, this run selects "
              f"{', '.join(map(str, run))}: the rank variance is taken over the selected tokens, so tau may not "
              f"transfer (--select-tokens {calibrated}, or calibrate at this size)", file=sys.stderr)


def _dry_run(args, methods) -> int:
    """--dry-run: what each method would run with, nothing loaded or written."""
    print(f"asl.bench --dry-run: {args.model}, preset {args.preset or 'none'}, tasks {','.join(args.tasks)}, "
          f"lengths {','.join(map(str, args.lengths))}, {args.samples} samples")
    for m in methods:
        print(f"  {m.label} @ {m.budget}: {m.describe()}")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["calibrate"]:
        from asl.bench.calibrate import main as calibrate

        return calibrate(argv[1:])
    return one_line_errors("python -m asl.bench", lambda: _main(argv))


def _main(argv) -> int:
    args = parse(argv)
    if args.list:
        return _list(args.model)
    if args.report_only:
        from asl.bench.run.session import report_folder

        return report_folder(pathlib.Path(args.out), plots=not args.no_plots, reference=args.reference)
    folder, config, methods = resolve(args)
    if args.dry_run:
        return _dry_run(args, methods)
    from asl.bench.run.session import Session

    return Session(args, folder, config, methods).run()


def _list(model: str | None = None) -> int:
    from asl.bench.methods import BUILTIN, DESCRIPTIONS, WRAPPERS, default_params, model_defaults, parse_methods
    from asl.bench.tasks import TASKS

    print("tasks (after; shortest --lengths):")
    for name, task in TASKS.items():
        print(f"  {name:<16} {task.source:<14} >= {task.min_length} tokens")
    layers = _layers_of(model) if model else None
    defaults = model_defaults(model, layers)[0] if layers else None
    print("methods" + (f" (their parameters on {model}, at budget = select_tokens = 512):" if layers else ":"))
    for name in BUILTIN:
        print(f"  {name:<21} {DESCRIPTIONS[name]}")
        if layers:
            (spec,) = parse_methods(f"{name}(snapkv)" if name in WRAPPERS else name)
            fields = default_params(spec, defaults, None if spec.is_full else 512, None if spec.is_full else 512)
            print(f"  {'':<21}   {', '.join(f'{k}={v!r}' for f in fields for k, v in f.items()) or '-'}")
    print("  module:Class     your SelectionPolicy or EvictionPolicy subclass")
    print("compose a selection with an eviction: asl+snapkv, fastkv(layer=8)+streaming(sink=8); evictions in a row "
          "(each cuts what the one before kept; kvpress's ComposedPress): snapkv(ratio=0.5)+knorm(ratio=0.5);"
          " sweep with a list: asl(tau=[0.3,0.5,0.7])")
    return 0


def _layers_of(model: str) -> int | None:
    from asl.calibration import config_of

    try:
        return config_of(model).num_layers
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"(no per-model parameters: --model {model}: {e})")
        return None
