"""ThinK (Xu et al., arXiv 2407.21018; kvpress's ThinKPress): compress the keys' channels, not
the sequence: per layer and KV head, the key channels that matter least to the latest queries
are zeroed in the stored cache. docs/algorithms.md section 19."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import ops
from .base import EvictionPolicy, LayerView, PrefillInfo, check_positive_int, is_number


@dataclass
class ThinK(EvictionPolicy):
    """Per KV head, channel c scores mean_t q_t[c]^2 (the last `window` queries, post-RoPE, averaged
    over the head's query group) times mean_j k_j[c]^2 (the stored keys); the
    `int(d * key_channel_ratio)` lowest are zeroed in the stored keys (ties to the lower channel).
    As kvpress does it, the shape stays, so nothing is saved in memory: what it measures is the
    answer with those channels gone. `scorer`: an eviction that chooses the entries first
    (kvpress's `ComposedPress([scorer, ThinKPress])`); the channels are then scored on what it kept."""

    scorer: EvictionPolicy | None = None
    key_channel_ratio: float = 0.5
    window: int = 32
    sizes_layers = False  # its scorer's budget or ratio sizes the cut

    def _check(self) -> None:
        if self.scorer is not None:
            if not isinstance(self.scorer, EvictionPolicy):
                raise ValueError(f"scorer must be an EvictionPolicy or None, got {type(self.scorer).__name__}")
            self.scorer._check()
        if not is_number(self.key_channel_ratio) or not 0 <= self.key_channel_ratio < 1:
            raise ValueError(f"key_channel_ratio must be in [0, 1) (the share of key channels zeroed), "
                             f"got {self.key_channel_ratio!r}")
        check_positive_int("window", self.window)

    @property
    def budget(self):
        return getattr(self.scorer, "budget", None)

    def begin(self, prefill: PrefillInfo) -> None:
        if self.scorer is not None:
            self.scorer.begin(prefill)

    def per_call(self):
        twin = super().per_call()
        twin.scorer = None if self.scorer is None else self.scorer.per_call()
        return twin

    def keep(self, layer: int, view: LayerView) -> torch.Tensor | None:
        return None if self.scorer is None else self.scorer.keep(layer, view)

    def merge(self, layer: int, view: LayerView, keep: torch.Tensor) -> torch.Tensor | None:
        return None if self.scorer is None else self.scorer.merge(layer, view, keep)

    def key_channels(self, layer: int, view: LayerView, keep: torch.Tensor | None) -> torch.Tensor | None:
        pruned = int(view.keys.shape[-1] * self.key_channel_ratio)
        if pruned == 0:
            return None
        b, g, n, d = view.keys.shape
        h = view.queries.shape[1]
        seen = view.valid[:, None, -self.window:, None].float()  # the latest queries (not padding)
        latest = view.queries[:, :, -self.window:].float() ** 2 * seen
        queries = (latest.sum(2) / seen.sum(2).clamp(min=1)).view(b, g, h // g, d).mean(2)  # [B, G, d]
        stored = view.valid[:, None, :].expand(b, g, n)
        if keep is not None:
            if keep.shape[1] != g:
                raise ValueError("ThinK scores channels per KV head: its scorer must keep per KV head")
            hits = torch.zeros(b, g, n, dtype=torch.int32, device=keep.device)
            stored = hits.scatter_add_(2, keep.clamp(min=0), (keep >= 0).int()).bool() & stored
        keys = (view.keys.float() ** 2 * stored[..., None]).sum(2) / stored.sum(2, keepdim=True).clamp(min=1)
        order = ops.stable_descending_order(-(queries * keys))[..., :pruned]  # the lowest scores first
        return torch.ones(b, g, d, dtype=torch.bool, device=order.device).scatter_(2, order, False)
