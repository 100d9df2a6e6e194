"""Full-cache prefill and decode speed of our decoder vs transformers, same weights, one run.

    python benchmarks/decoder_speed.py [--model smollm2-135m] [--context 4096] [--threads 2]

Prefill: our layer-by-layer prefill (KV cache + last-token logits) vs transformers' sdpa
forward with use_cache=True and logits_to_keep=1 (the same work). Decode: time per token at
the given context, ours with compile=True vs transformers' generate (greedy), both
measured as (time for N+1 tokens - time for 1 token) / N, runs interleaved.
"""
from __future__ import annotations

import argparse
import json

import torch
from transformers import AutoModelForCausalLM

import asl
from asl.models.loading import resolve_checkpoint
from asl.prefill import prefill
from common import interleaved_medians, prose_ids, setup_threads


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=32)
    args = ap.parse_args()
    setup_threads(args.threads)

    model, tok = asl.load(args.model)
    hf = AutoModelForCausalLM.from_pretrained(resolve_checkpoint(args.model), attn_implementation="sdpa").eval()
    ids = prose_ids(tok, args.context)
    valid = torch.ones_like(ids, dtype=torch.bool)
    prompt = tok.decode(ids[0])

    with torch.inference_mode():
        t = interleaved_medians({"ours": lambda: prefill(model, ids, valid, extra_slots=args.new_tokens),
                                 "hf": lambda: hf(ids, use_cache=True, logits_to_keep=1)}, args.repeats)
    t_ours, t_hf = t["ours"], t["hf"]

    n = args.new_tokens
    x = torch.tensor([tok(prompt)["input_ids"]])
    kw = dict(do_sample=False, pad_token_id=tok.eos_token_id)

    def ours(tokens: int):
        def run():
            out = asl.generate(model, tok, prompt, max_new_tokens=tokens, compile=True)
            assert len(out.tokens) == tokens, "hit EOS early; pick another prompt"
        return run

    def theirs(tokens: int):
        return lambda: hf.generate(x, max_new_tokens=tokens, min_new_tokens=tokens, **kw)

    ours(2)()  # compile the decode step once
    with torch.inference_mode():  # time per token = (time for n+1 tokens - time for 1) / n, both sides
        t = interleaved_medians({"ours_1": ours(1), "ours_n": ours(n + 1), "hf_1": theirs(1),
                                 "hf_n": theirs(n + 1)}, 3, warmup=0)
    tpot_ours, tpot_hf = (t["ours_n"] - t["ours_1"]) / n, (t["hf_n"] - t["hf_1"]) / n

    result = {
        "model": args.model, "context": ids.shape[1], "threads": args.threads,
        "prefill_s": {"asl": t_ours, "transformers": t_hf, "ratio": t_ours / t_hf},
        "tpot_s": {"asl_compiled": tpot_ours, "transformers_generate": tpot_hf, "ratio": tpot_ours / tpot_hf},
    }
    print(f"{'':22}{'asl':>10}{'transformers':>14}{'ratio':>8}")
    print(f"{'prefill (s)':22}{t_ours:10.3f}{t_hf:14.3f}{t_ours / t_hf:8.2f}")
    print(f"{'decode per token (ms)':22}{tpot_ours * 1e3:10.2f}{tpot_hf * 1e3:14.2f}{tpot_ours / tpot_hf:8.2f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
