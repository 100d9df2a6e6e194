"""ASL prefill end to end with the custom ops vs with the reference path, same prompt, one run.

    python benchmarks/ops_e2e.py [--model qwen2.5-0.5b] [--context 8192] [--repeats 1]

The reference path swaps asl.ops' window scores, ranks and rank variance for
asl.reference's. ASL uses tau 0.3, which on this model never fires (docs/algorithms.md
section 9): it scores at every layer from l_min - l_obs + 1 on, the worst case for overhead.
"""
from __future__ import annotations

import argparse
import json
import statistics
from unittest import mock

import torch

import asl
from asl import ops, reference
from asl.prefill import prefill
from common import interleaved_medians, prose_ids, setup_threads


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-0.5b")
    ap.add_argument("--context", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    setup_threads(2)
    model, tok = asl.load(args.model)
    layers = model.config.num_layers
    ids = prose_ids(tok, args.context)
    valid = torch.ones_like(ids, dtype=torch.bool)
    policy = asl.ASL(tau=0.3, l_min=layers // 3, l_obs=8, select_tokens=2048)
    shares = {"ops": [], "reference": []}

    def with_ops():
        shares["ops"].append(prefill(model, ids, valid, 1, policy).policy_s)

    def with_reference():
        with mock.patch.object(ops, "window_scores", reference.window_scores), \
                mock.patch.object(ops, "token_ranks", reference.token_ranks), \
                mock.patch.object(ops, "rank_variance", reference.rank_variance):
            shares["reference"].append(prefill(model, ids, valid, 1, policy).policy_s)

    t = interleaved_medians({"ops": with_ops, "reference": with_reference}, args.repeats, warmup=0)
    rows = {k: {"prefill_s": t[k], "scoring_s": statistics.median(shares[k]),
                "scoring_share": statistics.median(shares[k]) / t[k]} for k in t}
    print(f"{args.model}, {ids.shape[1]} tokens, ASL (never selects), ops backend {ops.backend('cpu')}")
    for k, r in rows.items():
        print(f"{k:10} prefill {r['prefill_s']:8.2f} s   scoring {r['scoring_s']:6.2f} s ({r['scoring_share']:.1%})")
    print(f"prefill with ops / with reference: {t['ops'] / t['reference']:.3f}; scoring: "
          f"{rows['reference']['scoring_s'] / rows['ops']['scoring_s']:.1f}x faster with the ops")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
