"""The ASL authors' top-p KV cache: per KV head, the smallest set holding p of the window's attention."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .base import EvictionPolicy, LayerView, check_positive_int, is_number, keep_from_mask


def window_attention(queries: torch.Tensor, keys: torch.Tensor, valid: torch.Tensor, window: int) -> torch.Tensor:
    """Per KV head, the mean over its query heads and the window's queries of their attention
    probabilities over every alive token (the window's own included, causally): [B, G, n] fp32."""
    b, h, n, d = queries.shape
    g = keys.shape[1]
    q = queries[:, :, n - window:].float().reshape(b, g, (h // g) * window, d)
    logits = q @ keys.float().transpose(-1, -2) / math.sqrt(d)  # [B, G, r*w, n]
    query_col = torch.arange(n - window, n, device=q.device).repeat(h // g)
    cols = torch.arange(n, device=q.device)
    mask = (cols[None, :] <= query_col[:, None])[None, None] & valid[:, None, None, :]
    return logits.masked_fill(~mask, float("-inf")).softmax(-1).nan_to_num(0.0).mean(2)


@dataclass
class TopP(EvictionPolicy):
    """Top-p KV (the ASL authors' `cache_p` option, `baseline/asl/customized_cache.py`).

    Per layer and KV head: the fewest tokens whose window attention (averaged over the
    group's query heads and the window's queries) reaches `p`, that count rounded down to a
    multiple of `multiple`, plus token 0 and the last `window` tokens. The count varies per
    head and per layer: there is no budget. As the original (`q_len <= select_k`), a sequence
    with at most `select_tokens` tokens alive at a layer keeps them all: after a selection of
    that size, every deeper layer caches the selected tokens whole (the bench sets it to the
    run's selection size; None prunes at every layer). docs/algorithms.md section 6.
    """

    p: float = 0.9
    window: int = 32
    multiple: int = 8
    select_tokens: int | None = None  # the original's select_k

    def _check(self) -> None:
        if not is_number(self.p) or not 0 < self.p <= 1:
            raise ValueError(f"p must be a number in (0, 1], got {self.p!r}")
        check_positive_int("window", self.window)
        check_positive_int("multiple", self.multiple)
        if self.select_tokens is not None:
            check_positive_int("select_tokens", self.select_tokens)

    def keep(self, layer: int, view: LayerView) -> torch.Tensor | None:
        skip = view.alive <= (self.select_tokens or 0)  # [B]: the original's "q_len <= select_k"
        if view.width <= self.window or (self.select_tokens is not None and view.width <= self.select_tokens):
            return None
        probs = window_attention(view.queries, view.keys, view.valid, self.window)  # [B, G, n]
        order = torch.sort(probs, dim=-1, descending=True, stable=True).indices
        reached = probs.gather(-1, order).cumsum(-1) >= self.p
        alive = view.alive[:, None].expand(-1, probs.shape[1])
        count = torch.where(reached.any(-1), reached.float().argmax(-1) + 1, alive)
        count = count // self.multiple * self.multiple  # [B, G]
        chosen = torch.arange(view.width, device=probs.device) < count[..., None]  # over the sorted order
        mask = torch.zeros(probs.shape, dtype=torch.bool, device=probs.device).scatter(-1, order, chosen)
        mask[..., view.width - self.window:] = True  # the window
        first = (view.width - view.alive)[:, None, None].expand(-1, probs.shape[1], 1)  # token 0 of each row
        mask.scatter_(-1, first, True)
        mask = torch.where(skip[:, None, None], True, mask)  # those sequences keep every token
        return keep_from_mask(mask & view.valid[:, None, :])
