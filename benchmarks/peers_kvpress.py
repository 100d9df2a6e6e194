"""kvpress worker for benchmarks/peers.py: greedy generation with NVIDIA's kvpress on a
transformers model, with separate prefill (TTFT) and per-token decode (TPOT) timings.

Runs with .venv-kvpress/bin/python (made by benchmarks/peers_env.sh), never with the
project's .venv: kvpress pins transformers < 5.3 and patches transformers' attention
functions on import. This file does not import `asl`.

    .venv-kvpress/bin/python benchmarks/peers_kvpress.py --model-dir ~/.cache/asl/smollm2-135m-*/ \\
        --samples samples.json --press snapkv --budget 128 --out out.json

samples.json: [{"id", "prompt" (full text, chat template applied), "max_new_tokens", "stop": [...]}].

How a press is applied (kvpress's documented way, as in its own KVPressTextGenerationPipeline):
`with press(model): model(prompt ids, past_key_values=DynamicCache())` compresses every
layer's cache in a forward hook at the end of the prefill; then a manual greedy loop decodes
on the compressed cache with explicit position ids (prompt_tokens + step), outside the press.
The compression ratio is 1 - budget / prompt_tokens, nudged so that kvpress's own count,
int(prompt_tokens * (1 - ratio)), is exactly the budget: the cache keeps `budget` entries per
KV head per layer. SnapKV's observation window is inside that budget (its last `window`
positions get the highest score and are always among the kept ones), and the whole prompt,
question and chat suffix included, is subject to compression.

Output JSON: {"config", "versions", "results": one record per (sample, repeat)} with id,
repeat, prediction, prompt_tokens, new_tokens, ttft_s (prefill forward + first token),
tpot_s (median decode step; tpot_mean_s the mean), decode_s, kv_tokens (cache length per
layer after the prefill), peak_mem_bytes, compression_ratio.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import glob
import importlib.metadata as md
import json
import os
import statistics
import sys
import time

import torch

LEAD = " \t\r\n:.,;-*`\"'"  # what an answer may start with before its first word
PRESSES = ("none", "snapkv", "streaming")


# ---------------------------------------------------------------------------- stop strings
def stop_index(text: str, stop) -> int | None:
    """Where the earliest stop string starts, looking only after the leading whitespace and
    punctuation (so a stop of "\\n" lets an answer begin on a new line)."""
    start = len(text) - len(text.lstrip(LEAD))
    hits = [i for i in (text.find(s, start) for s in stop or ()) if i >= 0]
    return min(hits) if hits else None


def cut_at_stop(text: str, stop) -> str:
    i = stop_index(text, stop)
    return text if i is None else text[:i]


# ---------------------------------------------------------------------------- peak memory
def _load_memory_module():
    """asl/bench/run/memory.py by path: it needs only torch, and asl itself is not installed here."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "asl", "bench", "run", "memory.py")
    spec = importlib.util.spec_from_file_location("asl_bench_memory", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PeakMemory = _load_memory_module().PeakMemory


# ---------------------------------------------------------------------------- presses
def compression_ratio(prompt_tokens: int, budget: int) -> float:
    """1 - budget / prompt_tokens in [0, 1), adjusted down by float ulps until kvpress's
    int(k_len * (1 - ratio)) keeps exactly `budget` entries."""
    if budget >= prompt_tokens:
        return 0.0
    ratio = 1.0 - budget / prompt_tokens
    while int(prompt_tokens * (1 - ratio)) < budget and ratio > 0:
        ratio = float(torch.nextafter(torch.tensor(ratio, dtype=torch.float64),
                                      torch.tensor(0.0, dtype=torch.float64)))
    return max(0.0, min(ratio, 1.0 - 1e-12))


def make_press(name: str, ratio: float, window: int):
    if name == "none":
        return None
    from kvpress import SnapKVPress, StreamingLLMPress

    if name == "snapkv":
        return SnapKVPress(compression_ratio=ratio, window_size=window)
    if name == "streaming":
        return StreamingLLMPress(compression_ratio=ratio)
    raise ValueError(name)


# ---------------------------------------------------------------------------- generation
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def generate(model, tokenizer, sample: dict, press_name: str, budget: int, window: int, device,
             eos: set[int], max_new_tokens: int | None = None) -> dict:
    from transformers import DynamicCache

    ids = tokenizer(sample["prompt"])["input_ids"]
    n = len(ids)
    stop = list(sample.get("stop") or [])
    limit = sample["max_new_tokens"] if max_new_tokens is None else max_new_tokens
    ratio = compression_ratio(n, budget) if press_name != "none" else 0.0
    press = make_press(press_name, ratio, window)
    if press_name == "snapkv" and ratio > 0 and n <= window:
        raise ValueError(f"SnapKV needs more prompt tokens ({n}) than its window ({window})")
    input_ids = torch.tensor([ids], device=device)
    gc.collect()
    generated: list[int] = []
    steps: list[float] = []
    with PeakMemory(device) as mem:
        cache = DynamicCache()
        sync(device)
        t0 = time.perf_counter()
        with press(model) if press is not None else contextlib.nullcontext():
            out = model(input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        token = int(out.logits[0, -1].argmax())
        ttft = time.perf_counter() - t0
        kv_tokens = [int(layer.keys.shape[-2]) for layer in cache.layers]
        generated.append(token)
        del out
        position = n
        while len(generated) < limit and token not in eos:
            if stop and stop_index(tokenizer.decode(generated, skip_special_tokens=True), stop) is not None:
                break
            step_ids = torch.tensor([[token]], device=device)
            pos = torch.tensor([[position]], device=device)
            sync(device)
            t = time.perf_counter()
            out = model(input_ids=step_ids, past_key_values=cache, position_ids=pos, use_cache=True)
            token = int(out.logits[0, -1].argmax())
            steps.append(time.perf_counter() - t)
            del out
            generated.append(token)
            position += 1
        del cache
    text_ids = [t for t in generated if t not in eos]
    prediction = cut_at_stop(tokenizer.decode(text_ids, skip_special_tokens=True), stop)
    return {
        "id": sample.get("id"),
        "press": press_name,
        "prediction": prediction,
        "prompt_tokens": n,
        "new_tokens": len(generated),
        "ttft_s": ttft,
        "tpot_s": statistics.median(steps) if steps else None,
        "tpot_mean_s": statistics.mean(steps) if steps else None,
        "decode_s": sum(steps),
        "kv_tokens": kv_tokens,
        "peak_mem_bytes": mem.bytes,
        "compression_ratio": ratio,
        "budget": budget,
        "window": window if press_name == "snapkv" else None,
    }


# ---------------------------------------------------------------------------- main
def versions() -> dict:
    out = {}
    for name in ("kvpress", "transformers", "torch"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def resolve_model_dir(path: str) -> str:
    hits = sorted(glob.glob(os.path.expanduser(path)))
    hits = [h for h in hits if os.path.isfile(os.path.join(h, "config.json"))]
    if not hits:
        sys.exit(f"no HF checkpoint folder (with config.json) matches {path}")
    return hits[0]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default="~/.cache/asl/smollm2-135m-*",
                    help="HF checkpoint folder (config.json, model.safetensors, tokenizer); a glob is allowed")
    ap.add_argument("--samples", required=True, help='JSON list of {"id","prompt","max_new_tokens","stop"}')
    ap.add_argument("--press", default="snapkv", choices=PRESSES)
    ap.add_argument("--budget", type=int, default=512, help="KV entries per head per layer to keep, window included")
    ap.add_argument("--window", type=int, default=32, help="SnapKV observation window (inside the budget)")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per sample")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.budget < 1 or args.window < 1 or args.repeats < 1:
        sys.exit("--budget, --window and --repeats must be >= 1")

    torch.set_num_threads(args.threads)
    import kvpress  # noqa: F401  (patches transformers' attention functions, as any kvpress user gets)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    folder = resolve_model_dir(args.model_dir)
    dtype = getattr(torch, args.dtype)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa").to(device).eval()
    eos = set()
    for e in (model.generation_config.eos_token_id, model.config.eos_token_id, tokenizer.eos_token_id):
        eos.update(e if isinstance(e, (list, tuple)) else [e] if e is not None else [])
    with open(args.samples) as f:
        samples = json.load(f)
    if args.press == "snapkv" and args.budget < args.window:
        print(f"warning: budget {args.budget} < window {args.window}: kvpress keeps an arbitrary "
              f"{args.budget} of the window's positions", file=sys.stderr)

    results = []
    with torch.inference_mode():
        if samples and not args.no_warmup:
            generate(model, tokenizer, samples[0], args.press, args.budget, args.window, device, eos,
                     max_new_tokens=min(8, samples[0]["max_new_tokens"]))
        for s in samples:
            for rep in range(args.repeats):
                r = generate(model, tokenizer, s, args.press, args.budget, args.window, device, eos)
                r["repeat"] = rep
                results.append(r)
            print(f"kvpress {args.press} {s.get('id')}: {r['prompt_tokens']} tokens -> kv {max(r['kv_tokens'])}, "
                  f"ttft {r['ttft_s']:.3f}s, {r['new_tokens']} new", file=sys.stderr, flush=True)

    config = {"model_dir": folder, "press": args.press, "budget": args.budget, "window": args.window,
              "repeats": args.repeats, "threads": args.threads, "dtype": args.dtype, "device": str(device),
              "attn_implementation": "sdpa",
              "window_in_budget": True,
              "compressed_span": "whole prompt (question and chat suffix included)"}
    with open(args.out, "w") as f:
        json.dump({"config": config, "versions": versions(), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
