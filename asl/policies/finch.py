"""Finch (Corallo and Papotti, TACL 2024; kvpress's FinchPress; docs/algorithms.md section 19):
SnapKV's idea with the question itself as the observation window, the attention normalised by
how many keys each question token sees, and the kept keys re-rotated."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .attention_scores import attention_rows
from .base import LayerView, PrefillInfo, check_positive_int, check_window_below
from .scorer import ScorerEviction, check_ratio


@dataclass
class Finch(ScorerEviction):
    """An entry's score: the attention the question's tokens pay it, each question token's row
    multiplied by the number of keys before it (`normalize_scores`; kvpress's count, the row of
    the i-th of w question tokens of an n-token prompt times n - w + i), averaged over them and
    the query heads. The window is the question: `window=None` takes its length from
    `asl.compress(..., question_hint=...)` (kvpress's delimiter between context and question);
    an int sets it. `rerotate_keys` (kvpress's default) numbers the kept entries by their place in
    the cache, as `asl.KeyRerotation` does. kvpress's `chunk_length` (compressing chunk by chunk)
    is not included."""

    window: int | None = None
    normalize_scores: bool = True
    rerotate_keys: bool = True
    decodes = False  # its window is the prompt's question

    def _check(self) -> None:
        check_positive_int("budget", self.budget)
        if self.window is not None:
            check_positive_int("window", self.window)
            check_window_below(self.window, "budget", self.budget)
        for name in ("normalize_scores", "rerotate_keys"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        check_ratio(self.ratio)

    @property
    def cache_positions(self) -> bool:
        return self.rerotate_keys

    def begin(self, prefill: PrefillInfo) -> None:
        super().begin(prefill)
        if self.window is None:
            lengths = set(prefill.question_tokens)
            if len(lengths) != 1 or not prefill.question_tokens:
                raise ValueError("Finch(window=None) scores by the question: compress the context with "
                                 "asl.compress(..., question_hint=question), or give it window=<the question's "
                                 "tokens>" + (" (one length for the whole batch)" if len(lengths) > 1 else ""))
            self.window = lengths.pop()  # on the per-call copy, not the policy object
            check_window_below(self.window, "budget", self.budget)

    def score(self, view: LayerView) -> torch.Tensor:
        n, w = view.width, self.window
        rows = attention_rows(view, slice(n - w, n))[..., : n - w]  # [B, H, w, m]
        if self.normalize_scores:  # kvpress: row i of the window times (alive - w + i)
            seen = (view.alive[:, None] - w + torch.arange(w, device=rows.device)).float()
            rows = rows * seen[:, None, :, None]
        return rows.mean(2)
