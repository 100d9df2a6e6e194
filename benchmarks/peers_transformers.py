"""transformers worker for benchmarks/peers.py: transformers' own `generate`, greedy, full
cache, sdpa, in a process of its own, so that no two libraries (and no two models) share a
process during the timed runs, just as kvpress has its own (benchmarks/peers_kvpress.py).

    python benchmarks/peers_transformers.py --model-dir DIR --samples samples.json --out out.json

samples.json: [{"id", "prompt" (chat template applied), "max_new_tokens", "stop": [...]}].
Output JSON: {"versions", "results": one record per (sample, repeat)} with id, repeat,
prediction, ttft_s (to the first generated token), tpot_s (median gap between steps),
peak_mem_bytes, kv_bytes (the full cache), new_tokens.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import transformers
from common import StepClock, setup_threads
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList

from asl.bench.run.memory import PeakMemory
from asl.answers import cut_at_stop


def transformers_run(hf, tokenizer, sample: dict, max_new_tokens: int | None = None) -> dict:
    """transformers' generate, greedy, full cache; TTFT to the first step, TPOT between steps."""
    ids = torch.tensor([tokenizer(sample["prompt"])["input_ids"]], device=hf.device)
    clock = StepClock()
    with PeakMemory(hf.device) as mem:
        start = time.perf_counter()
        out = hf.generate(ids, max_new_tokens=max_new_tokens or sample["max_new_tokens"], do_sample=False,
                          pad_token_id=tokenizer.eos_token_id, logits_processor=LogitsProcessorList([clock]))
    new = out[0, ids.shape[1]:].tolist()
    text = cut_at_stop(tokenizer.decode(new, skip_special_tokens=True), list(sample["stop"]))
    steps = [b - a for a, b in zip(clock.times, clock.times[1:])]
    c = hf.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kv_bytes = 2 * c.num_hidden_layers * c.num_key_value_heads * ids.shape[1] * head_dim * hf.dtype.itemsize
    return {"id": sample["id"], "prediction": text, "ttft_s": clock.times[0] - start,
            "tpot_s": statistics.median(steps) if steps else None, "peak_mem_bytes": mem.bytes,
            "kv_bytes": kv_bytes, "new_tokens": len(new)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", required=True, help="HF checkpoint folder")
    ap.add_argument("--samples", required=True, help='JSON list of {"id","prompt","max_new_tokens","stop"}')
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    setup_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    hf = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=getattr(torch, args.dtype),
                                              attn_implementation="sdpa").to(args.device).eval()
    with open(args.samples) as f:
        samples = json.load(f)
    results = []
    with torch.inference_mode():
        if samples:  # warm-up, untimed
            transformers_run(hf, tokenizer, samples[0], max_new_tokens=8)
        for s in samples:
            for rep in range(args.repeats):
                results.append({**transformers_run(hf, tokenizer, s), "repeat": rep})
            print(f"transformers {s['id']}: ttft {results[-1]['ttft_s']:.3f}s", flush=True)
    with open(args.out, "w") as f:
        json.dump({"versions": {"torch": torch.__version__, "transformers": transformers.__version__},
                   "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
