"""The pure-torch kernels of the asl ops, registered by `asl/ops.py` where `asl._C` has none.

They take the ops' own arguments (`SCHEMAS` in ops.py) and reject the inputs csrc/checks.h
rejects, with its messages; the fake kernels run the same checks (tests/test_ops.py runs one table of bad inputs against both
implementations, so the two cannot drift). The window scores use a grouped view of the keys
(no repeat_kv), in key chunks of CHUNK so a long prompt's fp32 probabilities are never all
held at once.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

CHUNK = 4096  # keys per chunk of the window-score computation
_SCORE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def pool(scores: torch.Tensor, kernel: int, pooling: str) -> torch.Tensor:
    """Pooling along the last dim: stride 1, padding kernel // 2 (zeros counted for avg)."""
    x = scores.reshape(-1, 1, scores.shape[-1])
    pooled = (F.avg_pool1d if pooling == "avg" else F.max_pool1d)(x, kernel, stride=1, padding=kernel // 2)
    return pooled.reshape(scores.shape)


# ---- the kernels

def token_ranks(scores: torch.Tensor) -> torch.Tensor:
    """[B, m] -> int64 ranks, 1 = best, ties to the lower index (the inverse of the stable order)."""
    check_token_ranks(scores)
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    return torch.argsort(order, dim=-1) + 1


def rank_variance(ranks: torch.Tensor, k: int) -> torch.Tensor:
    """ranks [T, B, m] -> float64 [B]: the variance over the union of the layers' top-k."""
    check_rank_variance(ranks, k)
    union = (ranks <= k).any(0)  # [B, m]
    r = ranks.double()
    dev = (r - r.mean(0, keepdim=True)) ** 2  # [T, B, m]
    return (dev * union).sum((0, 2)) / (union.sum(-1) * ranks.shape[0])


def window_scores(q_window, keys, key_mask, kernel: int, pooling: str) -> torch.Tensor:
    """[B, G, n - w] per-KV-head prefix scores of the window's queries, -inf on padding.

    Up to CHUNK keys it is one softmax; beyond, two passes over key chunks (row max and
    normaliser, then the normalised column sums). Only the window's own keys need the
    causal mask; the prefix is seen by every window row.
    """
    check_window_scores(q_window, keys, key_mask, kernel, pooling)
    b, h, window, d = q_window.shape
    g, n = keys.shape[1], keys.shape[2]
    r, m = h // g, n - window
    qw = q_window.float().reshape(b, g, r * window, d) / math.sqrt(d)  # the group's heads side by side
    query_col = torch.arange(m, n, device=qw.device).repeat(r)  # [r*w], per row its own column
    padded = not bool(key_mask.all())

    def logits(start: int, stop: int) -> torch.Tensor:
        x = qw @ keys[:, :, start:stop].float().transpose(-1, -2)  # [b, g, r*w, c]
        if stop > m:
            key_col = torch.arange(start, stop, device=qw.device)
            x = x.masked_fill((key_col[None, :] > query_col[:, None])[None, None], float("-inf"))
        if padded:
            x = x.masked_fill(~key_mask[:, None, None, start:stop], float("-inf"))
        return x

    sums = torch.empty(b, g, r, m, device=qw.device)
    if n <= CHUNK:
        p = torch.nan_to_num(logits(0, n).softmax(-1), nan=0.0)  # a padding query row sees no key
        sums.copy_(p[..., :m].reshape(b, g, r, window, m).sum(3))
    else:
        _two_pass_column_sums(logits, sums, n, m, window, (b, g, r))
    return pool(sums, kernel, pooling).sum(2).masked_fill(~key_mask[:, None, :m], float("-inf"))


KERNELS = {"token_ranks": token_ranks, "rank_variance": rank_variance, "window_scores": window_scores}


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


# ---- the checks (also run by the fake kernels, so torch.compile rejects what the kernels reject)

def check_token_ranks(scores: torch.Tensor) -> None:
    if scores.dim() != 2:
        raise RuntimeError(f"asl::token_ranks: scores must be 2-D [B, m], got {scores.dim()}-D")
    if scores.dtype not in _SCORE_DTYPES:
        raise RuntimeError(f"asl::token_ranks: scores must be float32, float16 or bfloat16, got {scores.dtype}")


def check_rank_variance(ranks: torch.Tensor, k: int) -> None:
    if ranks.dim() != 3:
        raise RuntimeError(f"asl::rank_variance: ranks must be 3-D [T, B, m], got {ranks.dim()}-D")
    if ranks.dtype != torch.int64:
        raise RuntimeError(f"asl::rank_variance: ranks must be int64, got {ranks.dtype}")
    if ranks.shape[0] < 1:
        raise RuntimeError(f"asl::rank_variance: ranks needs at least one layer (T >= 1), got T = {ranks.shape[0]}")
    if not 1 <= k <= ranks.shape[2]:
        raise ValueError(f"asl::rank_variance: k must be in [1, m] = [1, {ranks.shape[2]}], got {k}")


def check_window_scores(q, keys, mask, kernel: int, pooling: str) -> None:
    op = "asl::window_scores"
    for name, t, dims, layout in (("q_window", q, 4, "[B, H, w, d]"), ("keys", keys, 4, "[B, G, n, d]"),
                                  ("key_mask", mask, 2, "[B, n]")):
        if t.dim() != dims:
            raise RuntimeError(f"{op}: {name} must be {dims}-D {layout}, got {t.dim()}-D")
    if q.dtype not in _SCORE_DTYPES:
        raise RuntimeError(f"{op}: q_window must be float32, float16 or bfloat16, got {q.dtype}")
    if keys.dtype != q.dtype:
        raise RuntimeError(f"{op}: keys must have q_window's dtype {q.dtype}, got {keys.dtype}")
    if mask.dtype != torch.bool:
        raise RuntimeError(f"{op}: key_mask must be bool, got {mask.dtype}")
    for name, t in (("keys", keys), ("key_mask", mask)):
        if t.device != q.device:
            raise RuntimeError(f"{op}: q_window and {name} must be on the same device, got {q.device} and {t.device}")
    b, h, w, d = q.shape
    g, n = keys.shape[1], keys.shape[2]
    if keys.shape[0] != b:
        raise RuntimeError(f"{op}: keys batch {keys.shape[0]} != q_window batch {b}")
    if keys.shape[3] != d:
        raise RuntimeError(f"{op}: keys head dim {keys.shape[3]} != q_window head dim {d}")
    if g < 1 or h % g != 0:
        raise RuntimeError(f"{op}: query heads H = {h} must be a multiple of the KV heads G = {g}")
    if mask.shape[0] != b or mask.shape[1] != n:
        raise RuntimeError(f"{op}: key_mask must be [B, n] = [{b}, {n}], got {list(mask.shape)}")
    if d < 1:
        raise RuntimeError(f"{op}: head dim must be >= 1, got {d}")
    if not 1 <= w < n:
        raise ValueError(f"{op}: need 1 <= w < n (window w = q_window.size(2) = {w}, keys n = {n})")
    if kernel < 1 or kernel % 2 != 1:
        raise ValueError(f"{op}: kernel must be a positive odd integer, got {kernel}")
    if pooling not in ("avg", "max"):
        raise ValueError(f'{op}: pooling must be "avg" or "max", got "{pooling}"')
