"""python -m asl.bench: until the long-context benchmark lands, a short demo on the bundled
model: load it, answer a few prompts with the full cache, print the trace."""
from __future__ import annotations

import argparse

import torch

import asl

PROMPTS = [
    "What is the capital of France? Answer in one word.",
    "Write one sentence about the sea.",
    "List three prime numbers.",
]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m asl.bench", description=__doc__)
    ap.add_argument("--model", default="smollm2-135m", help="bundled name, HF folder or .gguf file")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="compile the decode step")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tok = asl.load(args.model)
    c = model.config
    print(f"{args.model}: {c.model_type}, {c.num_layers} layers, {c.num_heads} heads / {c.num_kv_heads} KV heads")
    out = asl.generate(model, tok, PROMPTS, chat=True, max_new_tokens=args.max_new_tokens, compile=args.compile)
    for prompt, text, seq in zip(PROMPTS, out.text, out.trace.sequences):
        print(f"\n> {prompt}\n{text.strip()}\n  [{seq.prompt_tokens} prompt tokens, {seq.new_tokens} new, "
              f"KV {seq.kv_bytes / 2**20:.1f} MiB]")
    t = out.trace
    print(f"\nbatch of {len(PROMPTS)}: prefill {t.prefill_s:.2f} s, decode {t.decode_s_per_token * 1e3:.1f} ms/token")


if __name__ == "__main__":
    main()
