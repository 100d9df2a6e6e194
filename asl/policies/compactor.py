"""Compactor's scorers: approximate key leverage, non-causal chunked attention and their blend
(kvpress's LeverageScorePress, NonCausalAttnPress and CompactorPress; docs/algorithms.md section 19)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import LayerView, check_positive_int, is_number
from .scorer import ScorerEviction


def z_scores(x: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std over the whole tensor (kvpress normalises so, the std unbiased)."""
    return (x - x.mean()) / x.std().clamp_min(1e-6)


def leverage(keys: torch.Tensor, sketch: torch.Tensor | None) -> torch.Tensor:
    """Statistical leverage of each key, diag(X (X^T X)^-1 X^T) with X the keys [G, n, d] centred
    over the sequence and, with a `sketch` [G, d, k], projected by it; X^T X factored by Cholesky
    with kvpress's jitter (1e-2, then 10x until it factors). -> [G, n], float32."""
    x = keys.float() - keys.float().mean(-2, keepdim=True)
    if sketch is not None:
        x = x @ sketch
    gram = x.transpose(-2, -1) @ x
    gram = 0.5 * (gram + gram.transpose(-2, -1))
    eye, jitter = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device), 1e-2
    for _ in range(5):
        factor, info = torch.linalg.cholesky_ex(gram + jitter * eye)
        if not bool(info.any()):
            break
        jitter *= 10.0
    else:
        raise RuntimeError("Leverage: the keys' Gram matrix did not factor (Cholesky failed after 5 jitters)")
    solved = torch.cholesky_solve(x.transpose(-2, -1), factor)  # (X^T X)^-1 X^T
    return (x * solved.transpose(-2, -1)).sum(-1).clamp_min(0)


def non_causal_chunked_attention(q: torch.Tensor, k: torch.Tensor, chunk: int) -> torch.Tensor:
    """Per key, the attention it gets from the queries of its own chunk, every query of the chunk
    (no causal mask, no 1/sqrt(d) scale), summed: q, k [H, n, d] -> [H, n]. As kvpress: the
    sequence is padded with zero vectors to a multiple of `chunk`; in the last chunk the padding
    queries' logits are 0 (they spread 1/chunk over its keys) and the padding keys' are -1e-9."""
    h, n, d = k.shape
    total = math.ceil(n / chunk) * chunk
    pad = torch.zeros(h, total - n, d, dtype=q.dtype, device=q.device)
    qc, kc = torch.cat([q, pad], 1).view(h, -1, chunk, d), torch.cat([k, pad], 1).view(h, -1, chunk, d)
    dots = qc @ kc.transpose(-2, -1)  # [H, chunks, chunk, chunk]
    start = (n // chunk) * chunk if total > n else ((n - 1) // chunk) * chunk
    outside = torch.arange(start, start + chunk, device=q.device) >= n
    dots[:, -1].masked_fill_(outside[:, None], 0)
    dots[:, -1].masked_fill_(outside[None, :], -1e-9)
    return torch.softmax(dots.float(), dim=-1).sum(-2).reshape(h, total)[:, :n]


def _per_sequence(policy, view: LayerView, own) -> torch.Tensor:
    """[B, G, n - window] from `own(view, b, cols) -> [G, alive]` over each sequence's real tokens."""
    b, g, n, _ = view.keys.shape
    scores = torch.zeros(b, g, n, device=view.keys.device)
    for i, alive in enumerate(view.alive.tolist()):
        cols = slice(n - alive, n)
        scores[i, :, cols] = own(view, i, cols)
    return scores[:, :, : n - policy.window]


@dataclass
class Leverage(ScorerEviction):
    """Compactor's query-agnostic half (Chari & Van Durme, arXiv 2507.08143; kvpress's
    LeverageScorePress): each entry's approximate leverage among the layer's pre-RoPE keys (a
    Gaussian sketch of `sketch_dimension` columns, Cholesky), z-normalised per sequence. kvpress
    draws its sketch from the global random state at every call; ours from `seed` and the layer,
    so a run repeats. `sketch_dimension=None` computes the exact leverage. kvpress's is `window=0`."""

    sketch_dimension: int | None = 48
    seed: int = 0

    def _check(self) -> None:
        super()._check()
        if self.sketch_dimension is not None:
            check_positive_int("sketch_dimension", self.sketch_dimension)
        check_positive_int("seed", self.seed, 0)

    def sketch(self, view: LayerView) -> torch.Tensor | None:
        """The layer's Gaussian sketch [G, d, k] / sqrt(k), drawn on the CPU (the same on every device)."""
        if self.sketch_dimension is None:
            return None
        g, d, k = view.keys.shape[1], view.keys.shape[-1], self.sketch_dimension
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + view.layer)
        return (torch.randn(g, d, k, generator=gen) / math.sqrt(k)).to(view.keys.device)

    def leverage_z(self, view: LayerView, i: int, cols: slice) -> torch.Tensor:
        keys = view.prerope_keys(type(self).__name__)[i, :, cols]
        return z_scores(leverage(keys, self.sketch(view)))

    def score(self, view: LayerView) -> torch.Tensor:
        return _per_sequence(self, view, self.leverage_z)


