"""Merge on evict (kvpress's MergingPress, after Token Merging and D2O): what the scorer evicts
is folded into the value of the kept entry its key is most like, instead of dropped.
docs/algorithms.md section 19."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .allocate import KeepsScorersCut, ScorerWrapper
from .base import EvictionPolicy, LayerView, is_number
from .scorer import ScorerEviction

EPS = 1e-6  # kvpress's, in every norm and in the weight's denominator


@dataclass
class Merging(KeepsScorersCut, ScorerWrapper, EvictionPolicy):
    """The scorer chooses what each KV head keeps; each evicted entry e then goes to the kept
    entry t whose key is most cosine-similar (s = cos(k_e, k_t)), if s >= `similarity_threshold`
    and s is among the `merge_fraction` highest of the head's evicted entries, with the weight
    w = max(s, 0) * |v_e| / (|v_e| + |v_t| + 1e-6). A kept value that receives merges becomes
    (v_t + sum w v_e) / (1 + sum w); keys stay as they are (so RoPE positions hold)."""

    scorer: ScorerEviction
    similarity_threshold: float = 0.0
    merge_fraction: float = 1.0
    sizes_layers = False  # the scorer's budget or ratio sizes the cut
    decodes = False  # it merges the prefill's cut only

    def _check(self) -> None:
        super()._check()
        if not is_number(self.similarity_threshold) or not 0 <= self.similarity_threshold <= 1:
            raise ValueError(f"similarity_threshold must be in [0, 1] (a cosine), got {self.similarity_threshold!r}")
        if not is_number(self.merge_fraction) or not 0 < self.merge_fraction <= 1:
            raise ValueError(f"merge_fraction must be in (0, 1] (the share of evicted entries merged), "
                             f"got {self.merge_fraction!r}")

    def merge(self, layer: int, view: LayerView, keep: torch.Tensor) -> torch.Tensor | None:
        b, heads, _ = keep.shape
        g, d = view.keys.shape[1], view.values.shape[-1]
        keys, values = (x.float().repeat_interleave(heads // g, dim=1) for x in (view.keys, view.values))
        merged = values.gather(2, keep.clamp(min=0)[..., None].expand(-1, -1, -1, d)).clone()
        for row in range(b):
            for head in range(heads):
                kept = keep[row, head][keep[row, head] >= 0]
                dropped = view.valid[row].clone()
                dropped[kept] = False
                evicted = dropped.nonzero().flatten()
                if len(evicted) and len(kept):
                    merged[row, head, : len(kept)] = self._fold(keys[row, head], values[row, head], kept, evicted)
        return merged

    def _fold(self, keys, values, kept, evicted) -> torch.Tensor:
        """The kept entries' values [k, d] after the evicted ones are merged into them."""
        unit = lambda x: x / x.norm(dim=-1, keepdim=True).clamp(min=EPS)  # noqa: E731
        similarity, target = (unit(keys[evicted]) @ unit(keys[kept]).T).max(-1)
        merge = similarity >= self.similarity_threshold
        if self.merge_fraction < 1 and bool(merge.any()):
            cut = similarity.masked_fill(~merge, float("-inf")).quantile(1 - self.merge_fraction)
            merge &= similarity >= cut
        own, theirs = values[evicted].norm(dim=-1), values[kept].norm(dim=-1)[target]
        weight = similarity.clamp(min=0) * merge * own / (own + theirs + EPS)
        total = torch.zeros(len(kept), device=keys.device).index_add_(0, target, weight)
        added = torch.zeros_like(values[kept]).index_add_(0, target, weight[:, None] * values[evicted])
        return torch.where((total > 0)[:, None], (values[kept] + added) / (1 + total[:, None]), values[kept])
