"""Budget allocators that wrap a scorer, as kvpress's `AdaKVPress(SnapKVPress())` does: the
scorer says how much each entry matters, the wrapper decides how many entries each head or
layer may keep. Any `ScorerEviction` (SnapKV, a user's scorer) composes with either, and the
bench's method grammar writes them `adakv(snapkv)`, `pyramidkv(snapkv(window=16))`.
docs/algorithms.md section 15."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import ops
from .base import (EvictionPolicy, LayerView, PrefillInfo, SelectedShares, check_positive_int, fill_unevicted, is_number,
                   keep_from_mask)
from .scorer import ScorerEviction, prefix_scores


class ScorerWrapper:
    """What every wrapper of a scorer shares (the allocators here, asl.ChunkKV): its scorer
    checked and begun with it, its budget the scorer's, and a per-call copy holding a per-call
    copy of the scorer (state set in begin). An allocator sizes each layer itself, so its
    scorer may not carry a `ratio` (`sizes_layers`)."""

    sizes_layers = True

    def _check(self) -> None:
        if not isinstance(self.scorer, ScorerEviction):
            raise ValueError(f"{type(self).__name__} wraps a scorer eviction (a ScorerEviction such as "
                             f"SnapKV(budget=...)), got {type(self.scorer).__name__}")
        self.scorer._check()
        if self.sizes_layers and self.scorer.ratio is not None:
            raise ValueError(f"{type(self).__name__} sizes each layer itself: give its scorer a budget, not "
                             f"ratio={self.scorer.ratio!r}")

    @property
    def budget(self) -> int:
        return self.scorer.budget

    def begin(self, prefill: PrefillInfo) -> None:
        self.scorer.begin(prefill)

    def per_call(self):
        twin = super().per_call()
        twin.scorer = self.scorer.per_call()
        return twin


class KeepsScorersCut:
    """A wrapper that stores what its scorer keeps and changes only how (asl.CAM, asl.Merging)."""

    def cached_heads(self, view: LayerView) -> int:
        return self.scorer.cached_heads(view)

    def keep(self, layer: int, view: LayerView) -> torch.Tensor | None:
        return self.scorer.keep(layer, view)


@dataclass
class AdaKV(ScorerWrapper, EvictionPolicy):
    """AdaKV (Feng et al., arXiv 2407.11550): a layer's budget shared among its KV heads by the
    scores. The `(budget - window) * heads` best prefix entries of all heads together are kept
    (a head whose entries matter more keeps more), each head keeping at least `alpha_safeguard`
    of its even share, plus the window. `budget` is the scorer's: entries per head on average,
    so the layer stores as many entries as the scorer alone would."""

    scorer: ScorerEviction
    alpha_safeguard: float = 0.20

    def _check(self) -> None:
        super()._check()
        if not is_number(self.alpha_safeguard) or not 0 <= self.alpha_safeguard <= 1:
            raise ValueError(f"alpha_safeguard must be a number in [0, 1], got {self.alpha_safeguard!r}")

    def keep(self, layer: int, view: LayerView) -> torch.Tensor | None:
        budget, window = self.scorer.budget, self.scorer.window
        if view.width <= budget:
            return self.scorer.keep(layer, view)
        heads = self.scorer.cached_heads(view)
        scores = prefix_scores(self.scorer, self.scorer.score(view), view, heads).float()  # [B, heads, m]
        b, _, m = scores.shape
        share = budget - window
        safe = int(share * self.alpha_safeguard)
        if safe:  # each head's own best `safe` entries first, whatever the other heads score
            first = ops.stable_descending_order(scores)[..., :safe]
            guaranteed = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, first, True)
            scores = torch.where(guaranteed & (scores > float("-inf")), float("inf"), scores)
        chosen = ops.stable_descending_order(scores.reshape(b, heads * m))[:, : share * heads]
        mask = torch.zeros(b, heads * m, dtype=torch.bool, device=scores.device).scatter_(-1, chosen, True)
        prefix = keep_from_mask(mask.view(b, heads, m))  # [B, heads, k] the chosen columns, -1 pads
        return fill_unevicted(_at_least(view.with_window(prefix, window), budget), view, view.alive > budget)


@dataclass
class PyramidKV(ScorerWrapper, EvictionPolicy):
    """PyramidKV (Cai et al., arXiv 2406.02069): the scorer's budget per layer falls linearly
    from the first layer to the last, its mean the scorer's (the authors' KVCache-Factory
    formula, which kvpress's PyramidKVPress cites). With P = budget - window, layer 0 keeps
    `window + 2P - P/beta` entries per head and the last `window + P/beta`; where layer 0's
    share would exceed the prompt it is cut to the prompt and the last layer's raised to keep
    the mean (kvpress's clamp); where no such line exists every layer keeps the budget. The
    line is drawn from each sequence's own prompt, so a batch keeps what each prompt alone does."""

    scorer: ScorerEviction
    beta: int = 20

    def _check(self) -> None:
        super()._check()
        check_positive_int("beta", self.beta)

    def begin(self, prefill: PrefillInfo) -> None:
        super().begin(prefill)
        self.num_layers = prefill.num_layers

    def layer_budget(self, layer: int, prompt: int) -> int:
        """Entries per head this layer keeps of a `prompt`-token prompt (window included)."""
        window = self.scorer.window
        share = self.scorer.budget - window
        least = share / self.beta
        most = 2 * share - least
        if most > prompt - window:  # the first layers cannot keep more than the prompt
            most = prompt - window
            least = 2 * share - most
        if not most >= least >= 0 or self.num_layers < 2:
            return self.scorer.budget
        return window + round(most - layer * (most - least) / (self.num_layers - 1))

    def keep(self, layer: int, view: LayerView) -> torch.Tensor | None:
        budgets = [self.layer_budget(layer, n) for n in view.alive.tolist()]
        return self.scorer.keep_within(view, budgets[0] if len(set(budgets)) == 1 else budgets)



@dataclass
class Proportional(ScorerWrapper, EvictionPolicy):
    """FastKV's proportional KV (`eviction_mode="proportional"`, its published default): each
    layer keeps `int(n * rate)` of the n tokens it holds, so the cache is a share of the prompt,
    not a count. After a one-shot selection the rate is divided by the share it kept (FastKV's
    `retain_rate / tsp_rate`: the selection's stated rate, as FastKV(rate=...) states it, else
    its kept tokens over the prompt's), so deeper layers still keep about `rate` of the prompt.
    At least `window + 1`; the scorer's own `budget` is not used. docs/algorithms.md section 15."""

    scorer: ScorerEviction
    rate: float = 0.25

    def _check(self) -> None:
        super()._check()
        if not is_number(self.rate) or not 0 < self.rate <= 1:
            raise ValueError(f"rate must be a number in (0, 1], got {self.rate!r}")

    @property
    def budget(self) -> None:  # no count: a share of each prompt
        return None

    def begin(self, prefill: PrefillInfo) -> None:
        super().begin(prefill)
        self._prompts, self._shares = prefill.prompt_lengths, prefill.shared(SelectedShares).by_sequence

    def layer_budgets(self, view: LayerView) -> list[int]:
        """Entries per head each sequence keeps at this layer (window included)."""
        budgets = []
        for b, n in enumerate(view.alive.tolist()):
            share = self._shares.get(b, n / self._prompts[b]) if n < self._prompts[b] else 1.0
            budgets.append(max(self.scorer.window + 1, int(n * (self.rate / share))))
        return budgets

    def keep(self, layer: int, view: LayerView) -> torch.Tensor | None:
        return self.scorer.keep_within(view, self.layer_budgets(view))

def _at_least(keep: torch.Tensor, width: int) -> torch.Tensor:
    """keep padded with -1 to at least `width` columns (fill_unevicted writes whole rows there)."""
    short = width - keep.shape[-1]
    return torch.nn.functional.pad(keep, (0, short), value=-1) if short > 0 else keep
