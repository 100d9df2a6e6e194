"""ChunkKV (Liu et al., arXiv 2502.00299; kvpress's ChunkKVPress): keep whole chunks of
consecutive tokens instead of single entries, so that what stays reads as text.
docs/algorithms.md section 19."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import ops
from .allocate import ScorerWrapper
from .base import EvictionPolicy, LayerView, check_positive_int, fill_unevicted
from .scorer import ScorerEviction, prefix_scores


@dataclass
class ChunkKV(ScorerWrapper, EvictionPolicy):
    """The scorer's scores summed over the heads, averaged per chunk of `chunk` tokens (the
    sequence's prefix cut from its first token; a shorter last chunk averages its own), and the
    best chunks kept whole, the same for every head, plus the window. How many: with the
    scorer's `ratio`, kvpress's `max(1, int(chunks * (1 - ratio)))`; with its budget, as many
    whole chunks as fit `budget - window` (at least one). Fewer prefix tokens than one chunk: the
    scorer alone decides, as kvpress delegates. Ties go to the lower chunk."""

    scorer: ScorerEviction
    chunk: int = 20
    sizes_layers = False  # a ratio on the scorer is kvpress's way of sizing it

    def _check(self) -> None:
        super()._check()
        check_positive_int("chunk", self.chunk)

    def keep(self, layer: int, view: LayerView) -> torch.Tensor | None:
        window, heads, ratio = self.scorer.window, self.scorer.cached_heads(view), self.scorer.ratio
        alive = view.alive.tolist()
        fits = [n <= (self.scorer.budget if ratio is None else max(1, int(n * (1 - ratio)))) for n in alive]
        short = [not f and n - window < self.chunk for n, f in zip(alive, fits)]
        if all(f or s for f, s in zip(fits, short)):
            return self.scorer.keep(layer, view)  # nothing to chunk
        per_entry = self.scorer.keep(layer, view) if any(short) else None
        scores = prefix_scores(self.scorer, self.scorer.score(view), view, heads).sum(1)  # [B, m]
        rows = [per_entry[b] if s else self._chunks(scores[b], n - window, view.width, window, heads)
                if not f else torch.arange(view.width - n, view.width, device=scores.device).expand(heads, -1)
                for b, (n, f, s) in enumerate(zip(alive, fits, short))]
        k = max(r.shape[-1] for r in rows)
        keep = torch.stack([torch.nn.functional.pad(r, (0, k - r.shape[-1]), value=-1) for r in rows])
        return fill_unevicted(keep, view, ~torch.tensor(fits, device=keep.device))

    def _chunks(self, scores: torch.Tensor, real: int, width: int, window: int, heads: int) -> torch.Tensor:
        """[heads, k]: the best whole chunks of one sequence's `real` prefix entries, plus the window."""
        m = scores.shape[-1]
        own = scores[m - real:]
        full, rest = divmod(real, self.chunk)
        means = own[: full * self.chunk].view(full, self.chunk).mean(-1)
        if rest:
            means = torch.cat([means, own[full * self.chunk:].mean()[None]])
        ratio = self.scorer.ratio
        count = (max(1, int(len(means) * (1 - ratio))) if ratio is not None
                 else max(1, (self.scorer.budget - window) // self.chunk))
        best = ops.stable_descending_order(means[None])[0, :count].sort().values
        cols = (best[:, None] * self.chunk + torch.arange(self.chunk, device=scores.device)).flatten()
        cols = torch.cat([cols[cols < real] + (m - real), torch.arange(width - window, width, device=scores.device)])
        return cols.expand(heads, -1)
