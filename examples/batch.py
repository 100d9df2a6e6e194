"""A batch: prompts of different lengths in one call, each sequence choosing on its own.

ASL decides per sequence when its ranking is stable; the batch is left-padded, and its
result equals running the prompts one by one. Run it:

    python examples/batch.py [--model smollm2-135m]
"""
import argparse

import asl
from _text import FACTS, context, question


def policies(model):
    layers = model.config.num_layers
    return dict(selection=asl.ASL(tau=0.7, l_min=layers // 4, l_obs=layers // 4, select_tokens=160, window=32),
                eviction=asl.SnapKV(budget=160, window=32))


def main(model_name: str = "smollm2-135m", max_new_tokens: int = 6, dtype: str = "auto"):
    model, tokenizer = asl.load(model_name, dtype=dtype)
    prompts = [context(sentences, seed) + question(city)
               for (sentences, seed), city in zip([(20, 1), (60, 2), (35, 3)], FACTS)]
    batch = asl.generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, **policies(model))
    alone = [asl.generate(model, tokenizer, p, max_new_tokens=max_new_tokens, **policies(model)) for p in prompts]
    for (city, number), text, seq in zip(FACTS.items(), batch.text, batch.trace.sequences):
        print(f"{city}: {text!r} (the number is {number}); {seq.prompt_tokens} tokens, "
              f"selected after layer {seq.selection_layer}, {seq.kv_bytes / 2**20:.2f} MiB of KV")
    print("batch equals one by one:", batch.tokens == [a.tokens for a in alone])
    return batch, alone


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="auto", help="auto: bfloat16 where native, else float32")
    args = parser.parse_args()
    main(args.model, dtype=args.dtype)
