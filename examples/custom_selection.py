"""A selection policy of your own: one-shot selection by the last query, at a fixed depth.

GemFilter-like scoring (the last token's attention, summed over heads) but without the
rerun: the chosen tokens go on from `layer`, at their original positions. Run it:

    python examples/custom_selection.py [--model smollm2-135m]
"""
import argparse
from dataclasses import dataclass


import asl
from _text import FACTS, context, question


@dataclass
class LastQueryTopK(asl.SelectionPolicy):
    """At `layer`, keep the `select_tokens` tokens the last query attends to most."""

    layer: int = 8
    select_tokens: int = 128

    def begin(self, prefill):
        self.batch = prefill.batch_size

    def after_layer(self, layer, view):
        if layer != self.layer or view.width <= self.select_tokens:
            return None
        q = view.queries[:, :, -1:]  # [B, H, 1, d]
        k = view.keys.repeat_interleave(q.shape[1] // view.keys.shape[1], dim=1)
        scores = (q @ k.transpose(-1, -2)).squeeze(2).float().softmax(-1).sum(1)  # [B, n]
        scores = scores.masked_fill(~view.valid, float("-inf"))
        scores[:, -1] = float("inf")  # the last token always goes on
        keep = scores.topk(self.select_tokens, dim=-1).indices.sort(-1).values
        return asl.Selection(keep=keep, active=view.alive > self.select_tokens)

    def report(self):
        return [{"selection_layer": self.layer}] * self.batch


def main(model_name: str = "smollm2-135m", max_new_tokens: int = 8, dtype: str = "auto"):
    model, tokenizer = asl.load(model_name, dtype=dtype)
    prompt = context() + question("Osaka")
    out = asl.generate(model, tokenizer, prompt, max_new_tokens=max_new_tokens,
                       selection=LastQueryTopK(layer=model.config.num_layers // 3, select_tokens=96))
    full = asl.generate(model, tokenizer, prompt, max_new_tokens=max_new_tokens)
    trace = out.trace
    print(f"answer: {out.text!r}  full cache: {full.text!r} (the number is {FACTS['Osaka']})")
    print(f"selected after layer {trace.selection_layer}: tokens alive per layer {trace.alive_tokens}")
    return out, full


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="auto", help="auto: bfloat16 where native, else float32")
    args = parser.parse_args()
    main(args.model, dtype=args.dtype)
