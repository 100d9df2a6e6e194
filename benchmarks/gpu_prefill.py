"""Full-cache vs token-selection prefill at long context on a GPU, on a model's architecture.

    python benchmarks/gpu_prefill.py benchmarks/configs/qwen2.5-0.5b.json [--tokens 32768]

The weights are random (the real ones cannot travel to the GPU machine), so ASL's layer is
forced with `l_max`: the compute is exactly that of a real selection at that layer.
bf16, median of 3 after a warm-up, CUDA-synchronised.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import asl
from asl import ops
from asl.models.config import ModelConfig
from asl.models.decoder import Decoder
from asl.prefill import prefill


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--select-tokens", type=int, default=2048)
    args = ap.parse_args()
    c = ModelConfig.from_hf(json.load(open(args.config)))
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Decoder(c).to(torch.bfloat16).eval()
    ids = torch.randint(0, c.vocab_size, (1, args.tokens), device="cuda")
    valid = torch.ones_like(ids, dtype=torch.bool)
    k, layer = args.select_tokens, c.num_layers // 2
    methods = {
        "full": (None, None),
        "snapkv": (None, asl.SnapKV(k)),
        f"fastkv(layer={layer})+snapkv": (asl.FastKV(layer=layer, select_tokens=k), asl.SnapKV(k)),
        f"asl(forced at {layer})+snapkv": (asl.ASL(tau=0.0, l_min=c.num_layers // 3, l_obs=8, select_tokens=k,
                                                   l_max=layer), asl.SnapKV(k)),
    }
    rows = {}
    for name, (sel, ev) in methods.items():
        times, shares = [], []
        for _ in range(4):
            torch.cuda.synchronize()
            start = time.perf_counter()
            out = prefill(model, ids, valid, 1, sel, ev)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
            shares.append(out.policy_s)
        rows[name] = {"prefill_s": statistics.median(times[1:]), "policy_s": statistics.median(shares[1:]),
                      "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
        torch.cuda.reset_peak_memory_stats()
    full = rows["full"]["prefill_s"]
    print(f"{torch.cuda.get_device_name()}, {args.config}, {args.tokens} tokens, bf16, ops backend {ops.backend()}")
    for name, r in rows.items():
        print(f"{name:34} {r['prefill_s'] * 1e3:9.1f} ms  x{r['prefill_s'] / full:5.2f} of full  "
              f"policy {r['policy_s'] / r['prefill_s']:6.1%}  peak {r['peak_gib']:.1f} GiB")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
