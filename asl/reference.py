"""The reference path: plain PyTorch, written to be obviously right (docs/algorithms.md).

Tests use it as the oracle for the policies and, later, for the custom ops. Clarity
wins over speed here: K is repeated per query head, the probabilities are held in full.
Layouts are left-padded: `valid` [B, n] is False on padding.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def window_attention(q: torch.Tensor, k: torch.Tensor, valid: torch.Tensor, window: int) -> torch.Tensor:
    """Section 1, step 1: softmax_fp32(Q[:, :, -w:] K^T / sqrt(d) + M) -> [B, H, w, n]."""
    b, h, n, d = q.shape
    g = k.shape[1]
    keys = k.repeat_interleave(h // g, dim=1).float()  # query head i reads KV head i // (H/G)
    logits = q[:, :, n - window:].float() @ keys.transpose(-1, -2) / math.sqrt(d)
    query_col = torch.arange(n - window, n, device=q.device)[:, None]
    key_col = torch.arange(n, device=q.device)[None, :]
    allowed = (key_col <= query_col)[None, None] & valid[:, None, None, :]
    logits = logits.masked_fill(~allowed, float("-inf"))
    probs = logits.softmax(-1)
    return torch.nan_to_num(probs, nan=0.0)  # a padding query row sees no key at all


def pool(scores: torch.Tensor, kernel: int, pooling: str) -> torch.Tensor:
    """Section 1, step 3, along the last dim: each column's window of `kernel` columns centred
    on it, zeros beyond the ends (counted in the average; never the maximum)."""
    half = kernel // 2
    pad = 0.0 if pooling == "avg" else float("-inf")
    windows = F.pad(scores, (half, half), value=pad).unfold(-1, kernel, 1)  # [..., m, kernel]
    return windows.mean(-1) if pooling == "avg" else windows.amax(-1)


def window_scores(q, k, valid, window: int, kernel: int = 7, pooling: str = "avg") -> torch.Tensor:
    """Section 1, steps 1-4: per-KV-head prefix scores [B, G, n - w]; -inf on padding."""
    b, h, n, _ = q.shape
    g = k.shape[1]
    m = n - window
    sums = window_attention(q, k, valid, window)[..., :m].sum(2)  # [B, H, m]
    pooled = pool(sums, kernel, pooling)
    per_kv_head = pooled.view(b, g, h // g, m).sum(2)
    return per_kv_head.masked_fill(~valid[:, None, :m], float("-inf"))


def token_scores(q, k, valid, window: int, kernel: int = 7, pooling: str = "avg") -> torch.Tensor:
    """Section 1, step 5: per-token prefix scores [B, n - w], summed over all heads."""
    return window_scores(q, k, valid, window, kernel, pooling).sum(1)


def token_ranks(scores: torch.Tensor) -> torch.Tensor:
    """Section 2: rank[j] = 1 + #{j' : s[j'] > s[j]}, ties to the lower index. [..., m] int64."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    positions = torch.arange(1, scores.shape[-1] + 1, device=scores.device).expand_as(order)
    return ranks.scatter_(-1, order, positions)


def rank_variance(ranks: torch.Tensor, k: int) -> torch.Tensor:
    """Section 3: ranks [T, B, m] of T layers -> the variance over the union of top-k sets. [B] fp64."""
    out = []
    for b in range(ranks.shape[1]):
        r = ranks[:, b].double()  # [T, m]
        union = (r <= k).any(0)  # a layer's k best ranks are exactly the ranks 1..k
        ru = r[:, union]
        out.append(((ru - ru.mean(0, keepdim=True)) ** 2).mean())
    return torch.stack(out)


def top_k_with_window(scores: torch.Tensor, k_prefix: int, n: int) -> torch.Tensor:
    """Sorted columns of the `k_prefix` best prefix scores (ties to the lower index) plus the window."""
    m = scores.shape[-1]
    top = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k_prefix]
    window = torch.arange(m, n, device=scores.device).expand(*top.shape[:-1], n - m)
    return torch.cat([top, window], -1).sort(-1).values


def asl_select(rank_history: list[torch.Tensor], k_prefix: int, tau: float, var0: float | None, force: bool):
    """One ASL evaluation for one sequence (section 3).

    rank_history: the last l_obs rank vectors [m]. Returns (select, ratio, var0).
    """
    v = float(rank_variance(torch.stack(rank_history)[:, None], k_prefix)[0])
    if var0 is None:
        var0, ratio = v, 1.0
    else:
        ratio = 0.0 if var0 == 0 else v / var0
    return (ratio < tau or force), ratio, var0


def snapkv_keep(scores: torch.Tensor, alive: int, budget: int, window: int) -> torch.Tensor | None:
    """Section 6, one sequence: scores [G, m] of its real prefix. Kept columns per head [G, budget]
    (of its own 0..alive-1 numbering), or None when everything fits."""
    if alive <= budget:
        return None
    return top_k_with_window(scores, budget - window, alive)


def gemfilter_scores(q_last: torch.Tensor, k: torch.Tensor, kernel: int) -> torch.Tensor:
    """Section 5: sum_h q_last,h . k_j (post-RoPE, no softmax, no scaling), avg-pooled. q_last [H, d], k [G, n, d]."""
    h, g = q_last.shape[0], k.shape[0]
    keys = k.repeat_interleave(h // g, dim=0).float()  # [H, n, d]
    raw = (keys @ q_last.float()[:, :, None]).squeeze(-1).sum(0)  # [n]
    return pool(raw, kernel, "avg")


def adakv_keep(scores: torch.Tensor, alive: int, budget: int, window: int, alpha: float) -> list[list[int]] | None:
    """AdaKV (one sequence, no padding): per head the kept columns, sorted. scores [G, m] over
    the prefix. Each head's `int((budget - window) * alpha)` best first, then the best of all
    heads together up to `(budget - window) * G`, ties to the lower (head, column); plus the window."""
    if alive <= budget:
        return None
    heads, m = scores.shape
    share = budget - window
    safe = int(share * alpha)
    guaranteed = set()
    for g in range(heads):
        order = sorted(range(m), key=lambda j: (-float(scores[g, j]), j))
        guaranteed |= {(g, j) for j in order[:safe]}
    ranked = sorted(((g, j) for g in range(heads) for j in range(m)),
                    key=lambda e: (e not in guaranteed, 0.0 if e in guaranteed else -float(scores[e]), e[0] * m + e[1]))
    chosen = set(ranked[: share * heads])
    return [sorted([j for j in range(m) if (g, j) in chosen] + list(range(alive - window, alive)))
            for g in range(heads)]


def pyramid_budgets(budget: int, window: int, beta: int, num_layers: int, prompt: int) -> list[int]:
    """PyramidKV's entries per head for each layer (KVCache-Factory's formula with kvpress's
    clamp to the prompt): a straight line from layer 0 down to the last, its mean `budget`."""
    share = budget - window
    low, high = share / beta, 2 * share - share / beta
    if high > prompt - window:
        high, low = prompt - window, 2 * share - (prompt - window)
    if not high >= low >= 0:
        return [budget] * num_layers
    return [window + round(high - i * (high - low) / (num_layers - 1)) for i in range(num_layers)]
