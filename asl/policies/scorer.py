"""Scorers: policies that only say how much each prefix token matters (kvpress's ScorerPress).

A scorer implements `score(view)`; these base classes do the rest, the same way for every
method: padding masked, a stable top-k (ties to the lower column, so the choice is the same
on every run and device), the last `window` tokens always kept, columns sorted with `-1`
pads, and sequences that fit their budget kept whole. `score` returns `[B, heads, m]` or
`[B, m]` over the prefix (`m = view.width - window`), higher kept, where heads are the KV
heads, or the query heads (summed per KV group unless the cache holds every query head).
"""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import torch

from .. import ops
from .base import (EvictionPolicy, LayerView, Selection, SelectionPolicy, check_positive_int, check_window_below,
                   fill_unevicted, is_number, top_prefix)


def prefix_scores(policy, scores: torch.Tensor, view: LayerView, heads: int) -> torch.Tensor:
    """`policy.score(view)` as [B, heads, m] with -inf on padding; a shape it cannot be read as
    raises naming the policy and the shapes it may return."""
    b, m = view.valid.shape[0], view.width - policy.window
    h, g = view.queries.shape[1], view.keys.shape[1]
    if isinstance(scores, torch.Tensor) and scores.dim() == 2:
        scores = scores[:, None]
    if not (isinstance(scores, torch.Tensor) and scores.dim() == 3 and scores.shape[0] == b
            and scores.shape[2] == m and scores.shape[1] in {1, heads, h}):
        raise ValueError(f"{type(policy).__name__}.score() must return a tensor [B={b}, heads, m={m}] with heads "
                         f"{g} (KV heads) or {h} (query heads), or [B={b}, m={m}]; got "
                         f"{getattr(scores, 'shape', type(scores).__name__)}")
    if scores.shape[1] == h and heads != h:  # query heads, summed per KV group
        scores = scores.float().view(b, heads, h // heads, m).sum(2)
    scores = scores.expand(b, heads, m)
    return scores.masked_fill(~view.valid[:, None, :m], float("-inf"))


def check_ratio(ratio) -> None:
    if ratio is not None and not (is_number(ratio) and 0 <= ratio < 1):
        raise ValueError(f"ratio must be None or a number in [0, 1) (the share of entries evicted), got {ratio!r}")


@dataclass
class ScorerEviction(EvictionPolicy):
    """Per layer and cached head, the `budget - window` best-scored prefix entries plus the window.

    Subclass it and implement `score`; a sequence whose prompt fits `budget` keeps everything.
    `ratio` (kvpress's `compression_ratio`) instead sizes each layer from the n entries it
    holds: it keeps `max(1, int(n * (1 - ratio)))` of them, window included (kvpress's
    `compute_n_kept`), and `budget` is not used. `window=0` scores every entry, as kvpress
    does; a window keeps the prompt's last tokens (the question, in a one-prompt setting).
    """

    budget: int = 2048  # entries per cached head per layer, window included
    window: int = 32
    ratio: float | None = None  # the share of each layer's entries to evict (kvpress's compression_ratio)
    decodes = True  # its score reads only keys, values and the window's queries (asl.DecodingEviction may run it)

    def _check(self) -> None:
        check_positive_int("budget", self.budget)
        check_positive_int("window", self.window, 0)
        check_window_below(self.window, "budget", self.budget)
        check_ratio(self.ratio)

    @abstractmethod
    def score(self, view: LayerView) -> torch.Tensor:
        """How much each prefix entry matters (module docstring), higher kept."""

    def cached_heads(self, view: LayerView) -> int:
        """How many heads the layer's cache holds: the KV heads (SnapKV per query head: all H)."""
        return view.keys.shape[1]

    def keep(self, layer: int, view: LayerView) -> torch.Tensor | None:
        if self.ratio is None:
            return self.keep_within(view, self.budget)
        return self.keep_within(view, [max(1, int(n * (1 - self.ratio))) for n in view.alive.tolist()])

    def keep_within(self, view: LayerView, budget: int | list[int]) -> torch.Tensor | None:
        """keep() at another budget (what an allocation such as PyramidKV asks of it): one for
        every sequence, or a list of one per sequence (asl.Proportional). With one budget there
        is no host read: whether any sequence evicts is known from the width (the longest alive)."""
        heads = self.cached_heads(view)
        per_sequence = not isinstance(budget, int)
        budgets = torch.tensor(budget, device=view.alive.device) if per_sequence else budget
        evict = view.alive > budgets
        if (not bool(evict.any())) if per_sequence else view.width <= budget:  # nobody evicts
            if heads == view.keys.shape[1]:
                return None
            everything = torch.zeros(len(evict), heads, view.width, dtype=torch.long, device=evict.device)
            return fill_unevicted(everything, view, evict)
        scores = prefix_scores(self, self.score(view), view, heads)
        if per_sequence:
            top = top_prefix(scores, (budgets - self.window).clamp(min=0))
        else:
            top = ops.stable_descending_order(scores)[..., : budget - self.window]  # ties to the lower column
        return fill_unevicted(view.with_window(top, self.window), view, evict)


@dataclass
class ScorerSelection(SelectionPolicy):
    """At the layers where `selects_at` says so, the `select_tokens - window` best-scored prefix
    tokens (scores summed over heads) plus the window travel on; one-shot, per sequence.

    Subclass it and implement `score` and `selects_at`; `prefix_counts` may vary k per sequence.
    Sliding-window layers are skipped unless the subclass has a true `local_layers` field
    (docs/algorithms.md section 20).
    """

    select_tokens: int = 2048  # k, window included
    window: int = 32

    def _check(self) -> None:
        check_positive_int("window", self.window)
        check_positive_int("select_tokens", self.select_tokens)
        if self.select_tokens <= self.window:
            raise ValueError(f"select_tokens ({self.select_tokens}) must be larger than window ({self.window}): "
                             "select_tokens includes the window")

    @abstractmethod
    def score(self, view: LayerView) -> torch.Tensor:
        """How much each prefix token matters (module docstring), higher kept."""

    @abstractmethod
    def selects_at(self, layer: int, view: LayerView) -> bool | torch.Tensor:
        """Whether to select after this layer: for every sequence, or per sequence ([B] bool)."""

    def prefix_counts(self, view: LayerView) -> torch.Tensor:
        """[B] prefix tokens each sequence keeps (besides the window)."""
        return torch.full_like(view.alive, self.select_tokens - self.window)

    def begin(self, prefill) -> None:
        self._layers: list[int | None] = [None] * prefill.batch_size

    def after_layer(self, layer: int, view: LayerView) -> Selection | None:
        if view.window is not None and not getattr(self, "local_layers", False):  # a sliding-window layer: not looked at
            return None
        fire = self.selects_at(layer, view)
        if not isinstance(fire, torch.Tensor) and not fire:
            return None
        counts = self.prefix_counts(view)
        active = view.alive - self.window > counts  # otherwise there is nothing to prune
        if isinstance(fire, torch.Tensor):
            active &= fire
        if not bool(active.any()):
            return None
        scores = prefix_scores(self, self.score(view), view, view.keys.shape[1]).sum(1)  # per token
        keep = view.with_window(top_prefix(scores, torch.where(active, counts, 0)), self.window)
        for b in active.nonzero().flatten().tolist():
            self._layers[b] = layer
        return Selection(keep, active)

    def report(self) -> list[dict]:
        return [{"selection_layer": layer} for layer in self._layers]
