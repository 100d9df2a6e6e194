"""The full cache: every layer stores every alive token (the baseline)."""
from __future__ import annotations

from dataclasses import dataclass

from .base import EvictionPolicy, LayerView


@dataclass
class Full(EvictionPolicy):
    def keep(self, layer: int, view: LayerView) -> None:
        return None
