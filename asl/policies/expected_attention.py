"""Scorers that read the model besides the layer's q/k/v (kvpress's ExpectedAttentionPress and
CriticalKVPress; docs/algorithms.md section 19): the attention that future queries are
expected to pay, from the statistics of the prompt's queries and RoPE's rotation over the
next positions; and any scorer's scores weighted by what each value adds to the layer's
output through its output projection."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .allocate import ScorerWrapper
from .base import LayerView, check_positive_int, is_number, top_prefix
from .scorer import ScorerEviction, prefix_scores


def mean_rotation(rope, start: torch.Tensor, count: int, d: int) -> torch.Tensor:
    """RoPE's rotation matrix averaged over the `count` positions from `start` [B]: [B, d, d]
    (rows i and i + r/2 turn together, as `apply_rope`'s rotate-half pairs them; past the r dims
    a partial rotary factor turns, the identity)."""
    positions = start[:, None] + torch.arange(count, device=start.device)
    cos, sin = (t.float().mean(1) for t in rope(positions, torch.float32))  # [B, r], the average of R
    r, half = cos.shape[-1], cos.shape[-1] // 2
    pairs = torch.zeros(r, r, device=start.device)
    pairs[half:, :half], pairs[:half, half:] = torch.eye(half), -torch.eye(half)
    out = torch.eye(d, device=start.device).repeat(len(start), 1, 1)
    out[:, :r, :r] = torch.diag_embed(cos) + sin[:, :, None] * pairs
    return out


def after_sinks(view: LayerView, n_sink: int, window: int, score_one) -> torch.Tensor:
    """Prefix scores [B, G, n - window] of a scorer that skips the first `n_sink` real tokens:
    `score_one(i, first)` gives sequence i's [G, n'] from column `first` on; its sinks then score
    above every entry, and a sequence of sinks only scores all alike."""
    b, g, n = view.keys.shape[0], view.keys.shape[1], view.width
    scores = torch.zeros(b, g, n, device=view.keys.device)
    for i, alive in enumerate(view.alive.tolist()):
        first = n - alive + n_sink  # the first real column after the sinks
        if alive <= n_sink:
            scores[i, :, n - alive:] = 1.0
            continue
        own = score_one(i, first)
        scores[i, :, first:] = own
        scores[i, :, n - alive: first] = own.max() + 1
    return scores[:, :, : n - window]


@dataclass
class FutureQueryScorer(ScorerEviction):
    """What expected attention and CAPKV share: the prompt's pre-RoPE queries after the first
    `n_sink` tokens, read as the queries to come by RoPE's rotation averaged over the next
    `n_future_positions` positions; the sinks score above everything (`after_sinks`)."""

    n_future_positions: int = 512
    n_sink: int = 4
    decodes = False  # the statistics of every query and the model's RoPE

    def _check(self) -> None:
        super()._check()
        check_positive_int("n_future_positions", self.n_future_positions)
        check_positive_int("n_sink", self.n_sink, 0)

    def future_queries(self, view: LayerView) -> tuple[torch.Tensor, torch.Tensor]:
        """(pre-RoPE queries [B, H, n, d] in float32, the averaged rotation [B, d, d])."""
        queries = view.prerope_queries(type(self).__name__)
        return queries, mean_rotation(view.rope, view.positions[:, -1] + 1, self.n_future_positions,
                                      queries.shape[-1])


@dataclass
class ExpectedAttention(FutureQueryScorer):
    """Expected attention (Devoto et al., arXiv 2510.00636; kvpress's ExpectedAttentionPress):
    the prompt's pre-RoPE queries after the first `n_sink` tokens summarised by their mean and
    (with `use_covariance`) covariance per head, turned by RoPE's rotation averaged over the
    next `n_future_positions` positions; an entry's score is the softmax over the entries after
    the sinks of `mean.k / sqrt(d) + k' cov k / (2d)` (the expected exp(q.k / sqrt(d)) of a
    Gaussian query), averaged over the query heads of its group, times the value's L2 norm
    (`use_vnorm`; `epsilon` added first). The sinks score above everything. Per sequence over
    its real tokens; kvpress's is `window=0` with `ratio`."""

    use_covariance: bool = True
    use_vnorm: bool = True
    epsilon: float = 0.0

    def _check(self) -> None:
        super()._check()
        if not is_number(self.epsilon) or self.epsilon < 0:
            raise ValueError(f"epsilon must be a number >= 0, got {self.epsilon!r}")

    def score(self, view: LayerView) -> torch.Tensor:
        queries, rotation = self.future_queries(view)
        h, d, g = queries.shape[1], queries.shape[-1], view.keys.shape[1]

        def score_one(i: int, first: int) -> torch.Tensor:
            q = queries[i, :, first:]  # [H, n', d]
            mean = q.mean(1)  # [H, d]
            mean = mean @ rotation[i].T
            keys = view.keys[i, :, first:].float().repeat_interleave(h // g, dim=0)  # [H, n', d]
            logits = (keys @ mean[:, :, None])[..., 0] / math.sqrt(d)
            if self.use_covariance:
                centred = q - q.mean(1, keepdim=True)
                cov = rotation[i] @ (centred.transpose(1, 2) @ centred / q.shape[1]) @ rotation[i].T
                logits = logits + ((keys @ cov) * keys).sum(-1) / d / 2
            own = logits.softmax(-1).view(g, h // g, -1).mean(1)  # [G, n']
            if self.use_vnorm:
                own = (own + self.epsilon) * torch.linalg.vector_norm(view.values[i, :, first:].float(), dim=-1)
            return own

        return after_sinks(view, self.n_sink, self.window, score_one)


def output_l1(view: LayerView, who: str) -> torch.Tensor:
    """Per query head and entry, the L1 norm of the value's contribution to the layer's output,
    |W_o[h] v|_1 [B, H, n] (CriticalKV's `vwl1norm`), one head at a time to bound memory."""
    weight = view.model_part("out_proj", who).float()  # [hidden, H * d]
    h, g, d = view.queries.shape[1], view.keys.shape[1], view.values.shape[-1]
    per_head = weight.T.reshape(h, d, -1)  # [H, d, hidden]
    values = view.values.float()
    return torch.stack([torch.linalg.vector_norm(values[:, j // (h // g)] @ per_head[j], ord=1, dim=-1)
                        for j in range(h)], dim=1)


@dataclass
class CriticalKV(ScorerWrapper, ScorerEviction):
    """CriticalKV (Feng et al., arXiv 2502.03805; kvpress's CriticalKVPress) around a scorer:
    the scorer's best `first_stage_ratio` of the entries to keep are kept first; the rest by
    the scorer's score plus `epsilon`, times the L1 norm of the value projected through the
    output weights (averaged over the query heads of a KV head), what an entry can change in
    the layer's output. Its budget, window and ratio are the scorer's, read when it is built:
    `CriticalKV(SnapKV(budget=512))`. The paper pairs it with expected attention without its
    value norm (`ExpectedAttention(use_vnorm=False)`)."""

    scorer: ScorerEviction = None
    epsilon: float = 1e-4
    first_stage_ratio: float = 0.5
    budget: int = field(init=False, default=None)
    window: int = field(init=False, default=None)
    ratio: float | None = field(init=False, default=None)
    sizes_layers = False  # a ratio on the scorer is kvpress's way of sizing it
    decodes = False  # the layer's output projection

    def __post_init__(self) -> None:
        if isinstance(self.scorer, ScorerEviction):
            self.budget, self.window, self.ratio = self.scorer.budget, self.scorer.window, self.scorer.ratio
        super().__post_init__()

    def _check(self) -> None:
        ScorerWrapper._check(self)
        if not is_number(self.epsilon) or self.epsilon < 0:
            raise ValueError(f"epsilon must be a number >= 0, got {self.epsilon!r}")
        if not is_number(self.first_stage_ratio) or not 0 <= self.first_stage_ratio <= 1:
            raise ValueError(f"first_stage_ratio must be a number in [0, 1], got {self.first_stage_ratio!r}")

    def cached_heads(self, view: LayerView) -> int:
        return self.scorer.cached_heads(view)

    def first_stage(self, view: LayerView) -> torch.Tensor:
        """[B] entries kept on the scorer's score alone (kvpress's rounding: floor, at least 1)."""
        if self.ratio is None:
            counts = [int((self.budget - self.window) * self.first_stage_ratio)] * len(view.alive)
        else:
            counts = [int((1 - self.ratio) * n * self.first_stage_ratio) for n in view.alive.tolist()]
            counts = [max(1, c) if self.first_stage_ratio > 0 else 0 for c in counts]
        return torch.tensor(counts, device=view.valid.device)

    def score(self, view: LayerView) -> torch.Tensor:
        heads, m = self.scorer.cached_heads(view), view.width - self.window
        base = prefix_scores(self.scorer, self.scorer.score(view), view, heads).float()  # [B, heads, m]
        norms = output_l1(view, type(self).__name__)[..., :m]  # [B, H, m]
        if heads != norms.shape[1]:
            norms = norms.view(norms.shape[0], heads, -1, m).mean(2)
        scores = torch.where(base > float("-inf"), (base + self.epsilon) * norms, float("-inf"))
        first = top_prefix(base, self.first_stage(view))  # [B, heads, k] -1 pads
        hits = torch.zeros_like(scores).scatter_add_(-1, first.clamp(min=0), (first >= 0).float())
        return torch.where(hits > 0, torch.finfo(scores.dtype).max, scores)
