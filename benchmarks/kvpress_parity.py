"""Parity with kvpress's own code: each of our scorers and the kvpress press it follows, on the
same model, the same token ids and the same compression ratio, in float32. Per layer and KV
head the Jaccard overlap of the kept entries, and the greedy answers to a question asked on
the compressed context, compared token for token (issue 37, item 5).

    bash benchmarks/peers_env.sh          # once: .venv-kvpress
    .venv/bin/python benchmarks/kvpress_parity.py --out docs/results/kvpress-parity

kvpress scores the whole context (no window of its own) and keeps `int(n * (1 - ratio))`
entries per layer and KV head; ours run with `ratio` and the window kvpress implies (0; TOVA
1, which kvpress keeps by giving it the top score; SnapKV 64 with kernel 5, its defaults).
The contexts are prose with a needle ("The special magic number for <city> is <n>.") at a
seeded depth; the question follows the compressed context, as kvpress's pipeline asks it.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import random
import statistics
import subprocess
import sys
import tempfile

import torch

import asl
from asl.bench.report import rows as tabulate
from asl.bench.tasks.haystack import prose_context, tokens_for
from asl.models.loading import resolve_checkpoint
from asl.policies.base import decides_after_prefill
from asl.policies.kvzip import template_parts
from asl.policies.scorer import prefix_scores

ROOT = pathlib.Path(__file__).resolve().parent.parent
KVPRESS_PY = ROOT / ".venv-kvpress" / "bin" / "python"
# ours -> (kvpress's class, its arguments, our policy at a ratio)
METHODS = {
    "knorm": ("KnormPress", {}, lambda r: asl.KNorm(window=0, ratio=r)),
    "keydiff": ("KeyDiffPress", {}, lambda r: asl.KeyDiff(window=0, ratio=r)),
    "random": ("RandomPress", {"seed": 7}, lambda r: asl.RandomScores(window=0, ratio=r, seed=7)),
    "tova": ("TOVAPress", {}, lambda r: asl.TOVA(window=1, ratio=r)),
    "observed-attention": ("ObservedAttentionPress", {}, lambda r: asl.ObservedAttention(window=0, ratio=r)),
    "snapkv": ("SnapKVPress", {"window_size": 64, "kernel_size": 5},
               lambda r: asl.SnapKV(window=64, kernel=5, ratio=r)),
    "lagkv": ("LagKVPress", {}, lambda r: asl.LagKV(window=0, ratio=r)),
    "chunkkv(knorm)": ("ChunkKVPress", {"press": ["KnormPress", {}], "chunk_length": 20},
                       lambda r: asl.ChunkKV(asl.KNorm(window=0, ratio=r), chunk=20)),
    "perchunk(knorm)": ("ChunkPress", {"press": ["KnormPress", {}], "chunk_length": 256},
                        lambda r: asl.PerChunk(asl.KNorm(window=0, ratio=r), chunk=256)),
    "entropy-chunkkv(knorm)": ("EntropyGatedChunkKVPress", {"press": ["KnormPress", {}]},
                               lambda r: asl.EntropyGatedChunkKV(asl.KNorm(window=0, ratio=r))),
    "blockwise(keydiff)": ("BlockPress", {"press": ["KeyDiffPress", {}], "block_size": 128},
                           lambda r: asl.Blockwise(asl.KeyDiff(window=0, ratio=r), block=128)),
    "think(snapkv)": ("ComposedPress", {"presses": [["SnapKVPress", {"window_size": 64, "kernel_size": 5}],
                                                    ["ThinKPress", {"key_channel_compression_ratio": 0.5}]]},
                      lambda r: asl.ThinK(asl.SnapKV(window=64, kernel=5, ratio=r), key_channel_ratio=0.5)),
    "snapkv+knorm": ("ComposedPress", {"presses": [["SnapKVPress", {"window_size": 64, "kernel_size": 5}],
                                                   ["KnormPress", {"compression_ratio": 0.5}]]},
                     lambda r: asl.Chain(asl.SnapKV(window=64, kernel=5, ratio=r), asl.KNorm(window=0, ratio=0.5))),
    "kvzip": ("KVzipPress", {}, lambda r: asl.KVzip(ratio=r)),
    "kvgrad": ("KVgradPress", {}, lambda r: asl.KVgrad(ratio=r)),
    "kvcompose": ("KVComposePress", {}, lambda r: asl.KVCompose(ratio=r)),
    "kvcompose(unstructured)": ("KVComposePress", {"structured": False}, lambda r: asl.KVCompose(ratio=r, structured=False)),
    "capkv": ("CapPress", {}, lambda r: asl.CapKV(window=0, ratio=r)),
    "merging(knorm)": ("MergingPress", {"press": ["KnormPress", {}]},
                       lambda r: asl.Merging(asl.KNorm(window=0, ratio=r))),
    # (kvpress's ChunkPress around SnapKV fails on a last chunk shorter than SnapKV's window)
    "perchunk(expected-attention)": ("ChunkPress", {"press": ["ExpectedAttentionPress", {}], "chunk_length": 256},
                                     lambda r: asl.PerChunk(asl.ExpectedAttention(window=0, ratio=r), chunk=256)),
    "expected-attention": ("ExpectedAttentionPress", {}, lambda r: asl.ExpectedAttention(window=0, ratio=r)),
    "cur": ("CURPress", {}, lambda r: asl.CUR(window=0, ratio=r)),
    "non-causal-attention": ("NonCausalAttnPress", {}, lambda r: asl.NonCausalAttention(window=0, ratio=r)),
    # a sketch wider than the head spans the keys' space: kvpress's random one then gives the exact leverage
    "leverage": ("LeverageScorePress", {"sketch_dimension": 128},
                 lambda r: asl.Leverage(window=0, ratio=r, sketch_dimension=None)),
    "compactor": ("CompactorPress", {"sketch_dimension": 128},
                  lambda r: asl.Compactor(window=0, ratio=r, sketch_dimension=None)),
    "criticalkv(expected-attention)": (
        "CriticalKVPress", {"press": ["ExpectedAttentionPress", {"use_vnorm": False}]},
        lambda r: asl.CriticalKV(asl.ExpectedAttention(window=0, ratio=r, use_vnorm=False))),
    "keyrerotation(knorm)": ("KeyRerotationPress", {"press": ["KnormPress", {}]},
                             lambda r: asl.KeyRerotation(asl.KNorm(window=0, ratio=r))),
    # the question as the window (asl.compress's question_hint; kvpress's delimiter), the kept keys re-rotated
    "finch": ("FinchPress", {}, lambda r: asl.Finch(ratio=r)),
    "finch(chunk_length=128)": ("FinchPress", {"chunk_length": 128}, lambda r: asl.Finch(ratio=r, chunk_length=128)),
    # no ratio: a lazy layer keeps its two ends; Qwen's threshold, and a recent span below the contexts' length
    "simlayerkv": ("SimLayerKVPress", {"lazy_threshold": 0.85, "n_recent": 256},
                   lambda r: asl.SimLayerKV(lazy_threshold=0.85, n_recent=256)),
}
# kvpress's KVzipPress (and KVgradPress) leaves the chat template's preamble unscored, taking every context to open
# with it (its pipeline's do); these methods' contexts open with it, on both sides.
OPENS_WITH_PREAMBLE = {"kvzip", "kvgrad"}
CITIES = ["Lisbon", "Osaka", "Quito", "Nairobi", "Oslo", "Lima", "Hanoi", "Perth", "Accra", "Riga"]


def prompts(tokenizer, n: int, tokens: int, seed: int) -> list[dict]:
    """Contexts of about `tokens` tokens with one needle each, and its question."""
    tk, rng, out = tokens_for(tokenizer), random.Random(seed), []
    for i in range(n):
        city, number = CITIES[i % len(CITIES)], str(rng.randrange(1000, 10000))
        text, _ = prose_context(tk, tokens, [(rng.random(), f"The special magic number for {city} is {number}.")])
        question = f"\nQuestion: What is the special magic number for {city}? Answer: The special magic number is"
        out.append({"id": f"{i}-{city}", "context": text,
                    "context_ids": tokenizer(text, add_special_tokens=True)["input_ids"],
                    "question": question, "question_ids": tokenizer(question, add_special_tokens=False)["input_ids"]})
    return out


def with_preamble(case: dict, tokenizer) -> dict:
    """The case with its context opening with the chat template's preamble (OPENS_WITH_PREAMBLE)."""
    context = template_parts(tokenizer)[0] + case["context"]
    return {**case, "context": context, "context_ids": tokenizer(context, add_special_tokens=True)["input_ids"]}


