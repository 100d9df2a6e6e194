"""Full-cache prefill and decode speed of our decoder vs transformers, same weights, one run.

    python benchmarks/decoder_speed.py [--model smollm2-135m] [--context 4096] [--threads 2] [--dtype auto]

Prefill: our layer-by-layer prefill (KV cache + last-token logits) vs transformers' sdpa
forward with use_cache=True and logits_to_keep=1 (the same work). Decode: time per token at
the given context, ours with compile=True vs transformers' generate (greedy): the decode
loop's time over its steps, the prefill left out (for transformers, read off a logits
processor that notes the time of every step), runs interleaved, median of 3. Both models in
--dtype (auto: bfloat16 where the CPU computes it natively, else float32). The last line
printed is the result as JSON (benchmarks/cpu_capabilities.py reads it).
"""
from __future__ import annotations

import json
import statistics

import torch
from common import StepClock, interleaved_medians, prose_ids, setup_threads, speed_dtype, speed_parser
from transformers import AutoModelForCausalLM, LogitsProcessorList

import asl
from asl.models.loading import resolve_checkpoint
from asl.bench.report import rows as tabulate
from asl.prefill import prefill


def main() -> None:
    ap = speed_parser(__doc__, repeats=5)
    ap.add_argument("--new-tokens", type=int, default=32)
    args = ap.parse_args()
    setup_threads(args.threads)

    dtype, why = speed_dtype(args.dtype)
    model, tok = asl.load(args.model, dtype=dtype)
    hf = AutoModelForCausalLM.from_pretrained(resolve_checkpoint(args.model), dtype=dtype,
                                              attn_implementation="sdpa").eval()
    ids = prose_ids(tok, args.context)
    valid = torch.ones_like(ids, dtype=torch.bool)
    prompt = tok.decode(ids[0])

    with torch.inference_mode():
        t = interleaved_medians({"ours": lambda: prefill(model, ids, valid, extra_slots=args.new_tokens),
                                 "hf": lambda: hf(ids, use_cache=True, logits_to_keep=1)}, args.repeats)
    t_ours, t_hf = t["ours"], t["hf"]

    n = args.new_tokens
    x = torch.tensor([tok(prompt)["input_ids"]])
    clock = StepClock()
    kw = {"do_sample": False, "pad_token_id": tok.eos_token_id, "logits_processor": LogitsProcessorList([clock])}
    tpots: dict[str, list[float]] = {"ours": [], "hf": []}

    def ours() -> None:
        out = asl.generate(model, tok, prompt, max_new_tokens=n + 1, compile=True)
        assert len(out.tokens) == n + 1, "hit EOS early; pick another prompt"
        tpots["ours"].append(out.trace.decode_s_per_token)

    def theirs() -> None:
        clock.times.clear()
        hf.generate(x, max_new_tokens=n + 1, min_new_tokens=n + 1, **kw)
        tpots["hf"].append((clock.times[-1] - clock.times[0]) / (len(clock.times) - 1))

    ours()  # compile the decode step once
    tpots["ours"].clear()
    with torch.inference_mode():
        interleaved_medians({"ours": ours, "hf": theirs}, 3, warmup=0)
    tpot_ours, tpot_hf = statistics.median(tpots["ours"]), statistics.median(tpots["hf"])

    result = {
        "model": args.model, "context": ids.shape[1], "threads": args.threads, "dtype": str(dtype).removeprefix("torch."),
        "dtype_reason": why, "capability": torch.backends.cpu.get_cpu_capability(),
        "prefill_s": {"asl": t_ours, "transformers": t_hf, "ratio": t_ours / t_hf},
        "tpot_s": {"asl_compiled": tpot_ours, "transformers_generate": tpot_hf, "ratio": tpot_ours / tpot_hf},
    }
    print(tabulate.text(["", "asl", "transformers", "ratio"],
                        [["prefill (s)", f"{t_ours:.3f}", f"{t_hf:.3f}", f"{t_ours / t_hf:.2f}"],
                         ["decode per token (ms)", f"{tpot_ours * 1e3:.2f}", f"{tpot_hf * 1e3:.2f}",
                          f"{tpot_ours / tpot_hf:.2f}"]]))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
