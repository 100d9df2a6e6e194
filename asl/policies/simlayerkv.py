"""SimLayerKV (Zhang et al., arXiv 2410.13846; kvpress's SimLayerKVPress): a "lazy" layer,
whose last queries attend almost only to the first and the most recent tokens, keeps only
those; every other layer keeps its whole prompt. docs/algorithms.md section 19."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .attention_scores import attention_rows
from .base import EvictionPolicy, LayerView, check_positive_int, fill_unevicted, is_number


@dataclass
class SimLayerKV(EvictionPolicy):
    """Per layer and sequence: the last `n_last` queries' causal attention, averaged over the
    query heads and those queries, summed over the first `n_initial` entries and the `n_recent`
    entries before the last `n_last` (kvpress's `compute_window_attention` leaves those out).
    Above `lazy_threshold` the layer is lazy and keeps the first `n_initial` entries and the last
    `n_recent - n_last` (kvpress's slice); a prompt of at most `n_initial + n_recent + n_last`
    tokens, or a threshold of 1, keeps everything. The paper's thresholds: Llama 3 0.9,
    Llama 2 0.65, Mistral 0.8, Qwen 0.85 (kvpress's docstring). kvpress averages over the batch
    too, deciding for every sequence at once; here each sequence decides for itself. No budget:
    what a layer keeps is all or its two ends."""

    lazy_threshold: float = 0.9
    n_last: int = 1
    n_recent: int = 1024
    n_initial: int = 4

    def _check(self) -> None:
        if not is_number(self.lazy_threshold) or not 0 <= self.lazy_threshold <= 1:
            raise ValueError(f"lazy_threshold must be a number in [0, 1], got {self.lazy_threshold!r}")
        check_positive_int("n_last", self.n_last)
        check_positive_int("n_recent", self.n_recent)
        check_positive_int("n_initial", self.n_initial, 0)
        if self.n_recent <= self.n_last:
            raise ValueError(f"n_recent ({self.n_recent}) must be larger than n_last ({self.n_last}): a lazy layer "
                             "keeps the last n_recent - n_last entries")

    def lazy(self, view: LayerView) -> torch.Tensor:
        """[B] whether each sequence's layer is lazy (long enough to compress, and attending to its ends)."""
        n, alive = view.width, view.alive
        long = alive > self.n_initial + self.n_recent + self.n_last
        if self.lazy_threshold == 1.0 or not bool(long.any()):
            return torch.zeros_like(long)
        attention = attention_rows(view, slice(n - self.n_last, n)).mean((1, 2))  # [B, n]
        cols = torch.arange(n, device=alive.device)
        first = (n - alive)[:, None]
        ends = ((cols >= first) & (cols < first + self.n_initial)) | \
            ((cols >= n - self.n_last - self.n_recent) & (cols < n - self.n_last))
        return long & ((attention * ends).sum(-1) > self.lazy_threshold)

    def keep(self, layer: int, view: LayerView) -> torch.Tensor | None:
        lazy = self.lazy(view)
        if not bool(lazy.any()):
            return None
        n, g = view.width, view.keys.shape[1]
        first = (n - view.alive)[:, None] + torch.arange(self.n_initial, device=lazy.device)
        recent = torch.arange(n - self.n_recent + self.n_last, n, device=lazy.device).expand(len(lazy), -1)
        cols = torch.cat([first, recent], dim=-1)
        cols = torch.nn.functional.pad(cols, (0, n - cols.shape[-1]), value=-1)  # room for the rows kept whole
        return fill_unevicted(cols[:, None].expand(-1, g, -1).contiguous(), view, lazy)