def cases_of(method: str, cases: list[dict], tokenizer) -> list[dict]:
    return [with_preamble(c, tokenizer) for c in cases] if method in OPENS_WITH_PREAMBLE else cases


def recording(policy) -> tuple[dict, dict]:
    """Make `policy` record, per layer and KV head, the entries it keeps of the context it
    compresses next, and the entries whose score ties with the cut (equal within 1e-6 to the
    last one kept by score: either side of such a tie is the press's choice too; none for a
    wrapper but KeyRerotation, Merging and ThinK, which keep what their scorer keeps). Read after
    the prefill."""
    kept, tied = {}, {}
    base = type(policy)

    def keep_and_record(self, layer, view):  # `self`: the call's copy (its state set by begin)
        out = base.keep(self, layer, view)
        kept[layer] = [list(range(view.width))] * view.keys.shape[1] if out is None else \
            [[c for c in row if c >= 0] for row in out[0].tolist()]
        tied[layer] = [[] for _ in kept[layer]]
        scorer = self.scorer if isinstance(self, (asl.KeyRerotation, asl.Merging, asl.ThinK)) else self
        if out is not None and isinstance(scorer, asl.ScorerEviction):
            scores = prefix_scores(scorer, scorer.score(view), view, scorer.cached_heads(view))[0]
            for g, cols in enumerate(kept[layer]):
                chosen = [c for c in cols if c < scores.shape[-1]]
                if chosen:
                    cut = float(scores[g, chosen].min())
                    near = (scores[g] - cut).abs() <= 1e-6 * abs(cut) + 1e-9
                    tied[layer][g] = near.nonzero().flatten().tolist()
        return out

    def after_and_record(self, model, tokens, cache, tokenizer):  # asl.KVzip: its cut comes after the prefill
        out = base.after_prefill(self, model, tokens, cache, tokenizer)
        for layer, keep in enumerate(out):
            kept[layer] = [[c for c in row if c >= 0] for row in keep[0].tolist()]
            tied[layer] = [[] for _ in kept[layer]]
        return out

    hooks = {"after_prefill": after_and_record} if decides_after_prefill(policy) else {"keep": keep_and_record}
    policy.__class__ = type(f"Recording{base.__name__}", (base,), hooks)  # copies record too
    return kept, tied


