"""ASL: select tokens at the first layer where their attention ranking has settled.

docs/algorithms.md section 3. From layer `l_min` on, ASL compares the ranks of the prefix tokens
over the last `l_obs` layers: the variance of a token's rank across those layers, over the
union of each layer's top-k', relative to the same variance at `l_min`. When that ratio
drops below `tau` the ranking is stable; the current layer's top-k' plus the window then
travel on to the deeper layers (one-shot). Every sequence of a batch decides on its own.
"""
from __future__ import annotations

import warnings
from collections import deque
from dataclasses import dataclass, field

import torch

from .. import ops
from .base import (LayerView, PrefillInfo, Selection, SelectionPolicy, check_global_layer, check_kernel, check_layer,
                   check_pooling,
                   check_positive_int, check_window_below, is_number, top_prefix)


@dataclass
class _SequenceState:
    history: deque  # rank vectors of the last l_obs layers, over the sequence's real prefix
    var0: float | None = None
    ratios: dict[int, float] = field(default_factory=dict)
    layer: int | None = None
    done: bool = False
    keep: torch.Tensor | None = None  # prompt-relative columns chosen (used by the two-pass variant)


@dataclass
class ASL(SelectionPolicy):
    """ASL, adaptive selection layer (Taniguchi et al., ACL 2026 Findings, arXiv 2601.07667).

    Selects the top `select_tokens - window` prefix tokens plus the window at the first layer
    from `l_min` on where the rank variance ratio falls below `tau` (or at `l_max`, our
    addition); never, if it is not met (faithful). Semantics and where we differ from the
    authors' code: docs/algorithms.md section 3 (scores and ranks: sections 1-2).
    """

    tau: float = 0.3
    l_min: int = 10
    l_obs: int = 8
    select_tokens: int = 2048  # k, window included
    window: int = 32
    kernel: int = 7
    pooling: str = "avg"
    l_max: int | None = None  # our addition: select here at the latest
    local_layers: bool = False  # also rank at sliding-window layers (docs/algorithms.md section 20)

    @classmethod
    def for_model(cls, model, calibration=None, **overrides) -> "ASL":
        """ASL with the settings calibrated for `model` (a name, a ModelConfig, or a model with a
        `.config`): `calibration` (a file from `python -m asl.bench calibrate`) or the package's
        file for that model, read strictly (bundled: qwen2.5-0.5b, smollm2-135m and gemma3-270m,
        calibrated at 4,096 tokens with select_tokens 1,024; docs/calibration.md). Without one, tau is the
        paper's 0.3 (0.7, hand-set, on those two if their file is missing), not a calibrated
        value; l_min is 10 of 32 layers scaled to the model. `overrides` win (e.g. select_tokens). docs/algorithms.md section 14."""
        from ..calibration import settings_for

        settings, why = settings_for(model, calibration)
        warnings.warn(f"ASL.for_model: tau {settings['tau']:g}, l_min {settings['l_min']}: {why}", stacklevel=2)
        return cls(**{**settings, **overrides})

    def _check(self) -> None:
        if not is_number(self.tau) or self.tau < 0:
            raise ValueError(f"tau must be a finite number >= 0, got {self.tau!r}")
        check_positive_int("l_min", self.l_min, 0)
        check_positive_int("l_obs", self.l_obs, 2)
        if self.l_obs > self.l_min + 1:
            raise ValueError(f"l_obs must be in [2, l_min + 1] = [2, {self.l_min + 1}] (it looks back from l_min), "
                             f"got {self.l_obs}")
        check_positive_int("window", self.window)
        check_positive_int("select_tokens", self.select_tokens)
        check_window_below(self.window, "select_tokens", self.select_tokens)
        check_kernel(self.kernel)
        check_pooling(self.pooling)
        if self.l_max is not None and (not isinstance(self.l_max, int) or self.l_max < self.l_min):
            raise ValueError(f"l_max must be None or a layer index >= l_min ({self.l_min}), got {self.l_max!r}")

    def begin(self, prefill: PrefillInfo) -> None:
        check_layer("l_min", self.l_min, prefill.num_layers)
        if self.l_max is not None:
            check_layer("l_max", self.l_max, prefill.num_layers)
            check_global_layer("l_max", self.l_max, prefill, self.local_layers)
        self._num_layers = prefill.num_layers
        self._states = [_SequenceState(deque(maxlen=self.l_obs)) for _ in prefill.prompt_lengths]
        self._lengths = list(prefill.prompt_lengths)

    def after_layer(self, layer: int, view: LayerView) -> Selection | None:
        chosen = self._evaluate(layer, view)
        if layer == self._num_layers - 1:
            self._say_if_never_selected()
        if not chosen:
            return None
        return Selection.from_own_columns(view, chosen)

    def _say_if_never_selected(self) -> None:
        """Once per policy object: a prunable prompt ran every layer on all its tokens (the
        threshold was never met), which looks like the full cache but is not what was asked."""
        missed = [s for s in self._states if s.layer is None and s.ratios]
        if not missed or getattr(self.origin, "_said_never", False):
            return
        object.__setattr__(self.origin, "_said_never", True)
        lowest = min(min(s.ratios.values()) for s in missed)
        warnings.warn(f"ASL(tau={self.tau:g}, l_min={self.l_min}) never selected on {len(missed)} of "
                      f"{len(self._states)} prompts: the lowest ratio was {lowest:.3g}, so every layer ran on all "
                      "tokens; calibrate tau for this model (asl.ASL.for_model, docs/calibration.md) or set l_max",
                      stacklevel=4)

    def _evaluate(self, layer: int, view: LayerView) -> dict[int, torch.Tensor]:
        """Run the criterion for every undecided sequence; {b: kept columns of b's own tokens}.

        One host read per evaluated layer (the decision the prefill's control flow needs): an
        undecided sequence still has its whole prompt, so its length is known from `begin`."""
        if layer < self.l_min - self.l_obs + 1 or (view.window is not None and not self.local_layers):
            return {}  # not yet, or a sliding-window layer: its ranks join no history
        width, k_prefix = view.width, self.select_tokens - self.window
        scores = None
        pending = []
        for b, (state, alive) in enumerate(zip(self._states, self._lengths)):
            if state.done:
                continue
            if alive - self.window <= k_prefix:  # nothing to prune: never selects
                state.done = True
                continue
            if scores is None:
                scores = view.token_scores(self.window, self.kernel, self.pooling)
            own = scores[b, width - alive: width - self.window]  # the sequence's real prefix
            state.history.append(ops.token_ranks(own))
            if layer >= self.l_min and len(state.history) >= 2:  # (fewer only where sliding layers were skipped)
                pending.append((b, state, own, ops.rank_variance(torch.stack(tuple(state.history))[:, None], k_prefix)))
        if not pending:
            return {}
        variances = torch.cat([p[3] for p in pending]).tolist()
        chosen = {}
        for (b, state, own, _), v in zip(pending, variances):
            if state.var0 is None:
                state.var0, ratio = v, 1.0  # faithful: the ratio at l_min is 1
            else:
                ratio = 0.0 if state.var0 == 0 else v / state.var0
            state.ratios[layer] = ratio
            if ratio < self.tau or layer == self.l_max:
                state.layer, state.done = layer, True
                chosen[b] = self._top_with_window(own, self._lengths[b])
        return chosen

    def _top_with_window(self, own_scores: torch.Tensor, alive: int) -> torch.Tensor:
        """Sorted columns (of the sequence's own 0..alive-1) of its top k' prefix plus the window."""
        k_prefix = self.select_tokens - self.window
        top = top_prefix(own_scores[None], torch.tensor([k_prefix], device=own_scores.device))[0]
        window = torch.arange(alive - self.window, alive, device=own_scores.device)
        return torch.cat([top, window]).sort().values

    def report(self) -> list[dict]:
        return [{"selection_layer": s.layer, "ratios": dict(s.ratios)} for s in self._states]
