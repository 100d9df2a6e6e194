"""The prefill: the prompt runs layer by layer and each layer's KV entries are stored.

Sequences of a batch are left-padded; `valid` marks real tokens. Positions are explicit
per token so that a later selection can drop tokens and keep the survivors' original
positions.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .models.cache import KVCache, LayerCache
from .models.decoder import Decoder, prefill_attention


def positions_for(valid: torch.Tensor) -> torch.Tensor:
    """Position ids of left-padded rows: 0.. over the real tokens, 0 on padding."""
    return (valid.long().cumsum(-1) - 1).clamp(min=0)


def attention_mask_for(valid: torch.Tensor) -> torch.Tensor | None:
    """Causal mask that hides padding keys, or None when nothing is padded (fast path).

    A padding query sees only itself, so its softmax is defined; its output is never used.
    """
    if bool(valid.all()):
        return None
    n = valid.shape[-1]
    causal = torch.ones(n, n, dtype=torch.bool, device=valid.device).tril()
    mask = causal & valid[:, None, None, :]
    return mask | torch.eye(n, dtype=torch.bool, device=valid.device)


@dataclass
class PrefillResult:
    logits: torch.Tensor  # [B, V] of the last prompt token
    cache: KVCache
    alive_tokens: list[list[int]]  # [B][L] real tokens each layer ran on
    next_positions: torch.Tensor  # [B] position of the first generated token


@torch.inference_mode()
def prefill(model: Decoder, input_ids: torch.Tensor, valid: torch.Tensor, extra_slots: int) -> PrefillResult:
    dtype = model.model.embed_tokens.weight.dtype
    positions = positions_for(valid)
    mask = attention_mask_for(valid)
    cos, sin = model.rope(positions, dtype)
    h = model.model.embed_tokens(input_ids)
    g = model.config.num_kv_heads
    layers, alive = [], []
    for layer in model.layers:
        q, k, v = layer.project(h, cos, sin)
        h = layer.finish(h, prefill_attention(q, k, v, mask))
        layers.append(LayerCache.from_prefill(k, v, valid[:, None, :].expand(-1, g, -1), extra_slots))
        alive.append(valid.sum(-1))
        del q, k, v
    return PrefillResult(
        logits=model.logits(h[:, -1]),
        cache=KVCache(layers),
        alive_tokens=torch.stack(alive, 1).tolist(),
        next_positions=valid.sum(-1),
    )
