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
