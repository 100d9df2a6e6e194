"""SnapKV: per layer and KV head, the most attended prefix entries plus the window (docs/algorithms.md section 6)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import ops
from .base import (EvictionPolicy, LayerView, check_kernel, check_pooling, check_positive_int, check_window_below,
                   fill_unevicted, top_prefix)


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
        alive = view.alive
        evict = alive > self.budget
        per_query_head = self.per == "query_head"
        if not bool(evict.any()):  # per query head, every layer must still hold H heads
            none = torch.zeros(len(alive), view.queries.shape[1], 0, dtype=torch.long, device=alive.device)
            return fill_unevicted(none, view, evict) if per_query_head else None
        if per_query_head:  # the op with the keys repeated to the query heads: one score row per query head
            keys = view.keys.repeat_interleave(view.queries.shape[1] // view.keys.shape[1], dim=1)
            scores = ops.window_scores(view.queries, keys, view.valid, self.window, self.kernel, self.pooling)
        else:
            scores = view.window_scores(self.window, self.kernel, self.pooling)  # [B, G, m]
        counts = torch.where(evict, self.budget - self.window, 0)[:, None].expand(-1, scores.shape[1])
        keep = view.with_window(top_prefix(scores, counts).flatten(0, 1), self.window)
        keep = keep.view(*scores.shape[:2], -1)
        return fill_unevicted(keep, view, evict)


