"""StreamingLLM: the first `sink` tokens plus the most recent ones (docs/algorithms.md section 6)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import DecodeView, EvictionPolicy, LayerView, check_positive_int, fill_unevicted, keep_from_mask


@dataclass
class StreamingLLM(EvictionPolicy):
    """StreamingLLM (Xiao et al., arXiv 2309.17453): attention sinks plus the most recent tokens.

    At the end of the prefill, and (`rolling`, as the paper runs it) before every decoding
    step, so the cache never holds more than `budget` entries however long the answer.
    `rolling=False` evicts at the prefill only (kvpress's StreamingLLMPress). `positions`:
    `"cache"`, the original's (mit-han-lab/streaming-llm), renumbers the entries by their place
    in the cache while decoding (cached keys re-rotated, new tokens numbered after them), so no
    position ever exceeds the budget; `"original"` keeps each entry's position in the text. The
    default, None, is the original's: "cache" when rolling, else "original" (nothing to
    renumber). docs/algorithms.md section 6.
    """

    budget: int = 2048  # KV entries per KV head per layer, sink included
    sink: int = 4
    rolling: bool = True
    positions: str | None = None  # "cache" or "original"; None: "cache" when rolling (the original's)

    @property
    def every(self) -> int:
        return 1 if self.rolling else 0

    @property
    def cache_positions(self) -> bool:
        return self.positions == "cache" or (self.positions is None and self.rolling)

    def _check(self) -> None:
        check_positive_int("budget", self.budget)
        check_positive_int("sink", self.sink, 0)
        if self.sink >= self.budget:
            raise ValueError(f"sink ({self.sink}) must be smaller than budget ({self.budget})")
        if not isinstance(self.rolling, bool):
            raise ValueError(f"rolling must be True or False, got {self.rolling!r}")
        if self.positions not in (None, "original", "cache"):
            raise ValueError(f'positions must be "original", "cache" or None (the original\'s), got {self.positions!r}')
        if self.positions == "cache" and not self.rolling:
            raise ValueError('positions="cache" renumbers the cache while decoding: it needs rolling=True')

    def keep(self, layer: int, view: LayerView) -> torch.Tensor | None:
        if view.width <= self.budget:  # the longest sequence fits: nobody evicts (no host read)
            return None
        alive, width, g = view.alive, view.width, view.keys.shape[1]
        recent = torch.arange(width - (self.budget - self.sink), width, device=alive.device).expand(len(alive), -1)
        sinks = torch.arange(self.sink, device=alive.device)[None] + (width - alive)[:, None]
        keep = torch.cat([sinks, recent], dim=1)[:, None].expand(-1, g, -1)
        return fill_unevicted(keep, view, alive > self.budget)

    def during_decode(self, layer: int, view: DecodeView) -> torch.Tensor | None:
        """Before a step: where a head holds `budget` entries, drop the oldest after the sinks,
        so the step's new entry brings it back to `budget`."""
        valid = view.valid[:, :, : view.length]
        rank = valid.cumsum(-1)  # 1 = the oldest entry in use
        count = rank[..., -1:]
        if not bool((count >= self.budget).any()):
            return None
        recent = count - rank < self.budget - 1 - self.sink
        return keep_from_mask(valid & ((rank <= self.sink) | recent))
