"""Budgets that are not one count for every layer (docs/algorithms.md section 19): a compression
ratio per layer (kvpress's PerLayerCompressionPress), and eviction by a score threshold, the
dense-prefill form of DMS (kvpress's DMSPress), where how much is kept depends on the input."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from .allocate import ScorerWrapper
from .base import DecodeView, EvictionPolicy, LayerView, PrefillInfo, check_positive_int, is_number, keep_from_mask
from .scorer import ScorerEviction, prefix_scores


@dataclass
class PerLayerRatio(ScorerWrapper, EvictionPolicy):
    """kvpress's PerLayerCompressionPress: layer l keeps `max(1, int(n * (1 - ratios[l])))` of
    its n entries by the scorer (window included), one ratio per layer of the model (checked
    when the prefill begins). The scorer's own budget or ratio is not used."""

    scorer: ScorerEviction
    ratios: tuple = ()

    def _check(self) -> None:
        super()._check()
        if not isinstance(self.ratios, (tuple, list)) or not self.ratios or not all(
                is_number(r) and 0 <= r < 1 for r in self.ratios):
            raise ValueError(f"ratios must be a non-empty tuple of numbers in [0, 1) (the share each layer evicts), "
                             f"got {self.ratios!r}")

    @property
    def budget(self) -> None:  # no count: a share of each layer
        return None

    def begin(self, prefill: PrefillInfo) -> None:
        super().begin(prefill)
        if len(self.ratios) != prefill.num_layers:
            raise ValueError(f"ratios has {len(self.ratios)} values; the model has {prefill.num_layers} layers")

    def keep(self, layer: int, view: LayerView) -> torch.Tensor | None:
        ratio = self.ratios[layer]
        return self.scorer.keep_within(view, [max(1, int(n * (1 - ratio))) for n in view.alive.tolist()])


@dataclass
class ThresholdEviction(ScorerWrapper, EvictionPolicy):
    """DMS with a dense prefill (Łańcucki et al., arXiv 2506.05345; kvpress's DMSPress, without
    the paper's trained evictors): per layer and head, every entry older than the last
    `sliding_window` whose score is below `threshold` is evicted, so the cache's size follows
    the input (and differs per head). The scorer's window is kept too; its budget and ratio
    are not used. `decoding=True` (kvpress's) goes on while generating: each new token is
    scored when it arrives, alone (the scorer with no window, its own query), and evicted if
    its score is below the threshold when it leaves the sliding window; the prompt's last
    `sliding_window` tokens are judged the same way, by their prefill scores (the scorer's
    window: never)."""

    scorer: ScorerEviction
    threshold: float = 0.0
    sliding_window: int = 128
    decoding: bool = False
    _pending: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def _check(self) -> None:
        super()._check()
        if not is_number(self.threshold):
            raise ValueError(f"threshold must be a number, got {self.threshold!r}")
        check_positive_int("sliding_window", self.sliding_window, 0)
        if not isinstance(self.decoding, bool):
            raise ValueError(f"decoding must be True or False, got {self.decoding!r}")
        if self.decoding and not getattr(type(self.scorer), "decodes", True):
            raise ValueError(f"ThresholdEviction(decoding=True) cannot score a new token with "
                             f"{type(self.scorer).__name__}: it reads more of the model than the token's key, value "
                             "and query")
        if self.decoding:
            self._alone_scorer()  # a scorer that cannot score a token alone says so now

    @property
    def budget(self) -> None:  # no count: what scores above the threshold
        return None

    @property
    def every(self) -> int:
        return 1 if self.decoding else 0

    def recent_queries(self, prompt_length: int, new_tokens: int = 0) -> int:
        return 1 if self.decoding else 0  # the new token's own query, to score it

    def begin(self, prefill: PrefillInfo) -> None:
        super().begin(prefill)
        self._pending = {}  # layer -> (scores [B, heads, w], positions [B, w]) of the tokens in the sliding window
        if self.decoding:
            self._alone = self._alone_scorer()
            self._alone.begin(prefill)

    def _alone_scorer(self) -> ScorerEviction:
        """The scorer with no window, to score one new token by itself."""
        try:
            return replace(self.scorer, window=0)
        except ValueError as e:
            raise ValueError(f"ThresholdEviction(decoding=True) scores each new token alone, with its scorer's window "
                             f"0, which {type(self.scorer).__name__} refuses: {e}") from None

    def keep(self, layer: int, view: LayerView) -> torch.Tensor | None:
        heads, m = self.scorer.cached_heads(view), view.width - self.scorer.window
        scores = prefix_scores(self.scorer, self.scorer.score(view), view, heads)  # [B, heads, m], -inf on padding
        protected = torch.arange(m, device=scores.device) >= view.width - self.sliding_window
        stays = (scores >= self.threshold) | protected
        stays = torch.cat([stays, torch.ones_like(stays[..., :1]).expand(-1, -1, self.scorer.window)], dim=-1)
        stays &= view.valid[:, None]
        if self.decoding:  # the window's tokens are judged as they leave it; the scorer's window never
            w = min(self.sliding_window, view.width)
            whole = torch.nn.functional.pad(scores.float(), (0, self.scorer.window), value=float("inf"))
            self._pending[layer] = (whole[..., view.width - w:], view.positions[:, view.width - w:]
                                    .masked_fill(~view.valid[:, view.width - w:], -1))
        if bool(stays.sum(-1).eq(view.alive[:, None]).all()):
            return None
        return keep_from_mask(stays)

    def during_decode(self, layer: int, view: DecodeView) -> torch.Tensor | None:
        if not self.decoding or view.step == 0:  # step 0: no token generated yet
            return None
        if layer not in self._pending:
            raise ValueError("ThresholdEviction(decoding=True) judges the prompt's last tokens by their prefill scores: "
                             "it must evict at the prefill too (not after a cache it did not build)")
        scores, positions = self._pending[layer]
        newest = view.length - 1  # the slot the last step wrote, in every head
        scores = torch.cat([scores, self._score_newest(layer, view, newest)], dim=-1)
        positions = torch.cat([positions, view.positions[:, 0, newest, None]], dim=-1)
        if scores.shape[-1] <= self.sliding_window:
            self._pending[layer] = (scores, positions)
            return None
        leaving, left_at = scores[..., 0], positions[:, 0]  # [B, heads], [B]
        self._pending[layer] = (scores[..., 1:], positions[:, 1:])
        dropped = (leaving < self.threshold) & (left_at >= 0)[:, None]
        if not bool(dropped.any()):
            return None
        in_use = view.valid[:, :, : view.length]
        hit = (view.positions[:, :, : view.length] == left_at[:, None, None]) & dropped[..., None]
        return keep_from_mask(in_use & ~hit)

    def _score_newest(self, layer: int, view: DecodeView, slot: int) -> torch.Tensor:
        """The newest entry's score [B, heads, 1], as kvpress scores a decoding step's token: alone."""
        if not bool((view.query_positions[:, -1] == view.positions[:, 0, slot]).all()):
            raise ValueError(f"ThresholdEviction: layer {layer}'s latest query is not its newest entry's")
        one = lambda x: x[:, :, slot:slot + 1]  # noqa: E731
        at = view.positions[:, 0, slot:slot + 1]
        alone = LayerView(layer, view.queries[:, :, -1:], one(view.keys), one(view.values), at, at,
                          torch.ones_like(at, dtype=torch.bool))
        return prefix_scores(self._alone, self._alone.score(alone), alone, view.keys.shape[1]).float()
