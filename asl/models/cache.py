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
    # Kept only for an eviction that acts during decoding (EvictionPolicy.every > 0):
    positions: torch.Tensor | None = None  # [B, G, cap] int64: each slot's position
    queries: torch.Tensor | None = None  # [B, H, q, d] ring of the layer's latest queries
    query_valid: torch.Tensor | None = None  # [B, q]
    query_positions: torch.Tensor | None = None  # [B, q]
    # Kept only for a query-time retrieval (EvictionPolicy.retrieval, asl/retrieval.py):
    sparse: "SparseKeys | None" = None  # noqa: F821 - which stored entries each later query attends to

    @classmethod
    def from_prefill(cls, k, v, valid, extra: int, index: torch.Tensor | None = None,
                     positions: torch.Tensor | None = None, keep: torch.Tensor | None = None) -> "LayerCache":
        """The layer's cache after its prefill: k, v [B, G, n, d], valid, index and positions
        [B, G, n]; only the columns `keep` [B, G or H, k] (-1 pads) when an eviction chose
        (a keep per query head makes the cache hold H heads); room for `extra` tokens.
        `positions` only when the eviction acts during decoding."""
        if keep is not None:
            if keep.shape[1] != k.shape[1]:
                repeat = keep.shape[1] // k.shape[1]
                k, v, valid = (x.repeat_interleave(repeat, dim=1) for x in (k, v, valid))
                index, positions = (None if x is None else x.repeat_interleave(repeat, dim=1) for x in (index, positions))
            safe = keep.clamp(min=0)
            idx = safe[..., None].expand(-1, -1, -1, k.shape[-1])
            k, v, valid = k.gather(2, idx), v.gather(2, idx), (keep >= 0) & valid.gather(2, safe)
            index, positions = (None if x is None else x.gather(2, safe) for x in (index, positions))
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
        if positions is not None:
            cache.positions = torch.full((b, g, n + extra), -1, dtype=torch.long, device=k.device)
            cache.positions[:, :, :n] = positions
        return cache

    def write(self, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        """Store new entries k, v [B, G, m, d] at `slots` [m] of every KV head (in place, so a
        compiled step writes into the same buffers): a decode step's token (m = 1), or the
        question asked over a compressed context with its `valid` [B, m]. A cache per query
        head (SnapKV per="query_head") gets each KV head repeated over its group."""
        if self.k.shape[1] != k.shape[1]:
            k, v = (x.repeat_interleave(self.k.shape[1] // x.shape[1], dim=1) for x in (k, v))
        self.k.index_copy_(2, slots, k)
        self.v.index_copy_(2, slots, v)
        if valid is None:
            self.valid.index_fill_(2, slots, True)
        else:
            self.valid.index_copy_(2, slots, valid[:, None].expand(-1, self.valid.shape[1], -1))

    def write_query(self, slot: torch.Tensor, q: torch.Tensor) -> None:
        """Put a decode step's queries q [B, H, 1, d] into the ring at `slot` [1]."""
        self.queries.index_copy_(2, slot, q)

    def keep_queries(self, q: torch.Tensor, valid: torch.Tensor, positions: torch.Tensor, count: int) -> None:
        """Start the ring of latest queries with the prefill's last `count` (q [B, H, n, d])."""
        b, h, n, d = q.shape
        take = min(count, n)
        self.queries = q.new_zeros(b, h, count, d)
        self.query_valid = torch.zeros(b, count, dtype=torch.bool, device=q.device)
        self.query_positions = torch.zeros(b, count, dtype=torch.long, device=q.device)
        self.queries[:, :, count - take:] = q[:, :, n - take:]
        self.query_valid[:, count - take:] = valid[:, n - take:]
        self.query_positions[:, count - take:] = positions[:, n - take:]

    def compact(self, keep: torch.Tensor) -> int:
        """Move the slots `keep` [B, G, k] (sorted, -1 pads) to the front, in place (the static
        buffers stay, so a compiled decode step is not traced again). Returns k, the next slot."""
        b, g, k = keep.shape
        safe = keep.clamp(min=0)
        idx = safe[..., None].expand(-1, -1, -1, self.k.shape[-1])
        kept_k, kept_v = self.k.gather(2, idx), self.v.gather(2, idx)
        kept_valid = self.valid.gather(2, safe) & (keep >= 0)
        kept_pos = self.positions.gather(2, safe)
        self.k[:, :, :k], self.v[:, :, :k] = kept_k, kept_v
        self.valid.fill_(False)
        self.valid[:, :, :k] = kept_valid
        self.positions.fill_(-1)
        self.positions[:, :, :k] = kept_pos.masked_fill(~kept_valid, -1)
        return k

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
        return torch.stack([layer.kv_tokens().to(self.filled.device) for layer in self.layers])

    @property
    def entry_bytes(self) -> int:
        """Bytes of one stored entry of one KV head: its key and its value."""
        k = self.layers[0].k
        return 2 * k.shape[-1] * k.element_size()

    def kv_bytes(self) -> int:
        """Bytes of the stored prefill K and V (docs/algorithms.md section 8), all sequences."""
        return int(self.kv_tokens().sum().item()) * self.entry_bytes

    def write_slots(self, step: torch.Tensor) -> torch.Tensor:
        """Slot of generated token `step` in each layer: [L] int64 (no decode-time eviction)."""
        return self.filled + step
