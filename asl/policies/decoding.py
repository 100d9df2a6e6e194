"""Eviction while decoding for any scorer (kvpress's DecodingPress and PrefillDecodingPress;
docs/algorithms.md section 19): every `every` generated tokens, each layer whose heads hold
more than `budget` entries is cut back to `budget` by the scorer, as if its cache were a
prompt; with `prefill=True` the scorer also evicts at the end of the prefill, at its own size."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .allocate import ScorerWrapper
from .base import DecodeView, EvictionPolicy, LayerView, PrefillInfo, check_positive_int, keep_from_mask, sort_keep
from .scorer import ScorerEviction, check_ratio


@dataclass
class DecodingEviction(ScorerWrapper, EvictionPolicy):
    """The scorer, run over a layer's cache every `every` decoding steps (the first after `every`
    tokens, kvpress's count): a layer whose heads hold more than `budget` entries keeps the
    scorer's best `budget` (its window of latest tokens included), per sequence. The scorer
    reads the cache as a prompt of its entries in the order they came, and the latest `window`
    queries (a ring the decode loop keeps); so a scorer that reads every query's attention or
    the queries' statistics (ObservedAttention, ExpectedAttention) or the model's weights
    (CriticalKV) is refused: `decodes = False` on its class. `prefill=True` is kvpress's
    PrefillDecodingPress with the same scorer: it also evicts at the prefill, at its own budget
    or ratio; else the prefill keeps everything (DecodingPress). `ratio` is kvpress's
    CompressionRatioDecodingPress: each cut keeps `max(1, int(seen * (1 - ratio)))` entries of a
    sequence that has seen `seen` tokens (prompt and generated), instead of `budget`. Every head
    of a sequence must hold as many entries (a scorer's per-head keep does; an allocator's does not)."""

    scorer: ScorerEviction
    every: int = 512
    budget: int = 2048
    prefill: bool = False
    ratio: float | None = None  # a share of the tokens seen instead of `budget` (kvpress's target_compression_ratio)
    sizes_layers = False  # the scorer's ratio sizes the prefill (prefill=True); decoding cuts to `budget`
    _heads: int = field(default=0, init=False, repr=False, compare=False)

    def _check(self) -> None:
        super()._check()
        check_positive_int("every", self.every)
        check_positive_int("budget", self.budget)
        check_ratio(self.ratio)
        if self.ratio is None and self.budget <= self.scorer.window:
            raise ValueError(f"budget ({self.budget}) must be larger than the scorer's window ({self.scorer.window})")
        if not getattr(type(self.scorer), "decodes", True):
            raise ValueError(f"DecodingEviction cannot run {type(self.scorer).__name__} over a decoding cache: it reads "
                             "more of the model than the cache and the latest queries hold")
        if not isinstance(self.prefill, bool):
            raise ValueError(f"prefill must be True or False, got {self.prefill!r}")

    def begin(self, prefill: PrefillInfo) -> None:
        super().begin(prefill)
        self._heads = prefill.num_heads

    @property
    def prefill_budget(self) -> int | None:
        """Entries per head the prefill keeps at most (None: no count; everything, or a ratio)."""
        return self.scorer.budget if self.prefill and self.scorer.ratio is None else None

    def keep(self, layer: int, view: LayerView) -> torch.Tensor | None:
        return self.scorer.keep(layer, view) if self.prefill else None

    def recent_queries(self, prompt_length: int, new_tokens: int = 0) -> int:
        return self.scorer.window

    def during_decode(self, layer: int, view: DecodeView) -> torch.Tensor | None:
        if view.step == 0:  # kvpress counts `every` generated tokens before its first compression
            return None
        valid = view.valid[:, :, : view.length]
        counts = valid.sum(-1)  # [B, G]
        targets = self.budget if self.ratio is None else \
            [max(1, int((p + view.step) * (1 - self.ratio))) for p in view.prompt_lengths]
        limit = targets if self.ratio is None else torch.tensor(targets, device=counts.device)[:, None]
        if not bool((counts > limit).any()):
            return None
        if bool((counts != counts[:, :1]).any()):
            raise ValueError(f"DecodingEviction: the heads of layer {layer} hold {counts[0].tolist()} entries (sequence "
                             "0); the scorer reads them as one prompt, so every head must hold as many")
        slots = left_padded(keep_from_mask(valid), counts)  # [B, G, n] the slots in use, as a left-padded prompt
        prompt = self._as_prompt(layer, view, slots)
        keep = self.scorer.keep_within(prompt, targets)
        if keep is None:
            return None
        chosen = torch.where(keep >= 0, slots.gather(-1, keep.clamp(min=0)), -1)
        return sort_keep(chosen)

    def _as_prompt(self, layer: int, view: DecodeView, slots: torch.Tensor) -> LayerView:
        return cache_as_prompt(layer, view, slots, self._heads, self.scorer.window, type(self).__name__)

def left_padded(order: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """[B, G, n] slots in use (first, -1 pads last) moved right, so each row's pads come first."""
    n = order.shape[-1]
    source = torch.arange(n, device=order.device) - (n - counts)[..., None]
    return torch.where(source >= 0, order.gather(-1, source.clamp(min=0)), -1)


def cache_as_prompt(layer: int, view: DecodeView, slots: torch.Tensor, heads: int, window: int, who: str) -> LayerView:
    """A layer's decoding cache as a scorer's LayerView: keys and values per head at `slots`
    [B, G, n] (left-padded, in the order their tokens came), the latest `window` queries over
    the last columns (asl.DecodingEviction, asl.CAMDecoding)."""
    b, g, n = slots.shape
    safe = slots.clamp(min=0)
    gather = lambda x: x.gather(2, safe[..., None].expand(-1, -1, -1, x.shape[-1]))  # noqa: E731
    keys, values = gather(view.keys), gather(view.values)
    real = slots[:, 0] >= 0  # [B, n]
    positions = view.positions.gather(2, safe)[:, 0].masked_fill(~real, 0)
    queries = keys.new_zeros(b, heads, n, keys.shape[-1])
    window = min(window, n)
    if window:
        latest = view.queries[:, :, -window:]
        seen = view.query_valid[:, -window:]
        if bool(((view.query_positions[:, -window:] != positions[:, -window:]) & seen).any()):
            raise ValueError(f"{who}: layer {layer}'s latest queries are not those of its latest "
                             "entries (an eviction before it dropped one of the scorer's window)")
        queries[:, :, -window:] = latest * seen[:, None, :, None]
    return LayerView(layer, queries, keys, values, positions, positions, real)
