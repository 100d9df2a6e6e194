"""An eviction policy of your own: keep the keys with the smallest L2 norm (K-norm).

Devoto et al., "A Simple and Effective L2 Norm-Based Strategy for KV Cache Compression"
(arXiv 2406.11430): keys with a low norm tend to draw high attention. Per layer and KV
head, keep the `budget - window` lowest-norm prefix keys plus the last `window` tokens.

    python examples/custom_eviction.py [--model smollm2-135m]
"""
import argparse
from dataclasses import dataclass

import asl
from _text import FACTS, context, question


@dataclass
class KeyNorm(asl.ScorerEviction):  # the base keeps the best `budget - window` plus the window
    budget: int = 128  # entries per KV head per layer, window included
    window: int = 16

    def score(self, view):  # [B, G, prefix]: higher is kept, so the negated key norms
        return -view.keys[:, :, : view.width - self.window].float().norm(dim=-1)


def main(model_name: str = "smollm2-135m", max_new_tokens: int = 8, dtype: str = "auto"):
    model, tokenizer = asl.load(model_name, dtype=dtype)
    prompt = context() + question("Quito")
    out = asl.generate(model, tokenizer, prompt, max_new_tokens=max_new_tokens, eviction=KeyNorm(budget=128))
    full = asl.generate(model, tokenizer, prompt, max_new_tokens=max_new_tokens)
    print(f"K-norm answer: {out.text!r}  full cache: {full.text!r} (the number is {FACTS['Quito']})")
    print(f"KV entries per layer: {max(out.trace.kv_tokens)} of {out.trace.sequences[0].prompt_tokens}; "
          f"KV bytes {out.trace.kv_bytes / 2**20:.2f} MiB vs {full.trace.kv_bytes / 2**20:.2f} MiB")
    return out, full


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="auto", help="auto: bfloat16 where native, else float32")
    args = parser.parse_args()
    main(args.model, dtype=args.dtype)
