"""LazyLLM (Fu et al., *LazyLLM: Dynamic Token Pruning for Efficient Long Context LLM Inference*,
arXiv 2407.14057): progressive token pruning by the last token's attention, with pruned tokens
revived in later generation steps (docs/algorithms.md section 21).

At each pruning layer the tokens present keep the top `keep` share by the last token's
attention probabilities averaged over the query heads (the paper's confidence score; the
last token always stays); the others stop there, and their hidden states are kept (the
paper's Aux Cache). With `revive=True` (the paper) every decoding step selects again, from
every token, at the same layers, by the new token's attention: a token a step selects at a
layer it was never computed at resumes there from its aux hidden state, so each token is
computed at most once per layer (`asl/revival.py`). `revive=False` is the static ablation the
paper argues against: the prefill's choice stays (the selection-alone regime).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .attention_scores import attention_rows
from .base import LayerView, PrefillInfo, Selection, SelectionPolicy, is_number

DEPTHS = (0.25, 0.5, 0.75)  # where the pruning layers go by default (ours; the paper tunes them per model)


def kept_count(share: float, present: int) -> int:
    """Tokens that go on of `present`: the paper prunes those under the (1 - share) percentile."""
    return present - int((1.0 - share) * present)


def top_share(scores: torch.Tensor, share: float) -> torch.Tensor:
    """Indices (ascending) of the best `kept_count(share, n)` of scores [n]; ties to the lower index."""
    k = kept_count(share, scores.shape[0])
    return torch.sort(scores, descending=True, stable=True).indices[:k].sort().values


@dataclass
class LazyLLM(SelectionPolicy):
    """Progressive pruning at `layers` (default: at 1/4, 1/2 and 3/4 of the depth), each keeping
    the `keep` share (one number, or one per layer) of the tokens present there; `revive`:
    LazyLLM's decoding, which selects again at every step and revives from the aux cache."""

    layers: tuple | None = None
    keep: float | tuple = 0.7
    revive: bool = True
    pruning: tuple = field(default=(), init=False, repr=False, compare=False)  # the layers, set by begin

    def _check(self) -> None:
        if self.layers is not None:
            ok = isinstance(self.layers, (tuple, list)) and self.layers and all(
                isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in self.layers)
            if not ok or list(self.layers) != sorted(set(self.layers)):
                raise ValueError(f"layers must be None or increasing layer indices (ints >= 0), got {self.layers!r}")
        shares = self.keep if isinstance(self.keep, (tuple, list)) else (self.keep,)
        if not shares or not all(is_number(s) and 0 < s <= 1 for s in shares):
            raise ValueError(f"keep must be a share in (0, 1] or a tuple of them (one per pruning layer), got "
                             f"{self.keep!r}")
        if isinstance(self.keep, (tuple, list)) and self.layers is not None and len(self.keep) != len(self.layers):
            raise ValueError(f"keep has {len(self.keep)} shares for {len(self.layers)} pruning layers")
        if not isinstance(self.revive, bool):
            raise ValueError(f"revive must be True or False, got {self.revive!r}")

    @property
    def revives(self) -> bool:
        """Whether the decoding selects again and revives (asl/revival.py runs it)."""
        return self.revive

    def pruning_layers(self, num_layers: int) -> tuple[int, ...]:
        if self.layers is not None:
            return tuple(self.layers)
        return tuple(sorted({min(num_layers - 2, max(0, round(f * num_layers) - 1)) for f in DEPTHS}))

    def share(self, i: int) -> float:
        """The keep share of the i-th pruning layer."""
        return float(self.keep[i] if isinstance(self.keep, (tuple, list)) else self.keep)

    def begin(self, prefill: PrefillInfo) -> None:
        self.pruning = self.pruning_layers(prefill.num_layers)
        if isinstance(self.keep, (tuple, list)) and len(self.keep) != len(self.pruning):
            raise ValueError(f"keep has {len(self.keep)} shares for the {len(self.pruning)} pruning layers "
                             f"{self.pruning}")
        if self.pruning[-1] >= prefill.num_layers - 1:
            raise ValueError(f"layers: pruning after the last layer ({prefill.num_layers - 1}) prunes nothing; "
                             f"give layers below it, got {self.pruning}")
        if any(w is not None for w in prefill.layer_windows):
            raise ValueError("LazyLLM on a model with sliding-window layers is not supported (its revival attends "
                             "over every selected token)")
        self.aux: list[dict[int, tuple[int, torch.Tensor]]] = [{} for _ in range(prefill.batch_size)]
        self._first: list[int | None] = [None] * prefill.batch_size
        self.revived = [0] * prefill.batch_size  # (token, layer) pairs the decoding computed from the aux cache

    def after_layer(self, layer: int, view: LayerView) -> Selection | None:
        if layer not in self.pruning:
            return None
        share = self.share(self.pruning.index(layer))
        probs = attention_rows(view, slice(view.width - 1, view.width))[:, :, 0].mean(1)  # [B, n]
        chosen = {}
        for b, alive in enumerate(view.alive.tolist()):
            if kept_count(share, alive) >= alive:
                continue
            scores = probs[b, view.width - alive:].clone()
            scores[-1] = float("inf")  # the last token predicts the next one: it always stays
            chosen[b] = top_share(scores, share)
            self._first[b] = layer if self._first[b] is None else self._first[b]
            if self.revive:  # the Aux Cache: a dropped token's output of this layer, by its prompt index
                dropped = torch.ones(alive, dtype=torch.bool, device=scores.device)
                dropped[chosen[b]] = False
                cols = view.width - alive + dropped.nonzero().flatten()
                for i, h in zip(view.index[b, cols].tolist(), view.model_part("hidden", "LazyLLM")[b, cols]):
                    self.aux[b][i] = (layer, h)
        return Selection.from_own_columns(view, chosen) if chosen else None

    def report(self) -> list[dict]:
        return [{"selection_layer": first, "revived_token_layers": revived}
                for first, revived in zip(self._first, self.revived)]

