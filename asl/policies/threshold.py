"""Budgets that are not one count for every layer (docs/algorithms.md section 19): a compression
ratio per layer (kvpress's PerLayerCompressionPress), and eviction by a score threshold, the
dense-prefill form of DMS (kvpress's DMSPress), where how much is kept depends on the input."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .allocate import ScorerWrapper
from .base import EvictionPolicy, LayerView, PrefillInfo, check_positive_int, is_number, keep_from_mask
from .scorer import ScorerEviction, prefix_scores


@dataclass
class PerLayerRatio(ScorerWrapper, EvictionPolicy):
    """kvpress's PerLayerCompressionPress: layer l keeps `max(1, int(n * (1 - ratios[l])))` of
    its n entries by the scorer (window included), one ratio per layer of the model (checked
    when the prefill begins). The scorer's own budget or ratio is not used."""

    scorer: ScorerEviction
    ratios: tuple = ()

    def _check(self) -> None:
        super()._check()
        if not isinstance(self.ratios, (tuple, list)) or not self.ratios or not all(
                is_number(r) and 0 <= r < 1 for r in self.ratios):
            raise ValueError(f"ratios must be a non-empty tuple of numbers in [0, 1) (the share each layer evicts), "
                             f"got {self.ratios!r}")

    @property
    def budget(self) -> None:  # no count: a share of each layer
        return None

    def begin(self, prefill: PrefillInfo) -> None:
        super().begin(prefill)
        if len(self.ratios) != prefill.num_layers:
            raise ValueError(f"ratios has {len(self.ratios)} values; the model has {prefill.num_layers} layers")

    def keep(self, layer: int, view: LayerView) -> torch.Tensor | None:
        ratio = self.ratios[layer]
        return self.scorer.keep_within(view, [max(1, int(n * (1 - ratio))) for n in view.alive.tolist()])


@dataclass
class ThresholdEviction(ScorerWrapper, EvictionPolicy):
    """DMS with a dense prefill (Łańcucki et al., arXiv 2506.05345; kvpress's DMSPress, without
    the paper's trained evictors): per layer and head, every entry older than the last
    `sliding_window` whose score is below `threshold` is evicted, so the cache's size follows
    the input (and differs per head). The scorer's window is kept too; its budget and ratio
    are not used. kvpress's `decoding=True` (thresholding each token as it leaves the window
    while generating) is not included."""

    scorer: ScorerEviction
    threshold: float = 0.0
    sliding_window: int = 128

    def _check(self) -> None:
        super()._check()
        if not is_number(self.threshold):
            raise ValueError(f"threshold must be a number, got {self.threshold!r}")
        check_positive_int("sliding_window", self.sliding_window, 0)

    @property
    def budget(self) -> None:  # no count: what scores above the threshold
        return None

    def keep(self, layer: int, view: LayerView) -> torch.Tensor | None:
        heads, m = self.scorer.cached_heads(view), view.width - self.scorer.window
        scores = prefix_scores(self.scorer, self.scorer.score(view), view, heads)  # [B, heads, m], -inf on padding
        protected = torch.arange(m, device=scores.device) >= view.width - self.sliding_window
        stays = (scores >= self.threshold) | protected
        stays = torch.cat([stays, torch.ones_like(stays[..., :1]).expand(-1, -1, self.scorer.window)], dim=-1)
        stays &= view.valid[:, None]
        if bool(stays.sum(-1).eq(view.alive[:, None]).all()):
            return None
        return keep_from_mask(stays)
