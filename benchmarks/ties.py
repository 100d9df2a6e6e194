"""How often tied scores decide a selection: per layer of a real prompt, the window scores of
section 1 (window 32, kernel 7) under max and average pooling, and whether the top-k cut
falls inside a group of equal scores (then the tie rule, not the scores, picks who stays).

Two places a tie can decide: the per-KV-head scores SnapKV and FastKV's eviction keep the
top `k - window` of, and the per-token sums ASL, FastKV and GemFilter select from. Writes
docs/results/ties/{ties.json,ties.md}.

    python benchmarks/ties.py [--models qwen2.5-0.5b,smollm2-135m] [--length 4096] [--select 1024]
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

import torch

import asl
from asl.bench.report import rows as tabulate
from asl.bench.tasks import make_sample
from asl.policies import EvictionPolicy

OUT = pathlib.Path(__file__).resolve().parent.parent / "docs" / "results" / "ties"
TASKS = ("niah_single_1", "kv_retrieval")


class Recorder(EvictionPolicy):
    """Keeps nothing out: reads each layer's window scores under both poolings."""

    def __init__(self, k: int):
        self.k, self.rows = k, []

    def keep(self, layer, view):
        for pooling in ("max", "avg"):
            scores = view.window_scores(32, 7, pooling)[0]  # [G, m]
            self.rows.append({"layer": layer, "pooling": pooling, **tie_figures(scores, self.k - 32)})
        return None


def tie_figures(per_head: torch.Tensor, k: int) -> dict:
    """Share of prefix scores equal to another score of their row; share of rows whose top-k
    cut falls in a tie (per KV head, and for the per-token sum); tokens in those tied groups."""
    def row_stats(row: torch.Tensor) -> tuple[float, bool, int]:
        values, counts = row.unique(return_counts=True)
        tied = float(counts[counts > 1].sum()) / row.numel()
        ordered = row.sort(descending=True).values
        cut = bool(ordered[k - 1] == ordered[k]) if k < row.numel() else False
        group = int((row == ordered[k - 1]).sum()) if cut else 0
        return tied, cut, group

    heads = [row_stats(row) for row in per_head]
    token = row_stats(per_head.sum(0))
    return {"tied_share_per_head": sum(h[0] for h in heads) / len(heads),
            "cut_in_tie_heads": sum(h[1] for h in heads), "heads": len(heads),
            "tied_share_token": token[0], "cut_in_tie_token": token[1], "tie_group_token": token[2]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="qwen2.5-0.5b,smollm2-135m")
    ap.add_argument("--length", type=int, default=4096)
    ap.add_argument("--select", type=int, default=1024, help="k: tokens kept, the window of 32 included")
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args()
    results = []
    for name in args.models.split(","):
        model, tok = asl.load(name, dtype=args.dtype)
        for task in TASKS:
            sample = make_sample(task, tok, args.length, 0, 0)
            rec = Recorder(args.select)
            asl.generate(model, tok, sample.prompt, max_new_tokens=1, eviction=rec)
            for row in rec.rows:
                results.append({"model": name, "task": task, "dtype": str(model.lm_head.weight.dtype), **row})
            print(f"{name} {task}: done", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {"command": "python " + " ".join(sys.argv), "length": args.length, "select": args.select}
    (OUT / "ties.json").write_text(json.dumps({"meta": meta, "rows": results}, indent=1) + "\n")
    (OUT / "ties.md").write_text(summary(results, meta))
    print(summary(results, meta))
    return 0


def summary(rows: list[dict], meta: dict) -> str:
    cells = []
    for model, task, pooling in sorted({(r["model"], r["task"], r["pooling"]) for r in rows}):
        rs = [r for r in rows if (r["model"], r["task"], r["pooling"]) == (model, task, pooling)]
        cells.append([model, task, pooling, f"{100 * sum(r['tied_share_per_head'] for r in rs) / len(rs):.1f}%",
                      f"{sum(r['cut_in_tie_heads'] for r in rs)} of {sum(r['heads'] for r in rs)}",
                      f"{100 * sum(r['tied_share_token'] for r in rs) / len(rs):.1f}%",
                      f"{sum(r['cut_in_tie_token'] for r in rs)} of {len(rs)}"])
    return "\n".join([f"# Ties in the window scores ({meta['length']} tokens, k = {meta['select']})", "",
                      f"`{meta['command']}`", "", tabulate.markdown(
                          ["model", "task", "pooling", "tied scores, per head", "top-k cut in a tie: KV heads",
                           "tied per-token sums", "cut in a tie: per-token (layers)"], cells)]) + "\n"


if __name__ == "__main__":
    sys.exit(main())
