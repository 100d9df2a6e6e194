"""KV cache with its own length per layer and its own entries per KV head.

Each layer owns static buffers `[B, G, kept + max_new_tokens, d]` plus a `valid` mask
`[B, G, cap]`: the kept prefill entries come first (per head, so SnapKV-style eviction can
keep different tokens, or different counts, in each head; a sequence of a batch that kept
fewer entries has masked slots), then one slot per generated token. Static shapes are what
let the decode step be compiled once (gpt-fast style).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LayerCache:
    k: torch.Tensor  # [B, G, cap, d]
    v: torch.Tensor
    valid: torch.Tensor  # [B, G, cap] bool
    filled: int  # slots taken by the prefill; generated token t goes to slot filled + t
    index: torch.Tensor | None = None  # [B, G, filled] int32: the prompt index of each prefill entry

    @classmethod
    def from_prefill(cls, k, v, valid, extra: int, index: torch.Tensor | None = None) -> "LayerCache":
        """k, v [B, G, n, d], valid and index [B, G, n] (already evicted); room for `extra` tokens."""
        b, g, n, d = k.shape
        cache = cls(
            k=k.new_zeros(b, g, n + extra, d),
            v=v.new_zeros(b, g, n + extra, d),
            valid=torch.zeros(b, g, n + extra, dtype=torch.bool, device=k.device),
            filled=n,
            index=None if index is None else index.to(torch.int32),
        )
        cache.k[:, :, :n] = k
        cache.v[:, :, :n] = v
        cache.valid[:, :, :n] = valid
        return cache

    def kv_tokens(self) -> torch.Tensor:
        """Entries stored by the prefill, per sequence and KV head: [B, G]."""
        return self.valid[:, :, : self.filled].sum(-1)


class KVCache:
    def __init__(self, layers: list[LayerCache]):
        self.layers = layers
        self.filled = torch.tensor([layer.filled for layer in layers], device=layers[0].k.device)

    def __len__(self) -> int:
        return len(self.layers)

    def kv_tokens(self) -> torch.Tensor:
        """[L, B, G] entries per layer, sequence and KV head after prefill."""
        return torch.stack([layer.kv_tokens() for layer in self.layers])

    @property
    def entry_bytes(self) -> int:
        """Bytes of one stored entry of one KV head: its key and its value."""
        k = self.layers[0].k
        return 2 * k.shape[-1] * k.element_size()

    def kv_bytes(self) -> int:
        """Bytes of the stored prefill K and V (docs/algorithms.md section 8), all sequences."""
        return int(self.kv_tokens().sum().item()) * self.entry_bytes

    def write_slots(self, step: torch.Tensor) -> torch.Tensor:
        """Slot of generated token `step` in each layer: [L] int64."""
        return self.filled + step
