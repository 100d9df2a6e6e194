"""Finch (Corallo and Papotti, TACL 2024; kvpress's FinchPress; docs/algorithms.md section 19):
SnapKV's idea with the question itself as the observation window, the attention normalised by
how many keys each question token sees, and the kept keys re-rotated."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import ops
from .attention_scores import attention_rows
from .base import LayerView, PrefillInfo, check_positive_int, check_window_below
from .scorer import ScorerEviction, check_ratio, prefix_scores


@dataclass
class Finch(ScorerEviction):
    """An entry's score: the attention the question's tokens pay it, each question token's row
    multiplied by the number of keys before it (`normalize_scores`; kvpress's count, the row of
    the i-th of w question tokens of an n-token prompt times n - w + i), averaged over them and
    the query heads. The window is the question: `window=None` takes its length from
    `asl.compress(..., question_hint=...)` (kvpress's delimiter between context and question);
    an int sets it. `rerotate_keys` (kvpress's default) numbers the kept entries by their place in
    the cache, as `asl.KeyRerotation` does. `chunk_length` (kvpress's): the prompt's entries, the
    question's included (scoring above all others), cut into chunks of that many from the first,
    each keeping `max(1, int(len * (1 - ratio)))` of its own; it needs `ratio`, and a chunk longer
    than `window / (1 - ratio)` (kvpress's condition; a short last chunk may still cut the question)."""

    window: int | None = None
    normalize_scores: bool = True
    rerotate_keys: bool = True
    chunk_length: int | None = None
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
        if self.chunk_length is not None:
            check_positive_int("chunk_length", self.chunk_length)
            if self.ratio is None:
                raise ValueError("chunk_length compresses each chunk by the ratio: give ratio (kvpress's "
                                 "compression_ratio) instead of a budget")
            self._check_chunk()

    def _check_chunk(self) -> None:
        if self.window is not None and not self.chunk_length > self.window / (1 - self.ratio):
            raise ValueError(f"chunk_length ({self.chunk_length}) must be larger than window / (1 - ratio) = "
                             f"{self.window / (1 - self.ratio):g}, so that a chunk keeps the question's tokens")

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
            if self.chunk_length is not None:
                self._check_chunk()

    def keep(self, layer: int, view: LayerView) -> torch.Tensor | None:
        if self.chunk_length is None:
            return super().keep(layer, view)
        heads, w, m = self.cached_heads(view), self.window, view.width - self.window
        scores = prefix_scores(self, self.score(view), view, heads)
        rows = []
        for b, n in enumerate(view.alive.tolist()):
            own = scores[b, :, m - (n - w):]  # the sequence's real prefix [heads, n - w]
            own = torch.cat([own, own.max().expand(heads, w) + 1], dim=-1)  # the question above all (kvpress: max + 1)
            picks = []
            for start in range(0, n, self.chunk_length):
                part = own[:, start:start + self.chunk_length]
                count = max(1, int(part.shape[-1] * (1 - self.ratio)))
                picks.append(start + ops.stable_descending_order(part)[:, :count])
            rows.append(torch.cat(picks, dim=-1).sort(-1).values + (view.width - n))
        k = max(r.shape[-1] for r in rows)
        return torch.stack([torch.nn.functional.pad(r, (0, k - r.shape[-1]), value=-1) for r in rows])

    def score(self, view: LayerView) -> torch.Tensor:
        n, w = view.width, self.window
        rows = attention_rows(view, slice(n - w, n))[..., : n - w]  # [B, H, w, m]
        if self.normalize_scores:  # kvpress: row i of the window times (alive - w + i)
            seen = (view.alive[:, None] - w + torch.arange(w, device=rows.device)).float()
            rows = rows * seen[:, None, :, None]
        return rows.mean(2)
