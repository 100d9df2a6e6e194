"""One decoder for the Llama, Mistral, Qwen2, Qwen3, Phi-3, Mixtral, Qwen3-MoE, Gemma 2 and Gemma 3
families (Phi-3: fused projections, partial rotary, LongRoPE; the MoE models: routed experts; Gemma:
(1 + w) norms before and after attention and MLP, GeGLU, sliding-window layers, Gemma 2's soft caps).

Module names mirror Hugging Face checkpoints (`model.layers.0.self_attn.q_proj`, ...), so a
state dict loads as is. A layer is split into `project` (post-RoPE q/k/v, what policies
read), `attend` and `finish`, so the prefill loop in `asl.prefill` can change which tokens
are alive between layers and store a different KV set per layer and per KV head.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..retrieval import retrieved
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


class GemmaRMSNorm(RMSNorm):
    """Gemma's: the weight is stored as w - 1, and the product is taken in float32 before the cast."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * (1.0 + self.weight.float())).type_as(x)


def norm(c: ModelConfig, dim: int) -> RMSNorm:
    return GemmaRMSNorm(dim, c.rms_norm_eps) if c.gemma else RMSNorm(dim, c.rms_norm_eps)


class Attention(nn.Module):
    def __init__(self, c: ModelConfig, index: int = 0):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = c.num_heads, c.num_kv_heads, c.head_dim
        self.window = c.window(index)  # a sliding-window layer's, None where it attends globally
        self.softcap = c.attn_softcap
        # Gemma's softmax scale (query_pre_attn_scalar ** -0.5) folded into the queries, so that the
        # attention and every policy reading q see the logits the model computes with 1/sqrt(d).
        self.query_factor = None if c.query_scale is None else c.query_scale * c.head_dim ** 0.5
        if c.fused:  # Phi-3's one projection, named as its checkpoints name it
            self.qkv_proj = Linear(c.hidden_size, (c.num_heads + 2 * c.num_kv_heads) * c.head_dim, bias=c.qkv_bias)
        else:
            self.q_proj = Linear(c.hidden_size, c.num_heads * c.head_dim, bias=c.qkv_bias)
            self.k_proj = Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=c.qkv_bias)
            self.v_proj = Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=c.qkv_bias)
        self.o_proj = Linear(c.num_heads * c.head_dim, c.hidden_size, bias=c.o_bias)
        if c.qk_norm:
            self.q_norm = norm(c, c.head_dim)
            self.k_norm = norm(c, c.head_dim)

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, local_cos=None, local_sin=None):
        """x [B, n, D] -> post-RoPE q [B, H, n, d], k and v [B, G, n, d]. A sliding layer of a model
        whose local layers have their own RoPE (Gemma 3) turns by `local_cos`, `local_sin`."""
        if self.window is not None and local_cos is not None:
            cos, sin = local_cos, local_sin
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
        if self.query_factor is not None and self.query_factor != 1.0:
            q = q * self.query_factor
        # Head-major copies: the projections leave q/k/v token-major, and the CPU flash-attention
        # kernel reads strided K/V rows ~10% slower (qwen2.5-0.5b shapes, 4,096 tokens); the
        # copies cost a fraction of that. One-token decode steps are contiguous already.
        return q.contiguous(), k.contiguous(), v.contiguous()


MLP_CHUNK = 2048  # tokens per MLP call in prefill


