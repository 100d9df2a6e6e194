"""CUR leverage scores (kvpress's CURPress; docs/algorithms.md section 19)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import LayerView, check_positive_int
from .scorer import ScorerEviction

LEVERAGES = ("key", "value", "kv_avg", "kv_product")


@dataclass
class CUR(ScorerEviction):
    """CurDKV (Sengupta et al., arXiv 2509.15038; kvpress's CURPress): an entry's leverage is its
    key's squared L2 norm (and its value's), each normalised within consecutive blocks of
    `local_window_size` entries from the sequence's first (`use_local_approximation`), combined
    by `leverage_type` (`kv_product` multiplies them), and the first `num_sinks` entries score
    the most. kvpress's random-projection option draws an unseeded matrix at every call, so
    two runs differ; it is left out. kvpress's is `window=0` with `ratio`."""

    num_sinks: int = 4
    leverage_type: str = "kv_product"
    use_local_approximation: bool = True
    local_window_size: int = 16

    def _check(self) -> None:
        super()._check()
        check_positive_int("num_sinks", self.num_sinks, 0)
        check_positive_int("local_window_size", self.local_window_size)
        if self.leverage_type not in LEVERAGES:
            raise ValueError(f"leverage_type must be one of {LEVERAGES}, got {self.leverage_type!r}")

    def score(self, view: LayerView) -> torch.Tensor:
        b, g, n, _ = view.keys.shape
        scores = torch.zeros(b, g, n, device=view.keys.device)
        for i, alive in enumerate(view.alive.tolist()):
            cols = slice(n - alive, n)
            k2 = view.keys[i, :, cols].float().square().sum(-1)  # [G, alive]
            v2 = view.values[i, :, cols].float().square().sum(-1)
            if self.use_local_approximation:
                k2, v2 = self._local(k2), self._local(v2)
            own = {"key": k2, "value": v2, "kv_avg": (k2 + v2) / 2, "kv_product": k2 * v2}[self.leverage_type]
            own = own / own.sum(-1, keepdim=True)
            own[:, : self.num_sinks] = 1.0
            scores[i, :, cols] = own
        return scores[:, :, : n - self.window]

    def _local(self, x: torch.Tensor) -> torch.Tensor:
        """x [G, n] divided by its sum over each block of `local_window_size` (the last block short)."""
        w, n = self.local_window_size, x.shape[-1]
        blocks = torch.nn.functional.pad(x, (0, (w - n % w) % w)).view(x.shape[0], -1, w)
        return (blocks / blocks.sum(-1, keepdim=True)).reshape(x.shape[0], -1)[:, :n]
