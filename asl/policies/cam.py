"""CaM: fold the values an eviction drops into the entries it keeps (Zhang et al., ICML 2024;
kvpress's CAMPress). docs/algorithms.md section 19."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .allocate import KeepsScorersCut, ScorerWrapper
from .base import DecodeView, EvictionPolicy, LayerView, PrefillInfo, check_positive_int, keep_from_mask
from .decoding import cache_as_prompt, left_padded
from .scorer import ScorerEviction, prefix_scores


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
class CAM(KeepsScorersCut, ScorerWrapper, EvictionPolicy):
    """Cache merging (CaM, Zhang et al., ICML 2024; kvpress's CAMPress) around a scorer: the scorer
    chooses what each KV head keeps; each entry it evicts is then merged into the `merge_budget`
    kept entries that follow it: with probability min(1, A_i / mean of A over those), A the
    attention the last `attention_window` queries pay (per KV head), its value divided by the
    number of targets is added to theirs. `sampled` draws that merge (Bernoulli, from `seed` and
    the layer: a run repeats), as CaM and kvpress do; False adds each value times its probability
    (the draw's expectation). It acts on the prefill's cut, with the window queries' attention,
    wherever a scorer eviction does; kvpress's CAMPress, which merges while decoding, is
    `asl.CAMDecoding`."""

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


@dataclass
class CAMDecoding(ScorerWrapper, EvictionPolicy):
    """CaM while decoding, as kvpress's CAMPress runs it (docs/algorithms.md section 19): the
    prefill keeps everything; every `every` generated tokens (kvpress's `compression_interval`),
    a layer holding more than `budget` entries (`target_size`) keeps the `budget` whose scorer
    score, averaged over the KV heads, is highest (the same entries in every head); of the
    evicted, the `every` best scored (ties: the later) are merged, each into the `merge_budget`
    kept entries after it, with probability min(1, A_i / mean A over those), A the attention
    each entry has received from every generated token so far (averaged over a KV head's query
    heads), drawn (Bernoulli, from `seed`, the layer and the step: a sequence draws the same alone
    or in a batch); its value divided by the number of targets is added
    to theirs. The scorer reads the cache as a prompt with the latest queries (asl.DecodingEviction);
    its window, the latest entries, is never evicted (kvpress's KnormPress has none: knorm(window=0))."""

    scorer: ScorerEviction
    every: int = 512
    budget: int = 2048
    merge_budget: int = 32
    seed: int = 0
    sizes_layers = False

    def _check(self) -> None:
        super()._check()
        check_positive_int("every", self.every)
        check_positive_int("budget", self.budget)
        check_positive_int("merge_budget", self.merge_budget)
        check_positive_int("seed", self.seed, 0)
        if not getattr(type(self.scorer), "decodes", True):
            raise ValueError(f"CAMDecoding cannot run {type(self.scorer).__name__} over a decoding cache: it reads more "
                             "of the model than the cache and the latest queries hold")

    def begin(self, prefill: PrefillInfo) -> None:
        super().begin(prefill)
        self._heads = prefill.num_heads
        self._received: dict[int, torch.Tensor] = {}  # layer -> [B, G, cap] attention received while decoding

    prefill_budget = None  # its budget is while decoding: the prefill keeps everything

    def keep(self, layer: int, view: LayerView) -> torch.Tensor | None:
        return None  # kvpress's CAMPress compresses while decoding only

    def recent_queries(self, prompt_length: int, new_tokens: int = 0) -> int:
        return max(self.every, self.scorer.window)  # every query since the last cut, and the scorer's window

    def during_decode(self, layer: int, view: DecodeView) -> torch.Tensor | None:
        if view.step == 0:
            return None
        received = self._receive(layer, view)
        counts = view.valid[:, 0, : view.length].sum(-1)  # every head holds the same entries
        if not bool((counts > self.budget).any()):
            return None
        slots = left_padded(keep_from_mask(view.valid[:, 0, : view.length]), counts)  # [B, n] in use, in order
        prompt = cache_as_prompt(layer, view, slots[:, None].expand(-1, view.keys.shape[1], -1), self._heads,
                                 self.scorer.window, type(self).__name__)
        heads = view.keys.shape[1]
        scores = prefix_scores(self.scorer, self.scorer.score(prompt), prompt, heads).float().mean(1)  # [B, m]
        scores = torch.cat([scores, scores.new_full((scores.shape[0], self.scorer.window), float("inf"))], -1)
        keep = torch.full((view.keys.shape[0], heads, int(counts.clamp(max=self.budget).max())), -1,
                          dtype=torch.long, device=slots.device)
        self._merged = view.values[:, :, : view.length].float().clone()
        for b, n in enumerate(counts.tolist()):
            own = slots[b, -n:]  # this sequence's slots, oldest first
            if n <= self.budget:
                keep[b, :, :n] = own
                continue
            mine = scores[b, -n:]
            order = torch.sort(mine, descending=True, stable=True).indices
            kept, evicted = order[: self.budget].sort().values, order[self.budget:].sort().values
            draws = torch.Generator().manual_seed(self.seed * 1_000_003 + layer * 10_007 + view.step)  # as alone
            self._merge(b, own, kept, evicted, mine, received[b], draws)
            keep[b, :, : self.budget] = own[kept]
        return keep

    def merge_during_decode(self, layer: int, view: DecodeView, keep: torch.Tensor) -> torch.Tensor | None:
        merged = self._merged.gather(2, keep.clamp(min=0)[..., None].expand(-1, -1, -1, self._merged.shape[-1]))
        self._received[layer] = torch.cat([self._received[layer].gather(2, keep.clamp(min=0)) * (keep >= 0),
                                           self._received[layer].new_zeros(*keep.shape[:2], view.keys.shape[2]
                                                                           - keep.shape[2])], -1)
        return merged

    def _merge(self, b: int, own, kept, evicted, scores, received, draws: torch.Generator) -> None:
        """kvpress's CAMPress.compress for one sequence: `kept`, `evicted` ascending columns of `own`."""
        k = min(self.every, len(evicted))
        by_score = torch.sort(scores[evicted].flip(0), descending=True, stable=True).indices[:k]  # ties: the later
        merging = evicted[(len(evicted) - 1 - by_score)].sort().values
        starts = torch.searchsorted(kept, merging, right=True)
        window = starts[:, None] + torch.arange(self.merge_budget, device=kept.device)
        inside = window < len(kept)
        targets = own[kept[window.clamp(max=len(kept) - 1)]]  # [k, merge_budget] slots
        count = inside.sum(-1)
        a = received[:, own]  # [G, n] by column
        target_a = received[:, targets] * inside  # [G, k, m]
        mean = target_a.sum(-1) / count.clamp(min=1)
        prob = (a[:, merging] / mean).nan_to_num(nan=0.0, posinf=1.0).clamp(0, 1)  # [G, k]
        drawn = torch.bernoulli(prob.cpu(), generator=draws).to(prob.device)
        share = torch.where(count > 0, drawn / count.clamp(min=1), 0.0)  # [G, k]
        values = self._merged[b][:, own[merging]]  # [G, k, d]
        add = (values * share[..., None])[:, :, None, :] * inside[None, :, :, None]  # [G, k, m, d]
        slots = targets.flatten()
        for g in range(add.shape[0]):
            self._merged[b, g].index_add_(0, slots, add[g].reshape(-1, add.shape[-1]))

    def _receive(self, layer: int, view: DecodeView) -> torch.Tensor:
        """Add the attention the queries since the last call paid each entry (each query over the
        entries up to its position), averaged over each KV head's query heads: [B, G, cap]."""
        b, g, cap, d = view.keys.shape
        if layer not in self._received:
            self._received[layer] = torch.zeros(b, g, cap, device=view.keys.device)
        since = self.every  # called every `every` steps: the queries since the last call
        q = view.queries[:, :, -since:].float()  # [B, H, e, d]
        ok = view.query_valid[:, -since:]
        keys = view.keys[:, :, : view.length].float().repeat_interleave(self._heads // g, dim=1)
        logits = q @ keys.transpose(-1, -2) / d ** 0.5  # [B, H, e, n]
        positions = view.positions[:, :, : view.length].repeat_interleave(self._heads // g, dim=1)
        seen = view.valid[:, :, : view.length].repeat_interleave(self._heads // g, dim=1)[:, :, None, :] & (
            positions[:, :, None, :] <= view.query_positions[:, None, -since:, None]) & ok[:, None, :, None]
        probs = torch.softmax(logits.masked_fill(~seen, float("-inf")), -1).nan_to_num(0.0)
        self._received[layer][:, :, : view.length] += probs.sum(2).view(b, g, self._heads // g, -1).mean(2)
        return self._received[layer]

