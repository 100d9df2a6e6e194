"""One decoder for the Llama, Mistral, Qwen2, Qwen3, Phi-3, Mixtral and Qwen3-MoE families (Phi-3:
fused projections, partial rotary, LongRoPE; the MoE models: routed experts).

Module names mirror Hugging Face checkpoints (`model.layers.0.self_attn.q_proj`, ...), so a
state dict loads as is. A layer is split into `project` (post-RoPE q/k/v, what policies
read), `attend` and `finish`, so the prefill loop in `asl.prefill` can change which tokens
are alive between layers and store a different KV set per layer and per KV head.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .rope import Rope, apply_rope


def _one_token_on_cpu_compiled(x: torch.Tensor) -> bool:
    return x.shape[-2] == 1 and x.device.type == "cpu" and torch.compiler.is_compiling()


class Linear(nn.Linear):
    """nn.Linear whose one-token product, when compiled for the CPU, is a multiply-and-sum.

    Inductor turns that into one fused, vectorised reduction that streams the weights at
    memory speed; the BLAS GEMV it replaces reached a third of that here (MKL on AMD EPYC:
    the lm_head took 13.5 ms instead of 4.1 ms), and decoding is all GEMVs.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _one_token_on_cpu_compiled(x):
            return super().forward(x)
        y = (x[..., None, :] * self.weight).sum(-1)
        return y if self.bias is None else y + self.bias


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class Attention(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = c.num_heads, c.num_kv_heads, c.head_dim
        if c.fused:  # Phi-3's one projection, named as its checkpoints name it
            self.qkv_proj = Linear(c.hidden_size, (c.num_heads + 2 * c.num_kv_heads) * c.head_dim, bias=c.qkv_bias)
        else:
            self.q_proj = Linear(c.hidden_size, c.num_heads * c.head_dim, bias=c.qkv_bias)
            self.k_proj = Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=c.qkv_bias)
            self.v_proj = Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=c.qkv_bias)
        self.o_proj = Linear(c.num_heads * c.head_dim, c.hidden_size, bias=c.o_bias)
        if c.qk_norm:
            self.q_norm = RMSNorm(c.head_dim, c.rms_norm_eps)
            self.k_norm = RMSNorm(c.head_dim, c.rms_norm_eps)

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """x [B, n, D] -> post-RoPE q [B, H, n, d], k and v [B, G, n, d]."""
        b, n, _ = x.shape
        if hasattr(self, "qkv_proj"):
            q, k, v = self.qkv_proj(x).split([self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim,
                                              self.num_kv_heads * self.head_dim], dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.view(b, n, self.num_heads, self.head_dim)
        k = k.view(b, n, self.num_kv_heads, self.head_dim)
        v = v.view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rope(q.transpose(1, 2), cos, sin)
        k = apply_rope(k.transpose(1, 2), cos, sin)
        # Head-major copies: the projections leave q/k/v token-major, and the CPU flash-attention
        # kernel reads strided K/V rows ~10% slower (qwen2.5-0.5b shapes, 4,096 tokens); the
        # copies cost a fraction of that. One-token decode steps are contiguous already.
        return q.contiguous(), k.contiguous(), v.contiguous()


MLP_CHUNK = 2048  # tokens per MLP call in prefill


class MLP(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        if c.fused:  # Phi-3: gate and up in one projection
            self.gate_up_proj = Linear(c.hidden_size, 2 * c.intermediate_size, bias=c.mlp_bias)
        else:
            self.gate_proj = Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias)
            self.up_proj = Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias)
        self.down_proj = Linear(c.intermediate_size, c.hidden_size, bias=c.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "gate_up_proj"):
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
            return self.down_proj(F.silu(gate) * up)
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        gate = F.silu(self.gate_proj(x), inplace=True)  # inference: no extra [n, I] temporaries
        return self.down_proj(gate.mul_(self.up_proj(x)))


class Router(nn.Module):
    """Which experts each token goes to: the router's softmax in float32, its top k, renormalised
    (Mixtral always; Qwen3-MoE with norm_topk_prob, and back in the model's dtype)."""

    def __init__(self, c: ModelConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(c.num_experts, c.hidden_size))
        self.top_k, self.normalize = c.experts_per_token, c.normalize_top_k
        self.cast = c.model_type == "qwen3_moe"

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs = F.softmax(F.linear(x, self.weight).float(), dim=-1)
        weights, experts = torch.topk(probs, self.top_k, dim=-1)
        if self.normalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return (weights.to(x.dtype) if self.cast else weights), experts


