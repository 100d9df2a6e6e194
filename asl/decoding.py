"""Eviction during decoding: between two steps, outside the compiled graph, in the same buffers.

An eviction policy with `every > 0` is asked, before every `every`-th step, which slots of
each layer's cache to keep (`EvictionPolicy.during_decode`). The kept slots move to the
front of the layer's static buffers and the layer writes its next token after them, so the
compiled one-token step sees the same shapes and is never traced again; only the per-layer
write slots (a tensor input) change. docs/algorithms.md section 6.
"""
from __future__ import annotations

import torch

from .models.cache import KVCache
from .policies.base import DecodeView, EvictionPolicy


class DecodeEviction:
    """The decode loop's side of a decode-time eviction: slots, positions, query ring, peaks."""

    def __init__(self, policy: EvictionPolicy, cache: KVCache, pre, rope=None):
        self.policy, self.cache, self.rope = policy, cache, rope
        self.prompt_lengths = tuple(alive[0] for alive in pre.alive_tokens)
        self.next = [layer.filled for layer in cache.layers]  # the next write slot of each layer
        self.device = cache.layers[0].k.device
        queries = cache.layers[0].queries
        self.ring = 0 if queries is None else queries.shape[2]
        self.qslot = 0
        self.peak = torch.stack([layer.valid.sum(-1).amax(-1) for layer in cache.layers])  # [L, B]
        self.compactions = 0
        self.after_compaction: dict[int, torch.Tensor] = {}  # step -> [L, B] entries of the fullest head
        self._compacted_at: int | None = None  # the step whose eviction compacted a cache, until it ran
        self._positions = None
        if policy.cache_positions:
            _check_same_count(cache, policy)
            for layer in cache.layers:
                self._renumber(layer, layer.filled)

    def before_step(self, t: int, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Let the policy evict (every `every` steps), then record the positions step t writes.
        Returns the step's write slots [L] and its positions [B] (after the cache's entries,
        when the policy numbers positions within the cache)."""
        if self.policy.every and t % self.policy.every == 0:
            self._evict(t)
        if self.policy.cache_positions:  # every layer holds as many entries (the same rule, the same prompt)
            first = self.cache.layers[0]
            positions = first.valid[:, 0, : self.next[0]].sum(-1)
        for layer, slot in zip(self.cache.layers, self.next):
            layer.positions[:, :, slot] = positions[:, None]
        self._positions = positions
        return torch.tensor(self.next, device=self.device), positions

    def step_inputs(self) -> tuple:
        """The decode step's extra argument: the ring slot its queries go to, if any."""
        return (torch.tensor([self.qslot], device=self.device),) if self.ring else ()

    def after_step(self) -> None:
        """The step wrote one slot per layer (and one query into the ring)."""
        counts = torch.stack([layer.valid.sum(-1).amax(-1) for layer in self.cache.layers])
        self.peak = torch.maximum(self.peak, counts)
        if self._compacted_at is not None:  # the step wrote one entry per head after the compaction
            self.after_compaction[self._compacted_at], self._compacted_at = counts - 1, None
        if self.ring:
            for layer in self.cache.layers:
                layer.query_valid[:, self.qslot] = True
                layer.query_positions[:, self.qslot] = self._positions
            self.qslot = (self.qslot + 1) % self.ring
        self.next = [slot + 1 for slot in self.next]

    def _evict(self, t: int) -> None:
        before = self.compactions
        for i, layer in enumerate(self.cache.layers):
            view = DecodeView(i, layer.k, layer.v, layer.valid, layer.positions, self.next[i], t,
                              *self._queries(layer), prompt_lengths=self.prompt_lengths)
            keep = self.policy.during_decode(i, view)
            if keep is None:
                continue
            _check_keep(keep, layer, self.next[i], self.policy, i)
            merged = self.policy.merge_during_decode(i, view, keep)
            self.next[i] = layer.compact(keep)
            if merged is not None:  # the policy folded what it evicted into the values it kept
                layer.v[:, :, : merged.shape[2]] = merged.to(layer.v.dtype)
            self.compactions += 1
            if self.policy.cache_positions:
                self._renumber(layer, self.next[i])
        if self.compactions > before:
            self._compacted_at = t

    def _renumber(self, layer, length: int) -> None:
        """Positions by place in the cache (0, 1, ... over the `length` slots in use), keys re-rotated."""
        valid, old = layer.valid[:, :, :length], layer.positions[:, :, :length]
        new = (valid.cumsum(-1) - 1).masked_fill(~valid, -1)
        layer.k[:, :, :length] = self.rope.rotate_by(layer.k[:, :, :length], (new - old).masked_fill(~valid, 0))
        old.copy_(new)

    def _queries(self, layer):
        """The ring of latest queries, oldest first."""
        if not self.ring:
            return None, None, None
        shift = -self.qslot
        return (layer.queries.roll(shift, 2), layer.query_valid.roll(shift, 1), layer.query_positions.roll(shift, 1))

    def kv_tokens_after_compaction(self) -> list[dict[int, list[int]]]:
        """[B] of {step: [L] entries of the fullest KV head right after that step's compaction}."""
        steps = {t: counts.T.tolist() for t, counts in self.after_compaction.items()}
        return [{t: rows[b] for t, rows in steps.items()} for b in range(len(self.prompt_lengths))]

    def peak_kv_tokens(self) -> list[list[int]]:
        """[B][L]: the most entries one KV head held at each layer during decoding."""
        return self.peak.T.tolist()


def _check_same_count(cache: KVCache, policy: EvictionPolicy) -> None:
    """Positions numbered within the cache give a new token one position for all layers: the
    number of entries each layer holds, which must then be the same in every layer."""
    counts = torch.stack([layer.valid.sum(-1) for layer in cache.layers])  # [L, B, G]
    if bool((counts != counts[:1, :, :1]).any()):
        per_layer = counts[:, 0, 0].tolist()
        raise ValueError(f"{type(policy).__name__} numbers positions within the cache, which needs every layer and "
                         f"head to hold as many entries, but after the prefill they hold {per_layer} (sequence 0, by "
                         f"layer; the most of its heads: {counts[:, 0].amax(-1).tolist()}): a selection left some "
                         f"layers below the budget, or heads kept different counts. StreamingLLM: positions=\"original\"; "
                         f"or a budget at most the selection's select_tokens")


def _check_keep(keep: torch.Tensor, layer, length: int, policy, index: int) -> None:
    """A keep is [B, G, k] int64 slots in [0, length), increasing, of slots in use, -1 pads last."""
    b, g = layer.valid.shape[:2]
    name = type(policy).__name__
    if keep.dim() != 3 or tuple(keep.shape[:2]) != (b, g) or keep.dtype != torch.long:
        raise ValueError(f"{name}.during_decode at layer {index} must return int64 [B, G, k] = [{b}, {g}, k], "
                         f"got {keep.dtype} {list(keep.shape)}")
    real = keep >= 0
    gaps = keep[..., 1:] - keep[..., :-1]
    unsorted = (real[..., 1:] & (gaps <= 0)) | (~real[..., :-1] & real[..., 1:])
    in_use = layer.valid.gather(2, keep.clamp(min=0, max=length - 1)) & (keep < length)
    if bool(unsorted.any() | (real & ~in_use).any()):
        raise ValueError(f"{name}.during_decode at layer {index}: keep must be, per KV head, increasing slots in use "
                         f"(below {length}), -1 pads at the end")