class MLP(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.act = F.silu if c.activation == "silu" else lambda x, inplace=False: F.gelu(x, approximate="tanh")
        if c.fused:  # Phi-3: gate and up in one projection
            self.gate_up_proj = Linear(c.hidden_size, 2 * c.intermediate_size, bias=c.mlp_bias)
        else:
            self.gate_proj = Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias)
            self.up_proj = Linear(c.hidden_size, c.intermediate_size, bias=c.mlp_bias)
        self.down_proj = Linear(c.intermediate_size, c.hidden_size, bias=c.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "gate_up_proj"):
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
            return self.down_proj(self.act(gate) * up)
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))
        gate = self.act(self.gate_proj(x), inplace=True)  # inference: no extra [n, I] temporaries
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
        self.self_attn = Attention(c, index)
        self.mlp = MoE(c) if c.is_moe(index) else MLP(c)
        self.input_layernorm = norm(c, c.hidden_size)
        self.post_attention_layernorm = norm(c, c.hidden_size)
        if c.gemma:  # Gemma: the attention's output normed (post_attention_layernorm), the MLP's in and out
            self.pre_feedforward_layernorm = norm(c, c.hidden_size)
            self.post_feedforward_layernorm = norm(c, c.hidden_size)

    @property
    def window(self) -> int | None:
        return self.self_attn.window

    def project(self, h: torch.Tensor, *rope):
        return self.self_attn.project(self.input_layernorm(h), *rope)

    def prefill(self, h, q, k, v, masks: "Masks", last: bool) -> torch.Tensor:
        """The layer's output over the prompt from its projections; for the `last` layer only
        the last token's (its logits are all that is read), so the rest is never computed."""
        cap = self.self_attn.softcap
        if last:
            return self.finish(h[:, -1:], last_token_attention(q[:, :, -1:], k, v, masks.last(self.window), cap))
        return self.finish(h, prefill_attention(q, k, v, masks.prompt(self.window), cap))

    def finish(self, h: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """attn [B, n, H*d] (heads merged) -> the layer's output hidden states."""
        return self.after_attention(h, self.self_attn.o_proj(attn))

    def after_attention(self, h: torch.Tensor, written: torch.Tensor) -> torch.Tensor:
        """The layer's output from its attention's output projection `written` [B, n, D] (what a
        policy that attributes to it reads: asl.KVgrad).

        In inference, long prompts run the MLP MLP_CHUNK tokens at a time, so its
        [n, intermediate] temporaries stay bounded (the largest tensors of a prefill).
        """
        if hasattr(self, "pre_feedforward_layernorm"):  # Gemma's sandwich
            h = h + self.post_attention_layernorm(written)
            feed = lambda x: self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))  # noqa: E731
        else:
            h = h + written
            feed = lambda x: self.mlp(self.post_attention_layernorm(x))  # noqa: E731
        n = h.shape[-2]
        if torch.is_grad_enabled() or torch.compiler.is_compiling() or n <= MLP_CHUNK:
            return h + feed(h)
        for start in range(0, n, MLP_CHUNK):
            part = h[:, start : start + MLP_CHUNK]
            part += feed(part)  # h is this function's own tensor
        return h


def positions_for(valid: torch.Tensor) -> torch.Tensor:
    """Position ids of left-padded rows: 0.. over the real tokens, 0 on padding."""
    return (valid.long().cumsum(-1) - 1).clamp(min=0)


class Masks:
    """A prefill pass's attention masks, each made once per window: the prompt's [B, 1, n, n] and
    the last token's [B, 1, 1, n], None where plain causal attention is the same (nothing padded,
    no window reached). A sliding-window layer's query at position p sees keys at positions in
    (p - window, p]: by position, so the window of pruned tokens is what it was in the prompt.
    One host read per pass (whether anything is padded, the last position), none per layer."""

    def __init__(self, positions: torch.Tensor, valid: torch.Tensor):
        self.positions, self.valid, self._made = positions, valid, {}
        padded, self._span = torch.stack([~valid.all(), positions.max()]).tolist()
        self._padded = bool(padded)

    def _reaches(self, window: int | None) -> bool:
        return window is not None and self._span >= window

    def prompt(self, window: int | None) -> torch.Tensor | None:
        window = window if self._reaches(window) else None
        if ("prompt", window) not in self._made:
            p, n = self.positions, self.positions.shape[1]
            eye = torch.eye(n, dtype=torch.bool, device=p.device)
            if window is not None:
                near = (p[:, :, None] >= p[:, None, :]) & (p[:, :, None] - p[:, None, :] < window)
                mask = ((near & self.valid[:, None, :]) | eye)[:, None]
            elif self._padded:  # a padding query sees only itself, so its softmax is defined; its output is never used
                causal = torch.ones(n, n, dtype=torch.bool, device=p.device).tril()
                mask = (causal & self.valid[:, None, None, :]) | eye
            else:
                mask = None
            self._made["prompt", window] = mask
        return self._made["prompt", window]

    def last(self, window: int | None) -> torch.Tensor | None:
        """Rows are left-padded, so the last column is real in every row and sees every valid key."""
        window = window if self._reaches(window) else None
        if window is None:
            return self.valid[:, None, None, :] if self._padded else None
        return (self.valid & (self.positions > self.positions[:, -1:] - window))[:, None, None, :]