@dataclass
class NonCausalAttention(ScorerEviction):
    """Compactor's attention half (kvpress's NonCausalAttnPress): the attention each entry gets
    from every query of its `chunk_size` chunk (non-causal, unscaled), averaged over the query
    heads of its KV group, times its value's norm, averaged over 3 neighbours (zero-padded),
    z-normalised per sequence. kvpress's is `window=0`."""

    chunk_size: int = 256

    def _check(self) -> None:
        super()._check()
        check_positive_int("chunk_size", self.chunk_size)

    def attention_z(self, view: LayerView, i: int, cols: slice) -> torch.Tensor:
        q, k, v = view.queries[i, :, cols].float(), view.keys[i, :, cols].float(), view.values[i, :, cols].float()
        g = k.shape[0]
        attn = non_causal_chunked_attention(q, k.repeat_interleave(q.shape[0] // g, 0), self.chunk_size)
        scores = attn.view(g, -1, attn.shape[-1]).mean(1) * v.norm(dim=-1)
        return z_scores(F.avg_pool1d(scores[None], kernel_size=3, padding=1, stride=1)[0])

    def score(self, view: LayerView) -> torch.Tensor:
        return _per_sequence(self, view, self.attention_z)


@dataclass
class Compactor(ScorerEviction):
    """Compactor (Chari & Van Durme, arXiv 2507.08143; kvpress's CompactorPress): `blending` times
    the leverage scores plus the non-causal attention scores, both over the entries between the
    first `sink_size_start` and the last `sink_size_end`, which score the most. `blending` None:
    kvpress's rule, the compression ratio (`ratio`), or 0.35 with a budget. Scores are normalised
    per sequence (kvpress: over the whole batch, the same for one sequence). kvpress's is
    `window=0` with `ratio`."""

    sink_size_start: int = 8
    sink_size_end: int = 4
    chunk_size: int = 256
    sketch_dimension: int | None = 48
    blending: float | None = None
    seed: int = 0

    def _check(self) -> None:
        super()._check()
        check_positive_int("sink_size_start", self.sink_size_start, 0)
        check_positive_int("sink_size_end", self.sink_size_end, 0)
        if self.blending is not None and not is_number(self.blending):
            raise ValueError(f"blending must be None or a number, got {self.blending!r}")
        self._parts()

    def _parts(self) -> tuple[Leverage, NonCausalAttention]:
        return (Leverage(window=0, sketch_dimension=self.sketch_dimension, seed=self.seed),
                NonCausalAttention(window=0, chunk_size=self.chunk_size))

    def blend(self, view: LayerView, i: int, cols: slice) -> torch.Tensor:
        n = cols.stop - cols.start
        start = min(self.sink_size_start, n)
        end = n - min(self.sink_size_end, max(0, n - start))
        g = view.keys.shape[1]
        if end - start < 2:  # nothing between the sinks to rank
            return torch.ones(g, n, device=view.keys.device)
        inner = slice(cols.start + start, cols.start + end)
        lev, attn = self._parts()
        weight = self.blending if self.blending is not None else (self.ratio if self.ratio is not None else 0.35)
        scores = weight * lev.leverage_z(view, i, inner) + attn.attention_z(view, i, inner)
        return F.pad(scores, (start, n - end), value=float(scores.max()))

    def score(self, view: LayerView) -> torch.Tensor:
        return _per_sequence(self, view, self.blend)
