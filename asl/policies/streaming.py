"""StreamingLLM: the first `sink` tokens plus the most recent ones (docs/algorithms.md section 6)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import EvictionPolicy, LayerView, check_positive_int, fill_unevicted


@dataclass
class StreamingLLM(EvictionPolicy):
    """StreamingLLM (Xiao et al., arXiv 2309.17453): attention sinks plus the most recent tokens.

    Evicts at the prefill only (decoding appends), at original positions; the original keeps
    rolling during decoding, with positions inside the cache. docs/algorithms.md section 6.
    """

    budget: int = 2048  # KV entries per KV head per layer, sink included
    sink: int = 4

    def _check(self) -> None:
        check_positive_int("budget", self.budget)
        check_positive_int("sink", self.sink, 0)
        if self.sink >= self.budget:
            raise ValueError(f"sink ({self.sink}) must be smaller than budget ({self.budget})")

    def keep(self, layer: int, view: LayerView) -> torch.Tensor | None:
        alive = view.alive
        evict = alive > self.budget
        if not bool(evict.any()):
            return None
        width, g = view.width, view.keys.shape[1]
        recent = torch.arange(width - (self.budget - self.sink), width, device=alive.device)
        rows = [torch.cat([torch.arange(self.sink, device=alive.device) + (width - a), recent])
                for a in alive.tolist()]
        keep = torch.stack(rows)[:, None].expand(-1, g, -1)
        return fill_unevicted(keep, view, evict)