def attend(q, k, v, mask: torch.Tensor | None, softcap: float | None = None, causal: bool = False) -> torch.Tensor:
    """Scaled dot-product attention (grouped KV heads); with a `softcap` (Gemma 2) the logits pass
    through cap * tanh(s / cap) first, written out as transformers' eager attention computes it."""
    if softcap is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=True)
    if k.shape[1] != q.shape[1]:
        k, v = (x.repeat_interleave(q.shape[1] // x.shape[1], dim=1) for x in (k, v))
    s = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    s = torch.tanh(s / softcap) * softcap
    if causal:
        mask = torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).tril(s.shape[-1] - s.shape[-2])
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return torch.matmul(F.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype), v)


def prefill_attention(q, k, v, mask: torch.Tensor | None, softcap: float | None = None) -> torch.Tensor:
    """Causal GQA attention over the alive tokens; `mask` [B, 1, n, n] only when padded or windowed."""
    out = attend(q, k, v, mask, softcap, causal=mask is None)
    b, h, n, d = out.shape
    return out.transpose(1, 2).reshape(b, n, h * d)


def last_token_attention(q_last, k, v, mask: torch.Tensor | None, softcap: float | None = None) -> torch.Tensor:
    """The last alive token's attention over the keys it sees (`Masks.last`): q_last [B, H, 1, d] -> [B, 1, H*d]."""
    out = attend(q_last, k, v, mask, softcap)
    b, h, _, d = out.shape
    return out.reshape(b, 1, h * d)


def decode_attention(q, k_cache, v_cache, valid, softcap: float | None = None, sparse=None) -> torch.Tensor:
    """One new token against per-KV-head caches.

    q [B, H, 1, d]; caches [B, G, cap, d]; valid [B, G, cap] bool. The H/G query heads of a
    group ride in the "query length" slot, so each KV head's own mask applies and nothing
    is repeated. With `sparse` (asl/retrieval.py) each query head attends only to the
    entries it retrieves.
    """
    b, h, _, d = q.shape
    g = k_cache.shape[1]
    mask = valid[:, :, None, :]
    if sparse is not None:
        mask = mask & retrieved(q, sparse, valid)
    out = attend(q.view(b, g, h // g, d), k_cache, v_cache, mask, softcap)
    return out.reshape(b, 1, h * d)


class Body(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(c, i) for i in range(c.num_layers))
        self.norm = norm(c, c.hidden_size)


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
        self.build_rope()

    def build_rope(self, device=None) -> None:
        """The RoPE tables' frequencies (float32, not parameters): the model's and, for a model whose
        sliding layers turn by their own base (Gemma 3), theirs."""
        self.rope = Rope(self.config).to(device)
        self.local_rope = None if self.config.local_rope is None else Rope(self.config, self.config.local_rope).to(device)

    def rope_for(self, layer: int) -> Rope:
        """The Rope that turned the layer's queries and keys."""
        local = self.local_rope is not None and self.config.window(layer) is not None
        return self.local_rope if local else self.rope

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.layers

    def layer_device(self, layer: int) -> torch.device:
        """Where the layer's weights are: one device, or each layer's own for a model placed across
        devices (a transformers `device_map`); the prefill and decode loops move the hidden state,
        the tokens' records and the RoPE tables at each change (docs/setup.md, "Models past one device")."""
        return self.layers[layer].input_layernorm.weight.device

    def tables(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple:
        """The RoPE tables of `positions` every layer's `project` takes: (cos, sin), and the sliding
        layers' (cos, sin) after them where those have their own."""
        own = self.rope(positions, dtype)
        return own if self.local_rope is None else own + self.local_rope(positions, dtype)

    def embed(self, ids: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """Where every pass starts: the tokens' embeddings (Gemma: times sqrt(D), rounded to the
        weights' dtype as Gemma does) and their RoPE tables (`tables`)."""
        weight = self.model.embed_tokens.weight
        ids, positions = ids.to(weight.device), positions.to(weight.device)
        h = self.model.embed_tokens(ids)
        if self.config.gemma:
            h = h * torch.tensor(self.config.hidden_size ** 0.5, dtype=h.dtype, device=h.device)
        return h, self.tables(positions, h.dtype)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        h = self.model.norm(h.to(self.model.norm.weight.device))
        logits = self.lm_head(h.to(self.lm_head.weight.device)).float()
        cap = self.config.final_softcap
        return logits if cap is None else torch.tanh(logits / cap) * cap

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, n, V] for every token (left padding marked by attention_mask == 0)."""
        valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        positions = positions_for(valid)
        masks = Masks(positions, valid)
        h, rope = self.embed(input_ids, positions)
        for layer in self.layers:
            h = layer.prefill(h, *layer.project(h, *rope), masks, last=False)
        return self.logits(h)
