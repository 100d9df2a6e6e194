"""Selection policies that restart: GemFilter and ASL two-pass (docs/algorithms.md section 5).

Pass 1 runs the first layers only to choose tokens and keeps no KV; pass 2 reruns the whole
model from layer 0 on the chosen tokens alone, positions renumbered 0..k-1.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import ops
from .asl import ASL
from .base import (LayerView, PrefillInfo, Selection, SelectionPolicy, check_global_layer, check_kernel, check_layer,
                   check_positive_int)


@dataclass
class GemFilter(SelectionPolicy):
    """GemFilter (Shi et al., arXiv 2409.17422): choose tokens at an early layer, then rerun.

    At `layer`, the top `select_tokens` by the last query's summed dot products (avg-pooled,
    `kernel` 5 by default); the window is not forced in (faithful; `keep_last=True` keeps the
    last token). `answer_tokens=51` caps the bench's answers as the ASL authors' harness caps
    GemFilter's (`gemfilter_generate`: the first token and `max_gen_len=50` more, whatever the
    task allows the other methods). docs/algorithms.md section 5.
    """

    layer: int = 13  # GemFilter's setting for 32-layer models
    select_tokens: int = 1024
    kernel: int = 5
    keep_last: bool = False  # faithful: the last token is not forced in
    answer_tokens: int | None = None  # the bench's answers at most this long (the authors' harness: 51)
    local_layers: bool = False  # allow a sliding-window layer as `layer` (docs/algorithms.md section 20)

    restarts = True

    def _check(self) -> None:
        check_positive_int("layer", self.layer, 0)
        check_positive_int("select_tokens", self.select_tokens)
        check_kernel(self.kernel)
        if self.answer_tokens is not None:
            check_positive_int("answer_tokens", self.answer_tokens)

    @property
    def keeps_last_token(self) -> bool:
        return self.keep_last  # faithful: the top-k alone, the last token only if it scores in

    def begin(self, prefill: PrefillInfo) -> None:
        check_layer("layer", self.layer, prefill.num_layers)
        check_global_layer("layer", self.layer, prefill, self.local_layers)
        self._layers: list[int | None] = [None] * prefill.batch_size

    def after_layer(self, layer: int, view: LayerView) -> Selection | None:
        if layer != self.layer:
            return None
        chosen = {}
        width = view.width
        for b, alive in enumerate(view.alive.tolist()):
            if alive <= self.select_tokens:
                continue  # nothing to filter
            scores = gemfilter_scores(view.queries[b, :, -1], view.keys[b, :, width - alive:], self.kernel)
            if self.keep_last:
                scores[-1] = float("inf")
            chosen[b] = torch.sort(scores, descending=True, stable=True).indices[: self.select_tokens].sort().values
            self._layers[b] = layer
        return Selection.from_own_columns(view, chosen) if chosen else _keep_all(view)

    def report(self) -> list[dict]:
        return [{"selection_layer": layer} for layer in self._layers]


def gemfilter_scores(q_last: torch.Tensor, keys: torch.Tensor, kernel: int) -> torch.Tensor:
    """sum_h q_last,h . k_j (post-RoPE, no softmax, no scaling), avg-pooled. q_last [H, d], keys [G, n, d].

    The query heads of a KV group are summed first (a dot product is linear), so keys are
    never repeated per head.
    """
    g, d = keys.shape[0], keys.shape[-1]
    q_group = q_last.float().view(g, -1, d).sum(1)  # [G, d]
    raw = (keys.float() @ q_group[:, :, None]).squeeze(-1).sum(0)  # [n]
    return ops.pool(raw, kernel, "avg")


def _keep_all(view: LayerView) -> Selection:
    """A restart that keeps every token (no sequence had anything to filter)."""
    batch = view.valid.shape[0]
    nothing = torch.zeros(batch, dtype=torch.bool, device=view.valid.device)
    return Selection(torch.full((batch, 1), -1, device=view.valid.device), nothing)


@dataclass
class ASLTwoPass(ASL):
    """ASL two-pass (Taniguchi et al., ACL 2026 Findings, arXiv 2601.07667; the authors' ASL_2pass).

    Pass 1 is ASL's criterion (its layer, its tokens; the last layer's top-k' plus the window
    if never met); pass 2 reruns like GemFilter. docs/algorithms.md section 5.
    """

    restarts = True

    def after_layer(self, layer: int, view: LayerView) -> Selection | None:
        for b, cols in self._evaluate(layer, view).items():
            self._states[b].keep = cols
        if layer == self._num_layers - 1:  # threshold never met: the last layer's choice
            scores = view.token_scores(self.window, self.kernel, self.pooling)
            for b, (state, alive) in enumerate(zip(self._states, view.alive.tolist())):
                if not state.done:
                    state.done = True
                    state.keep = self._top_with_window(scores[b, view.width - alive: view.width - self.window], alive)
        if not all(s.done for s in self._states):
            return None
        chosen = {b: s.keep for b, s in enumerate(self._states) if s.keep is not None}
        return Selection.from_own_columns(view, chosen) if chosen else _keep_all(view)
