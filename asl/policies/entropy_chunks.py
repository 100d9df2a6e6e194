"""ChunkKV gated by the entropy of each chunk's scores (kvpress's EntropyGatedChunkKVPress): an
important chunk whose importance sits on a few tokens keeps only its best few, and the slots it
frees go to further chunks. docs/algorithms.md section 19."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import ops
from .base import LayerView, check_positive_int, fill_unevicted
from .chunkkv import ChunkKV
from .scorer import prefix_scores

EPS = 1e-8  # kvpress's


@dataclass
class EntropyGatedChunkKV(ChunkKV):
    """ChunkKV's chunks (the scorer's scores summed over the heads, `chunk` tokens each from the
    first), taken best mean score first until the budget is spent; a chunk at or above the median
    mean score whose normalised entropy (of its scores, shifted to be non-negative, over
    log(chunk length)) is below the median entropy keeps only its `low_entropy_chunk` best tokens;
    a chunk the remaining budget cannot hold keeps its best that fit; a budget left over goes to
    the best tokens not yet kept. The same tokens for every head, plus the window."""

    chunk: int = 10
    low_entropy_chunk: int = 4

    def _check(self) -> None:
        super()._check()
        check_positive_int("low_entropy_chunk", self.low_entropy_chunk)
        if self.low_entropy_chunk >= self.chunk:
            raise ValueError(f"low_entropy_chunk ({self.low_entropy_chunk}) must be smaller than chunk ({self.chunk})")

    def keep(self, layer: int, view: LayerView) -> torch.Tensor | None:
        window, heads, ratio = self.scorer.window, self.scorer.cached_heads(view), self.scorer.ratio
        alive = view.alive.tolist()
        counts = [max(1, int(n * (1 - ratio))) if ratio is not None else self.scorer.budget for n in alive]
        evict = [n > c for n, c in zip(alive, counts)]
        if not any(evict):
            return self.scorer.keep(layer, view)
        scores = prefix_scores(self.scorer, self.scorer.score(view), view, heads).sum(1)  # [B, m]
        m = scores.shape[-1]
        rows = []
        for b, (n, count) in enumerate(zip(alive, counts)):
            real = n - window
            chosen = self._tokens(scores[b, m - real:].float(), max(count - window, 0)) + (m - real) if evict[b] \
                else torch.arange(m - real, m, device=scores.device)
            cols = torch.cat([chosen, torch.arange(view.width - window, view.width, device=scores.device)])
            rows.append(cols.expand(heads, -1))
        k = max(r.shape[-1] for r in rows)
        keep = torch.stack([torch.nn.functional.pad(r, (0, k - r.shape[-1]), value=-1) for r in rows])
        return fill_unevicted(keep, view, torch.tensor(evict, device=keep.device))

    def _tokens(self, scores: torch.Tensor, budget: int) -> torch.Tensor:
        """The kept prefix positions of one sequence (scores [real]), ascending."""
        real = len(scores)
        bounds = [(s, min(s + self.chunk, real)) for s in range(0, real, self.chunk)]
        means = torch.stack([scores[s:e].mean() for s, e in bounds])
        entropy = torch.stack([self._entropy(scores[s:e]) for s, e in bounds])
        high = means >= means.median()
        spiky = entropy < entropy.median()
        keep = torch.zeros(real, dtype=torch.bool, device=scores.device)
        for c in ops.stable_descending_order(means[None])[0].tolist():
            if budget <= 0:
                break
            s, e = bounds[c]
            take = min(e - s, budget, self.low_entropy_chunk if bool(high[c] & spiky[c]) else e - s)
            keep[s + ops.stable_descending_order(scores[None, s:e])[0, :take]] = True
            budget -= take
        if budget > 0:  # what is left goes to the best tokens not kept yet
            rest = (~keep).nonzero().flatten()
            keep[rest[ops.stable_descending_order(scores[None, rest])[0, :budget]]] = True
        return keep.nonzero().flatten()

    @staticmethod
    def _entropy(scores: torch.Tensor) -> torch.Tensor:
        """The normalised entropy of one chunk's scores (0 for a single token), as kvpress computes it."""
        if len(scores) == 1:
            return scores.new_zeros(())
        shifted = scores - scores.min().clamp(max=0.0)
        p = shifted / (shifted.sum() + EPS)
        return (-(p * (p + EPS).log()).sum() / math.log(len(scores))).clamp(0.0, 1.0)
