"""Our decoder against transformers' on the real Gemma 3 270M (issue 38, item 4): greedy answers
on 20 bench prompts of 2,048 tokens, four times its sliding window of 512.

    python benchmarks/gemma_greedy.py --out docs/results/gemma3-greedy [--prompts 20 --length 2048]

Both load the same dequantised folder in float32 (`asl.load("gemma3-270m")` and
`Gemma3ForCausalLM.from_pretrained` on it, sdpa attention), so any difference is the code's.
Per prompt: our answer's tokens, transformers' (greedy `generate`, both cut at the first EOS), and
the largest gap between the two models' last-token logits over the prompt. Writes results.json
and README.md; resumable (prompts already in results.json are kept).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import time

import torch
from common import setup_threads
from transformers import AutoModelForCausalLM

import asl
from asl.bench.tasks import make_sample
from asl.models.loading import resolve_checkpoint

TASKS = ("niah_single_2", "niah_multikey_1", "kv_retrieval", "vt", "cwe")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--length", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    setup_threads(args.threads)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    done = {r["id"]: r for r in json.loads((out / "results.json").read_text())["results"]} \
        if (out / "results.json").exists() else {}
    ours, tok = asl.load("gemma3-270m", dtype="float32")
    hf = AutoModelForCausalLM.from_pretrained(resolve_checkpoint("gemma3-270m"), dtype=torch.float32,
                                              attn_implementation="sdpa").eval()
    eos = set(asl.generation.eos_ids(ours, tok))
    rows = []
    for i in range(args.prompts):
        task = TASKS[i % len(TASKS)]
        sample = make_sample(task, tok, args.length, i // len(TASKS), seed=0)
        if sample.id in done:
            rows.append(done[sample.id])
            continue
        ids = torch.tensor([tok(sample.prompt)["input_ids"]])
        began = time.perf_counter()
        mine = asl.generate(ours, tok, sample.prompt, max_new_tokens=sample.max_new_tokens, chat=False).tokens
        with torch.no_grad():
            theirs = hf.generate(ids, max_new_tokens=sample.max_new_tokens, do_sample=False)[0, ids.shape[1]:].tolist()
            gap = (ours(ids)[0, -1] - hf(ids).logits[0, -1].float()).abs().max().item()
        theirs = theirs[: next((j + 1 for j, t in enumerate(theirs) if t in eos), len(theirs))]
        rows.append({"id": sample.id, "prompt_tokens": ids.shape[1], "ours": mine, "transformers": theirs,
                     "identical": mine == theirs, "last_logit_max_abs_diff": gap, "answer": tok.decode(mine),
                     "seconds": round(time.perf_counter() - began, 1)})
        print(f"{sample.id}: identical={mine == theirs} logit gap {gap:.2e} {tok.decode(mine)!r}", flush=True)
        write(out, rows, args)
    write(out, rows, args)


def write(out: pathlib.Path, rows: list[dict], args) -> None:
    same = sum(r["identical"] for r in rows)
    record = {"model": "gemma3-270m", "dtype": "float32", "length": args.length, "prompts": len(rows),
              "identical": same, "torch": torch.__version__, "transformers": __import__("transformers").__version__,
              "results": rows}
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(out / "results.json")
    lines = ["# Gemma 3 270M: our decoder against transformers, greedy", "",
             f"`python benchmarks/gemma_greedy.py --out {out} --prompts {args.prompts} --length {args.length}`", "",
             f"**{same} of {len(rows)}** answers token-identical (float32, prompts of about {args.length} tokens, "
             "sliding window 512); largest last-token logit gap "
             f"{max(r['last_logit_max_abs_diff'] for r in rows):.2e}.", "",
             "| prompt | tokens | identical | logit gap | our answer |", "| --- | ---: | :---: | ---: | --- |"]
    lines += [f"| {r['id']} | {r['prompt_tokens']} | {'yes' if r['identical'] else 'NO'} | "
              f"{r['last_logit_max_abs_diff']:.1e} | {r['answer'][:40]!r} |" for r in rows]
    (out / "README.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
