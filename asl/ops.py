"""The hot policy arithmetic, in one place: window scores, ranks, rank variance.

These are the functions the policies call. They compute exactly what `asl.reference`
defines, but without its shortcuts for clarity: the window scores use a grouped view of
the keys (no repeat_kv) and are computed in key chunks so the fp32 probabilities of a long
prompt are never all held at once. The compiled C++/CUDA kernels of csrc/ plug in here.
"""
from __future__ import annotations

import math

import torch

from . import reference

CHUNK = 4096  # keys per chunk of the window-score computation


def backend() -> str:
    """Which implementation the policies use."""
    return "torch"


def window_scores(q, k, valid, window: int, kernel: int = 7, pooling: str = "avg") -> torch.Tensor:
    """Per-KV-head prefix scores [B, G, n - w] (ALGORITHMS.md section 1), -inf on padding.

    Up to CHUNK keys it is one softmax; beyond, two passes over key chunks (row max and
    normaliser, then the normalised column sums), so the probabilities are never all held.
    Only the window's own keys need the causal mask; the prefix is seen by every window row.
    """
    b, h, n, d = q.shape
    g = k.shape[1]
    r, m = h // g, n - window
    qw = q[:, :, m:].float().reshape(b, g, r * window, d) / math.sqrt(d)  # the group's heads side by side
    query_col = torch.arange(m, n, device=q.device).repeat(r)  # [r*w], per row its own column
    padded = not bool(valid.all())

    def logits(start: int, stop: int) -> torch.Tensor:
        x = qw @ k[:, :, start:stop].float().transpose(-1, -2)  # [b, g, r*w, c]
        if stop > m:  # only the window's own keys need the causal mask
            key_col = torch.arange(start, stop, device=q.device)
            x = x.masked_fill((key_col[None, :] > query_col[:, None])[None, None], float("-inf"))
        if padded:
            x = x.masked_fill(~valid[:, None, None, start:stop], float("-inf"))
        return x

    sums = torch.empty(b, g, r, m, device=q.device)
    if n <= CHUNK:  # one chunk: a plain softmax
        p = torch.nan_to_num(logits(0, n).softmax(-1), nan=0.0)  # a padding query row sees no key
        sums.copy_(p[..., :m].reshape(b, g, r, window, m).sum(3))
    else:
        _two_pass_column_sums(logits, sums, n, m, window, (b, g, r))
    pooled = reference.pool(sums, kernel, pooling)
    return pooled.sum(2).masked_fill(~valid[:, None, :m], float("-inf"))


def _two_pass_column_sums(logits, sums, n: int, m: int, window: int, bgr: tuple) -> None:
    """Column sums of the softmax over key chunks: pass 1 the row max and normaliser, pass 2 the sums."""
    b, g, r = bgr
    row_max = torch.full((b, g, r * window, 1), float("-inf"), device=sums.device)
    row_sum = torch.zeros(b, g, r * window, 1, device=sums.device)
    for start in range(0, n, CHUNK):
        x = logits(start, min(start + CHUNK, n))
        new_max = torch.maximum(row_max, x.amax(-1, keepdim=True))
        safe = torch.where(torch.isinf(new_max), 0.0, new_max)
        row_sum = row_sum * torch.exp(torch.where(torch.isinf(row_max), float("-inf"), row_max - safe)) \
            + torch.exp(x - safe).sum(-1, keepdim=True)
        row_max = new_max
    safe_max = torch.where(torch.isinf(row_max), 0.0, row_max)
    inv_sum = torch.where(row_sum > 0, 1.0 / row_sum, 0.0)
    for start in range(0, m, CHUNK):
        stop = min(start + CHUNK, m)
        p = torch.exp(logits(start, stop) - safe_max) * inv_sum
        sums[..., start:stop] = p.view(b, g, r, window, stop - start).sum(3)


def token_ranks(scores: torch.Tensor) -> torch.Tensor:
    """Stable descending ranks (1 = best, ties to the lower index). [..., m] int64."""
    return reference.token_ranks(scores)


def rank_variance(ranks: torch.Tensor, k: int) -> torch.Tensor:
    """ranks [T, B, m] -> variance over the union of per-layer top-k (ALGORITHMS.md section 3). [B]"""
    union = (ranks <= k).any(0)  # [B, m]
    r = ranks.double()
    dev = (r - r.mean(0, keepdim=True)) ** 2  # [T, B, m]
    return (dev * union).sum((0, 2)) / (union.sum(-1) * ranks.shape[0])


def stable_descending_order(scores: torch.Tensor) -> torch.Tensor:
    """Column order best-first, ties to the lower column."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices
