"""Peak memory of one long full-cache prefill: ours vs transformers, each in a fresh process.

    python benchmarks/prefill_memory.py [--model qwen2.5-0.5b] [--tokens 16384] [--dtype auto]

Peak = resident-set high-water mark above the process's level just before the prefill
(weights loaded, prompt built), with glibc's mmap threshold fixed so freed tensors return to
the OS (asl.bench.run.memory). transformers runs its forward with use_cache=True twice: as
generate's prefill does (logits_to_keep=1) and as a plain forward (logits for every token).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch

IMPLS = ("asl", "transformers_generate_prefill", "transformers_forward")


def child(impl: str, model_name: str, tokens: int, dtype: str) -> dict:
    from common import prose_ids, setup_threads

    import asl
    from asl.bench.run.memory import PeakMemory, exact_cpu_peaks
    from asl.models.loading import resolve_checkpoint
    from asl.prefill import prefill

    setup_threads(2)
    exact_cpu_peaks()
    folder = resolve_checkpoint(model_name)
    dt = asl.resolve_dtype(dtype).dtype
    if impl == "asl":
        model, tok = asl.load(folder, dtype=dt)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dt, attn_implementation="sdpa").eval()
        tok = AutoTokenizer.from_pretrained(folder)
    ids = prose_ids(tok, tokens)
    with torch.inference_mode(), PeakMemory("cpu") as mem:
        if impl == "asl":
            prefill(model, ids, torch.ones_like(ids, dtype=torch.bool), 1)
        elif impl == "transformers_generate_prefill":
            model(ids, use_cache=True, logits_to_keep=1)
        else:
            model(ids, use_cache=True)
    return {"impl": impl, "peak_mib": mem.bytes / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-0.5b")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--dtype", default="auto", help="auto (bfloat16 where native, else float32), float32, bfloat16")
    ap.add_argument("--child", choices=IMPLS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.model, args.tokens, args.dtype)))
        return
    results = {}
    for impl in IMPLS:
        out = subprocess.run([sys.executable, __file__, "--child", impl, "--model", args.model, "--tokens",
                              str(args.tokens), "--dtype", args.dtype], capture_output=True, text=True, check=True)
        results[impl] = json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]
    base = results["transformers_generate_prefill"]
    print(f"{args.model}, {args.tokens} tokens, {args.dtype}: peak MiB above the loaded model")
    for impl, mib in results.items():
        print(f"  {impl:<32}{mib:9.0f}  x {mib / base:.2f} of transformers' generate prefill")
    print(json.dumps({"model": args.model, "tokens": args.tokens, "dtype": args.dtype, "peak_mib": results}))


if __name__ == "__main__":
    main()
