"""Prefill time of the selection methods against the full cache, same prompt, one run.

    python benchmarks/policies_speed.py [--model smollm2-135m] [--context 4096] [--threads 2]

Reports FastKV (selecting at the model's middle layer, keeping --select-tokens) and ASL
prefill time as a ratio of the full-cache prefill, and ASL's scoring overhead: the time
spent in the policies (window scores, ranks, rank variance, choosing) as a share of its
prefill time.
"""
from __future__ import annotations

import json
import statistics

import torch
from common import interleaved_medians, prose_ids, setup_threads, speed_parser

import asl
from asl.bench.report import rows as tabulate
from asl.prefill import prefill


def main() -> None:
    ap = speed_parser(__doc__)
    ap.add_argument("--select-tokens", type=int, default=1024)
    args = ap.parse_args()
    setup_threads(args.threads)
    model, tok = asl.load(args.model)
    layers = model.config.num_layers
    ids = prose_ids(tok, args.context)
    valid = torch.ones_like(ids, dtype=torch.bool)
    k = args.select_tokens
    methods = {
        "full": None,
        f"fastkv(layer={layers // 2})": asl.FastKV(layer=layers // 2, select_tokens=k),
        "asl(tau=0.3, never selects here)": asl.ASL(tau=0.3, l_min=layers // 3, l_obs=8, select_tokens=k),
        f"asl(l_max={layers // 2})": asl.ASL(tau=0.0, l_min=layers // 3, l_obs=8, select_tokens=k, l_max=layers // 2),
    }
    shares = {name: [] for name in methods}

    def runner(name, selection):
        return lambda: shares[name].append(prefill(model, ids, valid, 1, selection).policy_s)

    times = interleaved_medians({name: runner(name, sel) for name, sel in methods.items()}, args.repeats)
    rows = {name: {"prefill_s": times[name], "policy_s": statistics.median(shares[name])} for name in methods}
    full = rows["full"]["prefill_s"]
    print(f"{args.model}, {ids.shape[1]} tokens, {args.threads} threads, select_tokens={k}, median of {args.repeats}")
    for r in rows.values():
        r["ratio_to_full"] = r["prefill_s"] / full
        r["scoring_share"] = r["policy_s"] / r["prefill_s"]
    print(tabulate.text(["method", "prefill s", "vs full", "scoring share"],
                        [[name, f"{r['prefill_s']:.2f}", f"{r['ratio_to_full']:.2f}", f"{r['scoring_share']:.1%}"]
                         for name, r in rows.items()]))
    print(json.dumps({"model": args.model, "context": ids.shape[1], "rows": rows}))


if __name__ == "__main__":
    main()
