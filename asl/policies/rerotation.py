"""Key re-rotation (kvpress's KeyRerotationPress; docs/algorithms.md section 19): after the
scorer's eviction, the kept keys are turned to the positions 0, 1, ... of their place in the
cache, and what comes after (the question, the answer) is numbered from there, so no gap is
left where the evicted tokens were (transformers' SinkCache, Finch)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .allocate import ScorerWrapper
from .base import EvictionPolicy, LayerView
from .scorer import ScorerEviction


@dataclass
class KeyRerotation(ScorerWrapper, EvictionPolicy):
    """The scorer's eviction, then positions renumbered by place in the cache: each kept key
    re-rotated by RoPE from its position in the text to its rank among the kept, and the next
    token (the question after `asl.compress`, or the first generated one) at the number of
    entries kept. Every layer and head must keep as many entries (a ratio or a budget does;
    an allocator or a selection before it does not, and is refused by name). Its budget and
    ratio are the scorer's."""

    scorer: ScorerEviction
    sizes_layers = False  # a ratio on the scorer is kvpress's way of sizing it

    @property
    def cache_positions(self) -> bool:
        return True

    def keep(self, layer: int, view: LayerView) -> torch.Tensor | None:
        return self.scorer.keep(layer, view)
