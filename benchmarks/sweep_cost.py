"""What a sweep that shares its prefix costs, against one full prefill and against the same
points run one by one (issue 36: a 6-point layer sweep at most 2x one full prefill).

    python benchmarks/sweep_cost.py [--model qwen2.5-0.5b] [--context 4096] [--repeats 3] [--out DIR]

One prose prompt; the points are FastKV at six layers spread over the model's depth (selection
alone, select_tokens 1024), ASL at six thresholds, and six evictions on the full prefill (budget
select_tokens: kvpress's presses side by side). Each repeat times, interleaved: one full
prefill, the sweep's prefill (its trunk plus every point's own layers), and the six points'
separate prefills; it checks that every point of the sweep gives its separate run's answer.
Prints the medians as ratios to the full prefill and writes sweep_cost.json. Also each point's
TTFT as the sweep estimates it for a run alone (SweepOutput.alone_prefill_s) against its
separate run's measured TTFT (the ratio's median over points and repeats).
"""
from __future__ import annotations

import json
import pathlib
import statistics
import time

import torch
from common import prose_ids, setup_threads, speed_dtype, speed_parser

import asl
from asl.calibration import scaled_layer
from asl.models.loading import resolve_checkpoint


def main() -> None:
    ap = speed_parser(__doc__, model="qwen2.5-0.5b", context=4096, repeats=3)
    ap.add_argument("--select-tokens", type=int, default=1024)
    ap.add_argument("--out", default=None, help="folder for sweep_cost.json")
    args = ap.parse_args()
    setup_threads(args.threads)
    dtype, why = speed_dtype(args.dtype)
    model, tok = asl.load(resolve_checkpoint(args.model), dtype=dtype)
    depth = model.config.num_layers
    text = tok.decode(prose_ids(tok, args.context)[0])
    budget = args.select_tokens
    sweeps = {  # name: [(selection, eviction)]
        "fastkv layers": [(asl.FastKV(layer=scaled_layer(l, depth), select_tokens=budget, window=32, pooling="avg"),
                           None) for l in (6, 9, 12, 15, 18, 21)],
        "asl taus": [(asl.ASL(tau=t, l_min=scaled_layer(10, depth), select_tokens=budget), None)
                     for t in (0.2, 0.4, 0.6, 0.8, 1.0, 1.2)],
        "evictions": [(None, e) for e in (asl.SnapKV(budget=budget), asl.TOVA(budget=budget),
                                          asl.KNorm(budget=budget), asl.ExpectedAttention(budget=budget),
                                          asl.KeyDiff(budget=budget), asl.StreamingLLM(budget=budget))],
    }
    full = lambda: asl.generate(model, tok, text, max_new_tokens=1).trace.prefill_s  # noqa: E731
    asl.generate(model, tok, text[:2000], max_new_tokens=1)  # warm-up
    rows = {}
    for name, points in sweeps.items():
        times = {"full": [], "sweep": [], "separate": [], "estimate_over_alone": []}
        for _ in range(args.repeats):
            times["full"].append(full())
            begun = time.perf_counter()
            shared = asl.sweep(model, tok, text, [p[0] for p in points], eviction=[p[1] for p in points],
                               max_new_tokens=8)
            times["sweep"].append(shared.prefill_s)
            sweep_wall = time.perf_counter() - begun
            alone = [asl.generate(model, tok, text, max_new_tokens=8, selection=s, eviction=e) for s, e in points]
            times["separate"].append(sum(o.trace.prefill_s for o in alone))
            times["estimate_over_alone"] += [shared.alone_prefill_s(i) / o.trace.prefill_s for i, o in enumerate(alone)]
            same = all(a.tokens == b.tokens and a.trace.alive_tokens == b.trace.alive_tokens
                       and a.trace.kv_tokens_per_head == b.trace.kv_tokens_per_head
                       for a, b in zip(shared.outputs, alone))
            if not same:
                raise SystemExit(f"{name}: a sweep point differs from its separate run")
        med = {k: statistics.median(v) for k, v in times.items()}
        rows[name] = {"points": len(points), "layers": [o.trace.selection_layer for o in shared.outputs],
                      "full_s": med["full"], "sweep_s": med["sweep"], "separate_s": med["separate"],
                      "sweep_over_full": med["sweep"] / med["full"], "separate_over_full": med["separate"] / med["full"],
                      "identical_answers": True, "sweep_wall_s_last": sweep_wall, "repeats": args.repeats,
                      "alone_ttft_estimate_over_measured": med["estimate_over_alone"]}
        r = rows[name]
        print(f"{name}: {r['points']} points at layers {r['layers']}: sweep {r['sweep_over_full']:.2f}x one full "
              f"prefill, separately {r['separate_over_full']:.2f}x (medians of {args.repeats}; "
              f"full {r['full_s']:.2f} s); every point's answer equals its separate run's; the sweep's TTFT "
              f"estimate of a point run alone / its measured TTFT: {r['alone_ttft_estimate_over_measured']:.2f}")
    meta = {"model": args.model, "context": args.context, "dtype": str(dtype), "dtype_reason": why,
            "threads": args.threads, "select_tokens": args.select_tokens, "torch": torch.__version__}
    if args.out:
        out = pathlib.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "sweep_cost.json").write_text(json.dumps({**meta, "sweeps": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
