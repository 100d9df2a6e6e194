"""A ~2,000-token passkey prompt on the real model: what each method answers, where ASL selects.

    python benchmarks/passkey_demo.py [--model smollm2-135m] [--tokens 2000] [--tau 0.7]
"""
from __future__ import annotations

import argparse


import asl
from asl.bench.tasks.haystack import passkey_prompt
from common import setup_threads


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, default=2000)
    ap.add_argument("--select-tokens", type=int, default=512)
    ap.add_argument("--tau", type=float, default=0.7)
    args = ap.parse_args()
    setup_threads(2)
    model, tok = asl.load(args.model)
    L, k = model.config.num_layers, args.select_tokens
    key = "68172"
    prompt = passkey_prompt(tok, args.tokens, key)
    methods = {
        "full": (None, None),
        f"asl(tau={args.tau})+snapkv": (asl.ASL(tau=args.tau, l_min=L // 3, l_obs=8, select_tokens=k), asl.SnapKV(k)),
        f"fastkv(layer={L // 2})+snapkv": (asl.FastKV(layer=L // 2, select_tokens=k), asl.SnapKV(k)),
        f"gemfilter(layer={13 * L // 32})": (asl.GemFilter(layer=13 * L // 32, select_tokens=k), None),
    }
    print(f"{args.model}: passkey {key} in a {len(tok(prompt)['input_ids'])}-token prompt, select/budget {k}")
    for name, (sel, ev) in methods.items():
        out = asl.generate(model, tok, prompt, max_new_tokens=8, selection=sel, eviction=ev)
        t = out.trace
        layer = t.selection_layer if sel is not None else None
        print(f"{name:28} answer {out.text.strip()!r:14} found={key in out.text!s:5} layer={layer} "
              f"prefill={t.prefill_s:.2f}s")
        if t.ratios:
            print("  ASL ratio per layer: " + ", ".join(f"{l}:{r:.2f}" for l, r in t.ratios.items()))


if __name__ == "__main__":
    main()
