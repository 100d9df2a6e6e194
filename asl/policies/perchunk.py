"""Compression chunk by chunk (kvpress's ChunkPress, after Finch's chunked prefill): the scorer
sees each chunk of the prompt alone and each chunk keeps its own share, so the kept entries are
spread evenly over the text instead of gathering where the scores are high.
docs/algorithms.md section 19."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import ops
from .allocate import ScorerWrapper
from .base import EvictionPolicy, LayerView, check_positive_int
from .scorer import ScorerEviction, prefix_scores


@dataclass
class PerChunk(ScorerWrapper, EvictionPolicy):
    """Each sequence's tokens cut into chunks of `chunk` from its first (the last one shorter);
    the scorer scores every chunk as if it were the whole prompt (its own queries, its own
    window: the chunk's last `window` entries are kept, as kvpress's scorers keep theirs), and
    the chunk keeps `max(1, int(c * (1 - ratio)))` of its c entries, the best by score (ties to
    the earlier). `ratio` is the scorer's (kvpress's compression_ratio); with a budget instead,
    every chunk keeps the share `budget / n` of a prompt of n tokens (one that fits keeps all)."""

    scorer: ScorerEviction
    chunk: int = 1024  # kvpress's chunk_length
    sizes_layers = False  # a ratio on the scorer is how kvpress sizes it

    def _check(self) -> None:
        super()._check()
        check_positive_int("chunk", self.chunk)

    def keep(self, layer: int, view: LayerView) -> torch.Tensor | None:
        heads = self.scorer.cached_heads(view)
        rows = []
        for b, n in enumerate(view.alive.tolist()):
            ratio = self.scorer.ratio if self.scorer.ratio is not None else max(0.0, 1 - self.scorer.budget / n)
            start = view.width - n  # left padding
            cols = [self._chunk(view, b, s, min(s + self.chunk, view.width), ratio, heads)
                    for s in range(start, view.width, self.chunk)]
            rows.append(torch.cat(cols, -1))
        k = max(r.shape[-1] for r in rows)
        return torch.stack([torch.nn.functional.pad(r, (0, k - r.shape[-1]), value=-1) for r in rows])

    def _chunk(self, view: LayerView, b: int, s: int, e: int, ratio: float, heads: int) -> torch.Tensor:
        """[heads, kept]: the columns (of `view`) chunk [s, e) of sequence b keeps, ascending."""
        length = e - s
        kept = min(length, max(1, int(length * (1 - ratio))))
        window = min(self.scorer.window, length)
        if length > window:
            part = view.columns(b, s, e)
            scores = prefix_scores(self.scorer, self.scorer.score(part), part, heads)[0]  # [heads, length - window]
        else:
            scores = view.keys.new_zeros(heads, 0, dtype=torch.float32)
        scores = torch.cat([scores.float(), scores.new_full((heads, window), float("inf"))], -1)
        best = ops.stable_descending_order(scores)[:, :kept]
        return best.sort(-1).values + s