def jaccard(a: list[int], b: list[int]) -> float:
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a | b else 1.0


def compare(ours: list, theirs: list) -> dict:
    """Per method: Jaccard over (prompt, layer, head), and answers equal token for token."""
    scores = [jaccard(a, b) for o, t in zip(ours, theirs) for lo, lt in zip(o["kept"], t["kept"])
              for a, b in zip(lo, lt)]
    layers = [min(jaccard(a, b) for a, b in zip(lo, lt)) for o, t in zip(ours, theirs)
              for lo, lt in zip(o["kept"], t["kept"])]
    up_to_ties = [all(set(a) ^ set(b) <= set(tie) for a, b, tie in zip(lo, lt, ti)) for o, t in zip(ours, theirs)
                  for lo, lt, ti in zip(o["kept"], t["kept"], o["tied"])]
    answered = [(o, t) for o, t in zip(ours, theirs) if t["answer"] is not None]
    return {"prompts": len(ours), "jaccard_mean": statistics.mean(scores), "jaccard_min": min(scores),
            "layers_identical": sum(j == 1.0 for j in layers), "layers": len(layers),
            "layers_at_0.99": sum(j >= 0.99 for j in layers), "layers_same_up_to_ties": sum(up_to_ties),
            "answered": len(answered),
            "answers_equal": sum(o["answer"] == t["answer"] for o, t in answered),
            "kvpress_errors": sorted({t["answer_error"] for t in theirs if t.get("answer_error")})}


def arguments(doc: str, methods: dict, new_tokens: int) -> argparse.ArgumentParser:
    """The options this script and kvpress_decoding_parity.py share."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-0.5b")
    ap.add_argument("--methods", default=",".join(methods))
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--tokens", type=int, default=1024, help="context length (tokens)")
    ap.add_argument("--new-tokens", type=int, default=new_tokens)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=pathlib.Path, required=True)
    return ap


def run_kvpress(spec: dict, model: str, threads: int) -> dict:
    """kvpress's side (kvpress_parity_worker.py in .venv-kvpress) of the cases `spec` describes."""
    with tempfile.TemporaryDirectory() as tmp:
        cases, out = pathlib.Path(tmp) / "cases.json", pathlib.Path(tmp) / "kvpress.json"
        cases.write_text(json.dumps(spec))
        subprocess.run([str(KVPRESS_PY), str(ROOT / "benchmarks" / "kvpress_parity_worker.py"), "--model-dir",
                        str(resolve_checkpoint(model)), "--cases", str(cases), "--out", str(out),
                        "--threads", str(threads)], check=True)
        return json.loads(out.read_text())


