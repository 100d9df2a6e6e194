"""CaM: fold the values an eviction drops into the entries it keeps (Zhang et al., ICML 2024;
kvpress's CAMPress). docs/algorithms.md section 19."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .allocate import ScorerWrapper
from .base import EvictionPolicy, LayerView, check_positive_int
from .scorer import ScorerEviction


def window_attention(view: LayerView, queries: int) -> torch.Tensor:
    """[B, G, n]: the attention each entry receives from the last `queries` queries (causal, softmax
    over the real keys, 1/sqrt(d)), summed over them and averaged over each KV head's query heads."""
    b, h, n, d = view.queries.shape
    g = view.keys.shape[1]
    q = view.queries[:, :, n - queries:].float()
    k = view.keys.float().repeat_interleave(h // g, dim=1)
    logits = q @ k.transpose(-1, -2) / d ** 0.5  # [B, H, w, n]
    seen = view.valid[:, None, None, :] & (torch.arange(n, device=q.device) <= torch.arange(n - queries, n,
                                                                                             device=q.device)[:, None])
    weights = torch.softmax(logits.masked_fill(~seen, float("-inf")), dim=-1).nan_to_num(0.0)
    return weights.sum(2).view(b, g, h // g, n).mean(2)


@dataclass
class CAM(ScorerWrapper, EvictionPolicy):
    """Cache merging (CaM, Zhang et al., ICML 2024; kvpress's CAMPress) around a scorer: the scorer
    chooses what each KV head keeps; each entry it evicts is then merged into the `merge_budget`
    kept entries that follow it: with probability min(1, A_i / mean of A over those), A the
    attention the last `attention_window` queries pay (per KV head), its value divided by the
    number of targets is added to theirs. `sampled` draws that merge (Bernoulli, from `seed` and
    the layer: a run repeats), as CaM and kvpress do; False adds each value times its probability
    (the draw's expectation). kvpress runs CaM while decoding, merging what its `DecodingPress`
    cuts every `compression_interval` steps by the attention accumulated since; here it acts on
    the prefill's cut, with the window queries' attention, wherever a scorer eviction does."""

    scorer: ScorerEviction
    merge_budget: int = 32
    attention_window: int = 32
    sampled: bool = True
    seed: int = 0
    sizes_layers = False  # the scorer's budget or ratio sizes the cut
    decodes = False  # it merges the prefill's cut only

    def _check(self) -> None:
        super()._check()
        check_positive_int("merge_budget", self.merge_budget)
        check_positive_int("attention_window", self.attention_window)
        check_positive_int("seed", self.seed, 0)

    def cached_heads(self, view: LayerView) -> int:
        return self.scorer.cached_heads(view)

    def keep(self, layer: int, view: LayerView) -> torch.Tensor | None:
        return self.scorer.keep(layer, view)

    def merge(self, layer: int, view: LayerView, keep: torch.Tensor) -> torch.Tensor | None:
        b, heads, k = keep.shape
        g, n, d = view.keys.shape[1], view.width, view.values.shape[-1]
        values = view.values.float().repeat_interleave(heads // g, dim=1)  # a cache per query head repeats its KV head
        attention = window_attention(view, min(self.attention_window, n)).repeat_interleave(heads // g, dim=1)
        merged = values.gather(2, keep.clamp(min=0)[..., None].expand(-1, -1, -1, d)).clone()
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + layer)
        for row in range(b):
            for head in range(heads):
                kept = keep[row, head][keep[row, head] >= 0]
                dropped = torch.ones(n, dtype=torch.bool, device=kept.device)
                dropped[kept] = False
                evicted = (dropped & view.valid[row]).nonzero().flatten()
                if not len(evicted) or not len(kept):
                    continue
                first = torch.searchsorted(kept, evicted, right=True)  # the first kept entry after each evicted one
                slots = first[:, None] + torch.arange(self.merge_budget, device=kept.device)  # [e, m] into kept
                inside = slots < len(kept)
                targets = kept[slots.clamp(max=len(kept) - 1)]
                count = inside.sum(-1)
                a = attention[row, head]
                mean = (a[targets] * inside).sum(-1) / count.clamp(min=1)
                prob = (a[evicted] / mean).nan_to_num(nan=0.0, posinf=1.0).clamp(0, 1)
                if self.sampled:
                    prob = torch.bernoulli(prob.cpu(), generator=gen).to(prob.device)
                share = torch.where(count > 0, prob / count.clamp(min=1), 0.0)
                add = (values[row, head, evicted] * share[:, None])[:, None, :] * inside[..., None]  # [e, m, d]
                merged[row, head].index_add_(0, slots.clamp(max=len(kept) - 1).flatten(), add.reshape(-1, d))
        return merged
