"""FastKV's token-selective propagation: select once, at a fixed layer (docs/algorithms.md section 4)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import LayerView, PrefillInfo, SelectedShares, Selection, check_global_layer, check_kernel, check_layer, check_pooling, check_positive_int, is_number
from .scorer import ScorerSelection


@dataclass
class FastKV(ScorerSelection):
    """FastKV's token-selective propagation (Jo et al., arXiv 2502.01068), selection only.

    At `layer`, keeps the top `select_tokens - window` prefix tokens plus the window. The
    defaults are FastKV's own (window 8, max pooling); the ASL paper's comparison scores like
    ASL (window 32, avg, kernel 7). Pair it with SnapKV for FastKV's own regime.
    docs/algorithms.md section 4 (and 10).
    """

    layer: int = 15  # FastKV's setting for 32-layer models
    select_tokens: int | None = 2048  # k, window included
    rate: float | None = None  # or k as a fraction of the prompt length
    window: int = 8
    kernel: int = 7
    pooling: str = "max"
    local_layers: bool = False  # allow a sliding-window layer as `layer` (docs/algorithms.md section 20)

    def _check(self) -> None:
        check_positive_int("layer", self.layer, 0)
        if (self.select_tokens is None) == (self.rate is None):
            raise ValueError("give exactly one of select_tokens (tokens kept, window included) or rate (in (0, 1])")
        if self.select_tokens is not None:
            super()._check()
        else:
            check_positive_int("window", self.window)
            if not is_number(self.rate) or not 0 < self.rate <= 1:
                raise ValueError(f"rate must be in (0, 1], got {self.rate!r}")
        check_kernel(self.kernel)
        check_pooling(self.pooling)

    def begin(self, prefill: PrefillInfo) -> None:
        check_layer("layer", self.layer, prefill.num_layers)
        check_global_layer("layer", self.layer, prefill, self.local_layers)
        super().begin(prefill)
        self._shares = prefill.shared(SelectedShares).by_sequence

    def after_layer(self, layer: int, view: LayerView) -> Selection | None:
        chosen = super().after_layer(layer, view)
        if chosen is not None and self.rate is not None:  # for a proportional KV after it (FastKV's tsp_rate)
            self._shares.update(dict.fromkeys(chosen.active.nonzero().flatten().tolist(), self.rate))
        return chosen

    def tokens_for(self, prompt_tokens: int) -> int:
        """k for a prompt of this length (window included)."""
        if self.select_tokens is not None:
            return self.select_tokens
        return max(self.window + 1, int(self.rate * prompt_tokens))  # FastKV: int(q_len * tsp_rate)

    def selects_at(self, layer: int, view: LayerView) -> bool:
        return layer == self.layer

    def prefix_counts(self, view: LayerView) -> torch.Tensor:
        return torch.tensor([self.tokens_for(int(a)) - self.window for a in view.alive.tolist()],
                            device=view.alive.device)

    def score(self, view: LayerView) -> torch.Tensor:
        return view.window_scores(self.window, self.kernel, self.pooling)
