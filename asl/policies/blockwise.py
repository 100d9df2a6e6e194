"""Block-wise iterative compression (kvpress's BlockPress; the block prompt processing of the
KeyDiff paper, Park et al., arXiv 2504.15364): the prompt is read in blocks, and after each one
only the budget's best of what was kept and the new block stay, as if the cache could never
hold more. docs/algorithms.md section 19."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .. import ops
from .allocate import ScorerWrapper
from .base import EvictionPolicy, LayerView, check_positive_int, fill_unevicted
from .scorer import prefix_scores


@dataclass
class Blockwise(ScorerWrapper, EvictionPolicy):
    """Per sequence and KV head: the first `k` prefix entries are kept, then for each next block
    of `block` entries the scorer scores the kept ones with the block (as a prompt of those
    entries alone, its window 0) and the best `k` stay (ties to the earlier). `k` is the scorer's
    count less its window (`max(1, int(n * (1 - ratio)))` with kvpress's ratio, else its budget);
    the window is kept besides. A scorer that needs the prompt's own queries or order (SnapKV,
    TOVA) does not fit: kvpress's BlockPress is meant for key-only scores such as KeyDiff's."""

    scorer: object
    block: int = 128  # kvpress's block_size
    sizes_layers = False  # the scorer's budget or ratio sizes the cut

    def _check(self) -> None:
        super()._check()
        check_positive_int("block", self.block)

    def keep(self, layer: int, view: LayerView) -> torch.Tensor | None:
        window, ratio = self.scorer.window, self.scorer.ratio
        alive = view.alive.tolist()
        counts = [max(1, int(n * (1 - ratio))) if ratio is not None else self.scorer.budget for n in alive]
        evict = [n > c for n, c in zip(alive, counts)]
        if not any(evict):
            return None
        alone = replace(self.scorer, window=0)
        g = view.keys.shape[1]
        rows = []
        for b, (n, count) in enumerate(zip(alive, counts)):
            start, stop = view.width - n, view.width - window  # the real prefix's columns
            heads = [self._iterate(alone, view, b, j, start, stop, max(count - window, 1)) if evict[b]
                     else torch.arange(start, stop, device=view.keys.device) for j in range(g)]
            tail = torch.arange(stop, view.width, device=view.keys.device)
            rows.append(torch.stack([torch.cat([h, tail]) for h in heads]))
        k = max(r.shape[-1] for r in rows)
        keep = torch.stack([torch.nn.functional.pad(r, (0, k - r.shape[-1]), value=-1) for r in rows])
        return fill_unevicted(keep, view, torch.tensor(evict, device=keep.device))

    def _iterate(self, scorer, view: LayerView, b: int, head: int, start: int, stop: int, k: int) -> torch.Tensor:
        """Head `head` of sequence b: its kept columns of [start, stop), ascending."""
        kept = torch.arange(start, min(start + k, stop), device=view.keys.device)
        for s in range(start + k, stop, self.block):
            cols = torch.cat([kept, torch.arange(s, min(s + self.block, stop), device=kept.device)])
            part = view.entries(b, head, cols)
            scores = prefix_scores(scorer, scorer.score(part), part, 1)[0, 0]
            kept = cols[ops.stable_descending_order(scores[None])[0, :k]].sort().values
        return kept
