"""Parity with kvpress's own code for the evictions that act while the answer is generated
(issue 37, item 5): kvpress's DecodingPress, CompressionRatioDecodingPress and DMSPress(decoding=
True) against asl.DecodingEviction and asl.ThresholdEviction(decoding=True), on the same model,
the same token ids (each context and its question as one prompt), float32, greedy. The answers
are compared token for token, and the cache's size after the last step.

    bash benchmarks/peers_env.sh          # once: .venv-kvpress
    .venv/bin/python benchmarks/kvpress_decoding_parity.py --out docs/results/kvpress-parity

Each context is followed by a request to repeat it, so the answer runs long enough to be cut: a cut
every 8 generated tokens, 40 new tokens, so 4 cuts per answer.
"""
from __future__ import annotations

import json
import sys

import torch

import asl
from asl.bench.report import rows as tabulate
from asl.generation import generate_ids
from asl.generation_settings import resolve
from kvpress_parity import KVPRESS_PY, arguments, prompts, run_kvpress

REPEAT = "\n\nRepeat the text above, word for word, from its first sentence:\n"
# a name -> (kvpress's class, its arguments, our eviction)
METHODS = {
    "decoding": ("DecodingPress", {"base_press": ["KnormPress", {}], "compression_interval": 8,
                                          "target_size": 512},
                        lambda: asl.DecodingEviction(asl.KNorm(window=0), every=8, budget=512)),
    "decoding-ratio": ("CompressionRatioDecodingPress",
                                  {"base_press": ["KnormPress", {}], "compression_interval": 8,
                                   "target_compression_ratio": 0.5},
                                  lambda: asl.DecodingEviction(asl.KNorm(window=0), every=8, ratio=0.5)),
    "dms-decoding": ("DMSPress", {"press": ["KnormPress", {}], "threshold": -11.0, "sliding_window_size": 16,
                                         "decoding": True},
                            lambda: asl.ThresholdEviction(asl.KNorm(window=0), threshold=-11.0, sliding_window=16,
                                                          decoding=True)),
}


def main() -> int:
    args = arguments(__doc__, METHODS, new_tokens=40).parse_args()
    methods = [m for m in args.methods.split(",") if m]
    if [m for m in methods if m not in METHODS] or not KVPRESS_PY.exists():
        raise SystemExit(f"--methods: one of {', '.join(METHODS)}; {KVPRESS_PY} from benchmarks/peers_env.sh")
    torch.set_num_threads(args.threads)
    model, tokenizer = asl.load(args.model, dtype="float32")
    cases = prompts(tokenizer, args.prompts, args.tokens, args.seed)
    for case in cases:  # an answer long enough to be cut several times
        case["question_ids"] = tokenizer(REPEAT, add_special_tokens=False)["input_ids"]
    settings = resolve(None, max_new_tokens=args.new_tokens)
    ours = {m: [generate_ids(model, tokenizer, [c["context_ids"] + c["question_ids"]], settings,
                             eviction=METHODS[m][2](), single=True) for c in cases] for m in methods}
    theirs = run_kvpress({"decoding": True, "new_tokens": args.new_tokens,
                          "presses": {m: METHODS[m][:2] for m in methods},
                          "prompts": [{k: c[k] for k in ("id", "context_ids", "question_ids")} for c in cases]},
                         args.model, args.threads)
    rows, per_prompt = [], {}
    for m in methods:
        pairs = list(zip(ours[m], theirs["results"][m]))
        same = [o.tokens == t["answer"] for o, t in pairs]
        rows.append([m, f"{METHODS[m][0]}({', '.join(f'{k}={v}' for k, v in METHODS[m][1].items())})".replace("'", ""),
                     f"{sum(same)} of {len(same)}", f"{sum(o.trace.decode_compactions > 0 for o, _ in pairs)} of {len(pairs)}"])
        per_prompt[m] = [{"id": c["id"], "answer_equal": s, "ours": tokenizer.decode(o.tokens),
                          "kvpress": tokenizer.decode(t["answer"]),
                          "layer_cuts_ours": o.trace.decode_compactions}
                         for c, (o, t), s in zip(cases, pairs, same)]
    table = tabulate.markdown(["ours", "kvpress", "answers equal", "answers with a cut (ours)"], rows)
    result = {"command": "python " + " ".join(sys.argv), "model": args.model, "tokens": args.tokens,
              "new_tokens": args.new_tokens, "prompts": args.prompts, "versions": theirs["versions"],
              "per_prompt": per_prompt}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kvpress-decoding-parity.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "kvpress-decoding-parity.md").write_text(
        f"`{result['command']}`\n\n{args.model}, {args.prompts} contexts of {args.tokens} tokens and their question as "
        f"one prompt, {args.new_tokens} greedy tokens, float32, kvpress {theirs['versions']['kvpress']}\n\n{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
