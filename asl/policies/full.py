"""The full cache: every layer stores every alive token (the baseline; docs/algorithms.md section 6)."""
from __future__ import annotations

from dataclasses import dataclass

from .base import EvictionPolicy, LayerView


@dataclass
class Full(EvictionPolicy):
    """The full cache, no eviction: the baseline every method is compared with (docs/algorithms.md section 6)."""

    def keep(self, layer: int, view: LayerView) -> None:
        return None
