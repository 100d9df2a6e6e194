"""Compress a context once, ask it several questions.

asl.compress runs the context's prefill once under the policies; each question then runs
only its own tokens over a copy of the compressed cache. Query-agnostic (the policies see
the context alone) or query-aware (`question_hint`: the question lies in the window while
the policies choose, then its own entries are dropped). Run it:

    python examples/compress_once.py [--model smollm2-135m]
"""
import argparse
import time

import asl
from _text import FACTS, context, question


def main(model_name: str = "smollm2-135m", max_new_tokens: int = 6, dtype: str = "auto"):
    model, tokenizer = asl.load(model_name, dtype=dtype)
    text = context(60)
    questions = [question(city) for city in FACTS]

    start = time.perf_counter()
    compressed = asl.compress(model, tokenizer, text, eviction=asl.SnapKV(budget=256, window=32))
    compress_s = time.perf_counter() - start
    answers = asl.generate(model, tokenizer, questions, cache=compressed, max_new_tokens=max_new_tokens)
    print(f"context: {compressed.context_tokens} tokens compressed once in {compress_s:.2f} s "
          f"to {compressed.kv_bytes / 2**20:.2f} MiB of KV")
    for (city, number), answer in zip(FACTS.items(), answers.text):
        print(f"  {city}: {answer!r} (the number is {number})")

    aware = [asl.generate(model, tokenizer, q, max_new_tokens=max_new_tokens,
                          cache=asl.compress(model, tokenizer, text, eviction=asl.SnapKV(budget=256, window=32),
                                             question_hint=q)) for q in questions]
    print("query-aware (one compression per question):", [a.text for a in aware])

    full = asl.compress(model, tokenizer, text)  # the full cache: the same as a fresh prefill
    reused = asl.generate(model, tokenizer, questions, cache=full, max_new_tokens=max_new_tokens)
    print("full cache, reused:", reused.text)
    return compressed, answers, aware, reused


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="auto", help="auto: bfloat16 where native, else float32")
    args = parser.parse_args()
    main(args.model, dtype=args.dtype)
