"""SnapKV: per layer and KV head, the most attended prefix entries plus the window (docs/algorithms.md section 6)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import (EvictionPolicy, LayerView, check_kernel, check_pooling, check_positive_int, check_window_below,
                   fill_unevicted, top_prefix)


@dataclass
class SnapKV(EvictionPolicy):
    """SnapKV (Li et al., arXiv 2404.14469): per layer and KV head, at most `budget` entries.

    The top `budget - window` prefix entries by the group's summed window scores plus the
    window (per KV head, where the original keeps `budget` per query head).
    docs/algorithms.md section 6.
    """

    budget: int = 2048  # KV entries per KV head per layer, window included
    window: int = 32
    kernel: int = 7
    pooling: str = "avg"

    def _check(self) -> None:
        check_positive_int("budget", self.budget)
        check_positive_int("window", self.window)
        check_window_below(self.window, "budget", self.budget)
        check_kernel(self.kernel)
        check_pooling(self.pooling)

    def keep(self, layer: int, view: LayerView) -> torch.Tensor | None:
        alive = view.alive
        evict = alive > self.budget
        if not bool(evict.any()):
            return None
        scores = view.window_scores(self.window, self.kernel, self.pooling)  # [B, G, m]
        counts = torch.where(evict, self.budget - self.window, 0)[:, None].expand(-1, scores.shape[1])
        keep = view.with_window(top_prefix(scores, counts).flatten(0, 1), self.window)
        keep = keep.view(*scores.shape[:2], -1)
        return fill_unevicted(keep, view, evict)


