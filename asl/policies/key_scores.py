"""Scorers that read the keys alone, no attention (kvpress's KnormPress, KeyDiffPress and
RandomPress; docs/algorithms.md section 19). Each scores the prefix entries per KV head;
`ScorerEviction` keeps the best `budget - window` (or, with `ratio`, kvpress's count)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import LayerView, check_positive_int
from .scorer import ScorerEviction


def _prefix_keys(policy: ScorerEviction, view: LayerView) -> torch.Tensor:
    """The prefix's keys [B, G, m, d] in float32 at least: a bf16 norm ties distinct entries."""
    keys = view.keys[:, :, : view.width - policy.window]
    return keys.to(torch.promote_types(keys.dtype, torch.float32))


@dataclass
class KNorm(ScorerEviction):
    """K-norm (Devoto et al., EMNLP 2024, arXiv 2406.11430): keys of low L2 norm draw high
    attention, so the lowest-norm keys stay (score: the negated norm)."""

    def score(self, view: LayerView) -> torch.Tensor:
        return -torch.linalg.vector_norm(_prefix_keys(self, view), dim=-1)


@dataclass
class KeyDiff(ScorerEviction):
    """KeyDiff (Park et al., arXiv 2504.15364): the keys least like the mean of the normalised
    keys stay (score: minus the cosine similarity to that anchor). The anchor is the mean over
    the sequence's real prefix entries (kvpress's is over every entry it scores; the same for
    one unpadded sequence and `window=0`). The paper's block-wise iteration is kvpress's
    BlockPress, not this."""

    def score(self, view: LayerView) -> torch.Tensor:
        keys = _prefix_keys(self, view)
        real = view.valid[:, None, : keys.shape[2], None]
        unit = F.normalize(keys, p=2, dim=-1) * real
        anchor = unit.sum(2, keepdim=True) / real.sum(2, keepdim=True).clamp(min=1)
        return -F.cosine_similarity(keys, anchor, dim=-1)


@dataclass
class RandomScores(ScorerEviction):
    """Random scores, the baseline (kvpress's RandomPress): uniform per entry and KV head, from
    a generator seeded with `seed` at every layer, as kvpress seeds it; drawn per sequence over
    its own real entries, so a batch chooses as each prompt alone does."""

    seed: int = 0

    def _check(self) -> None:
        super()._check()
        check_positive_int("seed", self.seed, 0)

    def score(self, view: LayerView) -> torch.Tensor:
        b, g, m = view.keys.shape[0], view.keys.shape[1], view.width - self.window
        scores = torch.zeros(b, g, m, device=view.keys.device)
        for i, alive in enumerate(view.alive.tolist()):
            generator = torch.Generator(device=view.keys.device).manual_seed(self.seed)
            real = max(0, alive - self.window)
            scores[i, :, m - real:] = torch.rand(g, real, generator=generator, device=view.keys.device)
        return scores


@dataclass
class LagKV(ScorerEviction):
    """LagKV (Liang et al., arXiv 2504.04704; kvpress's LagKVPress): the prefix after `sink`
    tokens is cut into partitions of `lag` tokens; a token's score is the spread (std over the
    channels) of its key and of its value, min-max scaled by the next partition's range,
    softmaxed within its partition and averaged over key and value, then (unless
    `cross_scoring`) turned into its rank within the partition over `lag`. The sinks and the
    last partition with the remainder score 1, the most; a prefix shorter than `sink + 2 lag`
    keeps its newest tokens first. Per sequence, over its real entries."""

    sink: int = 4
    lag: int = 128
    cross_scoring: bool = False

    def _check(self) -> None:
        super()._check()
        check_positive_int("sink", self.sink, 0)
        check_positive_int("lag", self.lag)

    def score(self, view: LayerView) -> torch.Tensor:
        g, m = view.keys.shape[1], view.width - self.window
        scores = torch.zeros(view.keys.shape[0], g, m, device=view.keys.device)
        for b, alive in enumerate(view.alive.tolist()):
            real = max(0, alive - self.window)
            cols = slice(m - real, m)
            scores[b, :, cols] = self._own(view.keys[b, :, cols].float(), view.values[b, :, cols].float())
        return scores

    def _own(self, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """One sequence's scores [G, n] from its keys and values [G, n, d] (kvpress's `score`)."""
        g, n, d = keys.shape
        if n < self.sink + 2 * self.lag:  # no partition to score: the newest tokens first
            out = torch.ones(g, n, device=keys.device)
            if n > self.sink:
                out[:, self.sink:] = torch.arange(n - self.sink, device=keys.device) / (n - self.sink)
            return out
        end = self.sink + ((n - self.sink) // self.lag) * self.lag
        parts = lambda x: x[:, self.sink:end].reshape(g, -1, self.lag, d)  # noqa: E731
        score = (self._spread(parts(keys)) + self._spread(parts(values))) / 2  # [G, P - 1, lag]
        if not self.cross_scoring:
            score = score.argsort(-1).argsort(-1) / self.lag
        ones = torch.ones(g, self.sink, device=keys.device), torch.ones(g, self.lag + n - end, device=keys.device)
        return torch.cat([ones[0], score.reshape(g, -1), ones[1]], dim=-1)

    def _spread(self, x: torch.Tensor) -> torch.Tensor:
        """Each partition but the last, scaled by the next one's range: [G, P - 1, lag]."""
        ref, own = x[:, 1:], x[:, :-1]
        low, high = ref.min(-2, keepdim=True).values, ref.max(-2, keepdim=True).values
        return ((own - low) / (high - low)).std(-1).softmax(-1)