class Experts(nn.Module):
    """The experts' gated SiLU MLPs as 3-D weights (transformers 5's layout): gate_up_proj
    [E, 2I, D], down_proj [E, D, I]."""

    def __init__(self, c: ModelConfig):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.empty(c.num_experts, 2 * c.expert_size, c.hidden_size))
        self.down_proj = nn.Parameter(torch.empty(c.num_experts, c.hidden_size, c.expert_size))

    def forward(self, x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """x [N, D], the router's weights and experts [N, k] -> [N, D]."""
        if torch.compiler.is_compiling():  # a decode step: each token's experts gathered, no data-dependent loop
            gate, up = torch.einsum("nd,nkod->nko", x, self.gate_up_proj[experts]).chunk(2, dim=-1)
            out = torch.einsum("nki,nkdi->nkd", F.silu(gate) * up, self.down_proj[experts])
            return (out * weights[..., None]).sum(1).to(x.dtype)
        out = torch.zeros_like(x)
        for e in experts.unique().tolist():  # as transformers: each expert over the tokens routed to it
            slot, token = torch.where((experts == e).T)
            gate, up = F.linear(x[token], self.gate_up_proj[e]).chunk(2, dim=-1)
            y = F.linear(F.silu(gate) * up, self.down_proj[e]) * weights[token, slot, None]
            out.index_add_(0, token, y.to(out.dtype))
        return out


class MoE(nn.Module):
    """A mixture-of-experts MLP (Mixtral, Qwen3-MoE), named as transformers 5 names it."""

    def __init__(self, c: ModelConfig):
        super().__init__()
        self.gate = Router(c)
        self.experts = Experts(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        return self.experts(flat, *self.gate(flat)).view_as(x)


class DecoderLayer(nn.Module):
    def __init__(self, c: ModelConfig, index: int = 0):
        super().__init__()
        self.self_attn = Attention(c)
        self.mlp = MoE(c) if c.is_moe(index) else MLP(c)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)

    def project(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        return self.self_attn.project(self.input_layernorm(h), cos, sin)

    def prefill(self, h, q, k, v, mask, valid, last: bool) -> torch.Tensor:
        """The layer's output over the prompt from its projections; for the `last` layer only
        the last token's (its logits are all that is read), so the rest is never computed."""
        if last:
            return self.finish(h[:, -1:], last_token_attention(q[:, :, -1:], k, v, valid))
        return self.finish(h, prefill_attention(q, k, v, mask))

    def finish(self, h: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """attn [B, n, H*d] (heads merged) -> the layer's output hidden states.

        In inference, long prompts run the MLP MLP_CHUNK tokens at a time, so its
        [n, intermediate] temporaries stay bounded (the largest tensors of a prefill).
        """
        h = h + self.self_attn.o_proj(attn)
        n = h.shape[-2]
        if torch.is_grad_enabled() or torch.compiler.is_compiling() or n <= MLP_CHUNK:
            return h + self.mlp(self.post_attention_layernorm(h))
        for start in range(0, n, MLP_CHUNK):
            part = h[:, start : start + MLP_CHUNK]
            part += self.mlp(self.post_attention_layernorm(part))  # h is this function's own tensor
        return h


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


def prefill_attention(q, k, v, mask: torch.Tensor | None) -> torch.Tensor:
    """Causal GQA attention over the alive tokens; `mask` [B, 1, n, n] only when padded."""
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=True)
    b, h, n, d = out.shape
    return out.transpose(1, 2).reshape(b, n, h * d)


def last_token_attention(q_last, k, v, valid: torch.Tensor) -> torch.Tensor:
    """The last alive token's attention over all alive keys: q_last [B, H, 1, d] -> [B, 1, H*d].

    Rows are left-padded, so the last column is real in every row and sees every valid key.
    """
    mask = None if bool(valid.all()) else valid[:, None, None, :]
    out = F.scaled_dot_product_attention(q_last, k, v, attn_mask=mask, enable_gqa=True)
    b, h, _, d = out.shape
    return out.reshape(b, 1, h * d)


def decode_attention(q, k_cache, v_cache, valid) -> torch.Tensor:
    """One new token against per-KV-head caches.

    q [B, H, 1, d]; caches [B, G, cap, d]; valid [B, G, cap] bool. The H/G query heads of a
    group ride in the "query length" slot, so each KV head's own mask applies and nothing
    is repeated.
    """
    b, h, _, d = q.shape
    g = k_cache.shape[1]
    out = F.scaled_dot_product_attention(q.view(b, g, h // g, d), k_cache, v_cache, attn_mask=valid[:, :, None, :])
    return out.reshape(b, 1, h * d)


class Body(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(c, i) for i in range(c.num_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)


class Decoder(nn.Module):
    """The causal LM. `forward` is the plain full-sequence pass (used to check logits);
    generation goes through `asl.prefill` and `asl.generation`."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = Body(config)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.rope = Rope(config)

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.layers

    def embed(self, ids: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """Where every pass starts: the tokens' embeddings and their RoPE tables (cos, sin)."""
        h = self.model.embed_tokens(ids)
        return h, self.rope(positions, h.dtype)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.model.norm(h)).float()

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, n, V] for every token (left padding marked by attention_mask == 0)."""
        valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        positions = positions_for(valid)
        mask = attention_mask_for(valid)
        h, rope = self.embed(input_ids, positions)
        for layer in self.layers:
            h = layer.prefill(h, *layer.project(h, *rope), mask, valid, last=False)
        return self.logits(h)
