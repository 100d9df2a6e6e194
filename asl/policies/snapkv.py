"""SnapKV: per layer and KV head, the most attended prefix entries plus the window (docs/algorithms.md section 6)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import ops
from .base import (EvictionPolicy, LayerView, check_kernel, check_pooling, check_positive_int, check_window_below,
                   fill_unevicted, sort_keep)


PER = ("kv_head", "query_head")


@dataclass
class SnapKV(EvictionPolicy):
    """SnapKV (Li et al., arXiv 2404.14469): per layer and KV head, at most `budget` entries.

    The top `budget - window` prefix entries by the group's summed window scores plus the
    window, per KV head (as the ASL and FastKV code do). `per="query_head"` is SnapKV's own
    code: K/V repeated to the query heads first, each query head keeps its own `budget`
    entries, and the cache holds H heads (H/G times the memory of a GQA model).
    docs/algorithms.md section 6.
    """

    budget: int = 2048  # KV entries per cached head per layer, window included
    window: int = 32
    kernel: int = 7
    pooling: str = "avg"
    per: str = "kv_head"  # or "query_head"

    def _check(self) -> None:
        check_positive_int("budget", self.budget)
        check_positive_int("window", self.window)
        check_window_below(self.window, "budget", self.budget)
        check_kernel(self.kernel)
        check_pooling(self.pooling)
        if self.per not in PER:
            raise ValueError(f"per must be one of {PER}, got {self.per!r}")

    def keep(self, layer: int, view: LayerView) -> torch.Tensor | None:
        """No host read: whether any sequence evicts is known from the width (the longest alive)."""
        evict = view.alive > self.budget
        heads = view.queries.shape[1] if self.per == "query_head" else view.keys.shape[1]
        if view.width <= self.budget:  # nobody evicts; per query head every layer still holds H heads
            if self.per == "kv_head":
                return None
            return fill_unevicted(torch.zeros(len(evict), heads, view.width, dtype=torch.long, device=evict.device),
                                  view, evict)
        if self.per == "query_head":  # the op with the keys repeated to the query heads: a score row per query head
            keys = view.keys.repeat_interleave(heads // view.keys.shape[1], dim=1)
            scores = ops.window_scores(view.queries, keys, view.valid, self.window, self.kernel, self.pooling)
        else:
            scores = view.window_scores(self.window, self.kernel, self.pooling)  # [B, G, m]
        top = ops.stable_descending_order(scores)[..., : self.budget - self.window]  # ties to the lower column
        window = torch.arange(view.width - self.window, view.width, device=scores.device).expand(*top.shape[:2], -1)
        return fill_unevicted(sort_keep(torch.cat([top, window], -1)), view, evict)