def main() -> int:
    ap = arguments(__doc__, METHODS, new_tokens=12)
    ap.add_argument("--ratio", type=float, default=0.75, help="the share of entries evicted (kvpress's)")
    args = ap.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not KVPRESS_PY.exists():
        raise SystemExit(f"--methods: unknown {unknown}; allowed {', '.join(METHODS)}" if unknown else
                         f"{KVPRESS_PY} missing: run bash benchmarks/peers_env.sh")
    torch.set_num_threads(args.threads)
    model, tokenizer = asl.load(args.model, dtype="float32")
    cases = prompts(tokenizer, args.prompts, args.tokens, args.seed)
    ours = {}
    for name in methods:
        for case in cases_of(name, cases, tokenizer):
            policy = METHODS[name][2](args.ratio)
            kept, tied = recording(policy)  # what the compression keeps, read as it runs
            hint = case["question"] if isinstance(policy, asl.Finch) else None  # its window: the question
            compressed = asl.compress(model, tokenizer, case["context"], eviction=policy, question_hint=hint)
            assert list(compressed.context_ids) == case["context_ids"]
            answer = asl.generate(model, tokenizer, case["question"], cache=compressed,
                                  max_new_tokens=args.new_tokens)
            ours.setdefault(name, []).append({"id": case["id"], "kept": [kept[i] for i in range(len(kept))],
                                              "tied": [tied[i] for i in range(len(tied))], "answer": answer.tokens})
        print(f"asl {name}: {len(cases)} prompts", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    theirs = run_kvpress({"ratio": args.ratio, "new_tokens": args.new_tokens,
                          "presses": {m: METHODS[m][:2] for m in methods},
                          "prompts": {m: [{k: c[k] for k in ("id", "context_ids", "question_ids")}
                                          for c in cases_of(m, cases, tokenizer)] for m in methods}},
                         args.model, args.threads)
    figures = {m: compare(ours[m], theirs["results"][m]) for m in methods}
    result = {"command": "python " + " ".join(sys.argv), "model": args.model, "tokens": args.tokens, "ratio": args.ratio,
              "prompts": args.prompts, "versions": theirs["versions"], "methods": figures,
              "per_prompt": {m: [{"id": o["id"], "answer_equal": o["answer"] == t["answer"],
                                  "ours": tokenizer.decode(o["answer"]),
                                  "kvpress": None if t["answer"] is None else tokenizer.decode(t["answer"]),
                                  "layer_jaccard": [min(jaccard(a, b) for a, b in zip(lo, lt))
                                                    for lo, lt in zip(o["kept"], t["kept"])]}
                                 for o, t in zip(ours[m], theirs["results"][m])] for m in methods}}
    earlier = args.out / "kvpress-parity.json"
    if earlier.exists():  # another run of other methods at the same settings: both kept
        old = json.loads(earlier.read_text())
        same = [len(rows) for rows in old["per_prompt"].values()] == [args.prompts] * len(old["per_prompt"])
        if same and all(old.get(k) == result[k] for k in ("model", "tokens", "ratio")):
            result["command"] = "; ".join(dict.fromkeys([*old["command"].split("; "), result["command"]]))
            for key in ("methods", "per_prompt"):
                result[key] = {**{m: v for m, v in old[key].items() if m not in result[key]}, **result[key]}
            figures = result["methods"]
    (args.out / "kvpress-parity.json").write_text(json.dumps(result, indent=1) + "\n")
    table = tabulate.markdown(
        ["ours", "kvpress", "Jaccard mean", "Jaccard min", "layers identical", "the rest: a tie at the cut",
         "layers >= 0.99", "answers equal"],
        [[m, f"{METHODS[m][0]}({', '.join(f'{k}={v}' for k, v in METHODS[m][1].items())})".replace("'", ""),
          f"{f['jaccard_mean']:.4f}", f"{f['jaccard_min']:.3f}", f"{f['layers_identical']} of {f['layers']}",
          f"{f['layers_same_up_to_ties'] - f['layers_identical']} of {f['layers'] - f['layers_identical']}",
          f"{f['layers_at_0.99']} of {f['layers']}",
          f"{f['answers_equal']} of {f['answered']}" + (f" (no kvpress answer on {f['prompts'] - f['answered']})"
                                                         if f["answered"] < f["prompts"] else "")]
         for m, f in figures.items()])
    (args.out / "kvpress-parity.md").write_text(
        f"`{result['command']}`\n\n{args.model}, {args.prompts} contexts of {args.tokens} tokens, ratio {args.ratio}, float32, kvpress "
        f"{theirs['versions']['kvpress']} (transformers {theirs['versions']['transformers']})\n\n{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
