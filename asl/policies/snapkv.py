"""SnapKV: per layer and KV head, the most attended prefix entries plus the window (docs/algorithms.md section 6)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import ops
from .base import LayerView, check_kernel, check_pooling, check_positive_int
from .scorer import ScorerEviction


PER = ("kv_head", "query_head")


@dataclass
class SnapKV(ScorerEviction):
    """SnapKV (Li et al., arXiv 2404.14469): per layer and KV head, at most `budget` entries.

    The top `budget - window` prefix entries by the group's summed window scores plus the
    window, per KV head (as the ASL and FastKV code do). `per="query_head"` is SnapKV's own
    code: K/V repeated to the query heads first, each query head keeps its own `budget`
    entries, and the cache holds H heads (H/G times the memory of a GQA model).
    `keep_first_layers=5` is the ASL authors' SnapKV baseline on Llama (their
    `vanilla/modeling_llama.py`: layers 0-4 keep the whole prompt). docs/algorithms.md section 6.
    """

    budget: int = 2048  # KV entries per cached head per layer, window included
    window: int = 32
    kernel: int = 7
    pooling: str = "avg"
    per: str = "kv_head"  # or "query_head"
    keep_first_layers: int = 0  # layers below it store every entry

    def _check(self) -> None:
        super()._check()
        check_positive_int("window", self.window)  # its scores are the window's attention
        check_kernel(self.kernel)
        check_pooling(self.pooling)
        if self.per not in PER:
            raise ValueError(f"per must be one of {PER}, got {self.per!r}")
        check_positive_int("keep_first_layers", self.keep_first_layers, 0)

    def keep(self, layer: int, view: LayerView) -> torch.Tensor | None:
        return None if layer < self.keep_first_layers else super().keep(layer, view)

    def cached_heads(self, view: LayerView) -> int:
        return view.queries.shape[1] if self.per == "query_head" else view.keys.shape[1]

    def score(self, view: LayerView) -> torch.Tensor:
        if self.per == "query_head":  # the op with the keys repeated to the query heads: a score row per query head
            keys = view.keys.repeat_interleave(view.queries.shape[1] // view.keys.shape[1], dim=1)
            return ops.window_scores(view.queries, keys, view.valid, self.window, self.kernel, self.pooling)
        return view.window_scores(self.window, self.kernel, self.pooling)  # [B, G, m], shared with a selection
