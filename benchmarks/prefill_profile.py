"""Where a long full-cache prefill spends its time: ours vs transformers' forward, op by op.

    python benchmarks/prefill_profile.py [--model qwen2.5-0.5b] [--context 8192] [--repeats 2]

Both run in this one process on the same prose prompt (transformers as generate prefills:
use_cache=True, logits_to_keep=1), interleaved, each profiled with the PyTorch profiler;
prints the wall time of each and the ops that take the most self CPU time in either, so
a gap between the two shows up as the op that makes it.
"""
from __future__ import annotations

import time

import torch
from common import prose_ids, setup_threads, speed_dtype, speed_parser
from torch.profiler import ProfilerActivity, profile
from transformers import AutoModelForCausalLM, DynamicCache

import asl
from asl.models.loading import resolve_checkpoint
from asl.prefill import prefill


def main() -> None:
    ap = speed_parser(__doc__, model="qwen2.5-0.5b", context=8192, repeats=2)
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    setup_threads(args.threads)
    folder = resolve_checkpoint(args.model)
    dtype, why = speed_dtype(args.dtype)
    print(f"dtype {dtype} ({why})")
    ours, tok = asl.load(folder, dtype=dtype)
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa").eval()
    ids = prose_ids(tok, args.context)
    valid = torch.ones_like(ids, dtype=torch.bool)
    runs = {
        "ours": lambda x, v: prefill(ours, x, v, 1),
        "transformers": lambda x, v: hf(input_ids=x, past_key_values=DynamicCache(), use_cache=True, logits_to_keep=1),
    }
    with torch.inference_mode():
        for fn in runs.values():  # warm-up
            fn(ids[:, :256], valid[:, :256])
        times = {name: [] for name in runs}
        tables = {}
        for _ in range(args.repeats):
            for name, fn in runs.items():
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    start = time.perf_counter()
                    fn(ids, valid)
                    times[name].append(time.perf_counter() - start)
                tables[name] = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
    for name, t in times.items():
        print(f"{name:13s} {args.context} tokens: {', '.join(f'{x:.2f}' for x in t)} s")
    keys = sorted(set(tables["ours"]) | set(tables["transformers"]),
                  key=lambda k: -max(tables["ours"].get(k, 0), tables["transformers"].get(k, 0)))
    print(f"\n{'op (self CPU s, last repeat)':45s} {'ours':>8s} {'transformers':>13s}")
    for k in keys[: args.top]:
        print(f"{k[:45]:45s} {tables['ours'].get(k, 0):8.2f} {tables['transformers'].get(k, 0):13.2f}")


if __name__ == "__main__":
    main()
