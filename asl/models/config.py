"""The few numbers our decoder needs, read from a Hugging Face config (object or dict).

Both the transformers-4 layout (`rope_theta` + `rope_scaling`) and the transformers-5
layout (`rope_parameters`) are accepted, so a checkpoint folder from either era loads.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "mixtral", "qwen3_moe", "gemma2", "gemma3_text")
GEMMA = ("gemma2", "gemma3_text")  # (1 + w) norms around attention and MLP, GeGLU, a scaled embedding
ACTIVATIONS = ("silu", "gelu_pytorch_tanh")
SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn", "longrope")
FUSED = ("phi3",)  # one qkv_proj and one gate_up_proj per layer, as their checkpoints store them


@dataclass(frozen=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    qk_norm: bool
    rope: dict[str, Any] = field(default_factory=dict)  # rope_type, rope_theta and the type's parameters
    eos_token_ids: tuple[int, ...] = ()
    sliding_window: int | None = None
    partial_rotary_factor: float = 1.0  # the share of each head's dims RoPE turns (Phi-4-mini: 0.75)
    num_experts: int = 0  # mixture of experts (Mixtral, Qwen3-MoE): experts per MoE layer, 0 for none
    experts_per_token: int = 0
    expert_size: int = 0  # each expert's intermediate size
    normalize_top_k: bool = True  # the chosen experts' router weights renormalised to sum to 1
    dense_layers: tuple[int, ...] = ()  # layers of a MoE model with a dense MLP instead (Qwen3-MoE's mlp_only_layers)
    # Per layer, the sliding window (a query at position p sees keys at positions > p - window), None for a
    # global layer: every layer of Mistral v0.1 or Phi-3, Gemma 2's every other one, Gemma 3's five of six.
    layer_windows: tuple[int | None, ...] = ()
    local_rope: dict[str, Any] | None = None  # Gemma 3: the sliding layers' own RoPE (rope_type, rope_theta)
    activation: str = "silu"  # of the gated MLP: SiLU, or GeLU's tanh approximation (Gemma)
    query_scale: float | None = None  # Gemma: softmax scale query_pre_attn_scalar ** -0.5 instead of head_dim's
    attn_softcap: float | None = None  # Gemma 2: attention logits soft-capped, cap * tanh(s / cap)
    final_softcap: float | None = None  # Gemma 2: the output logits soft-capped
    hf: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # the config it was read from

    @property
    def gemma(self) -> bool:
        """Gemma's layer: (1 + w) RMSNorms before and after attention and MLP, embeddings times sqrt(D)."""
        return self.model_type in GEMMA

    def window(self, layer: int) -> int | None:
        """The layer's sliding window, None where it attends globally."""
        return self.layer_windows[layer] if self.layer_windows else None

    @property
    def global_layers(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.num_layers) if self.window(i) is None)

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def rotary_dim(self) -> int:
        """How many of a head's first dims RoPE turns (all but with a partial rotary factor)."""
        return int(self.head_dim * self.partial_rotary_factor)

    def is_moe(self, layer: int) -> bool:
        """Whether the layer's MLP is a mixture of experts."""
        return self.num_experts > 0 and layer not in self.dense_layers

    @property
    def fused(self) -> bool:
        """q, k, v in one projection and gate, up in another (Phi-3)."""
        return self.model_type in FUSED

    @classmethod
    def from_hf(cls, hf: Any) -> "ModelConfig":
        """Build from a transformers config object or its `to_dict()`."""
        d = hf if isinstance(hf, dict) else hf.to_dict()
        model_type = d.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"model_type {model_type!r} is not supported; supported model types: "
                f"{', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        act = d.get("hidden_activation") or d.get("hidden_act") or "silu"
        if act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {act!r} is not supported; supported (gated MLP): {', '.join(ACTIVATIONS)}")
        required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        missing = [k for k in required if k not in d]
        if missing:
            raise ValueError(f"the {model_type} config lacks {', '.join(missing)} (required: {', '.join(required)})")
        for key in (*required, "num_key_value_heads", "head_dim", "max_position_embeddings"):
            value = d.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"config {key} must be a positive integer, got {value!r}")
        heads = d["num_attention_heads"]
        kv_heads = d.get("num_key_value_heads") or heads
        if heads % kv_heads:
            raise ValueError(f"num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv_heads})")
        head_dim = d.get("head_dim") or d["hidden_size"] // heads
        attention_bias = bool(d.get("attention_bias", False))
        qkv_bias = {"qwen2": True, "mistral": False, "phi3": False}.get(model_type, attention_bias)
        o_bias = {"qwen2": False, "mistral": False, "phi3": False}.get(model_type, attention_bias)
        rope, local_rope = _rope_parameters(d)
        partial = d.get("partial_rotary_factor") or rope.pop("partial_rotary_factor", None) or 1.0
        rope.pop("partial_rotary_factor", None)
        if not 0 < partial <= 1 or int(head_dim * partial) % 2:
            raise ValueError(f"config partial_rotary_factor must be in (0, 1] and turn an even number of a head's "
                             f"{head_dim} dims, got {partial!r}")
        eos = d.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (int(eos),))
        windows = _layer_windows(d, model_type)
        experts = d.get("num_local_experts") or d.get("num_experts") or 0
        dense = ()
        if model_type == "qwen3_moe":  # its sparse step and its list of dense layers
            step = d.get("decoder_sparse_step") or 1
            dense = tuple(i for i in range(d["num_hidden_layers"])
                          if i in (d.get("mlp_only_layers") or []) or (i + 1) % step)
        return cls(
            model_type=model_type,
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_layers=d["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            max_position_embeddings=d.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            mlp_bias=bool(d.get("mlp_bias", False)),
            qk_norm=model_type in ("qwen3", "qwen3_moe", "gemma3_text"),
            rope=rope,
            eos_token_ids=eos_ids,
            sliding_window=max((w for w in windows if w), default=None),
            partial_rotary_factor=float(partial),
            num_experts=experts,
            experts_per_token=d.get("num_experts_per_tok") or 0 if experts else 0,
            expert_size=(d.get("moe_intermediate_size") or d["intermediate_size"]) if experts else 0,
            normalize_top_k=bool(d.get("norm_topk_prob", True)),
            dense_layers=dense,
            layer_windows=windows if any(windows) else (),
            local_rope=local_rope,
            activation=act,
            query_scale=d.get("query_pre_attn_scalar", 256) ** -0.5 if model_type in GEMMA else None,
            attn_softcap=d.get("attn_logit_softcapping") if model_type in GEMMA else None,
            final_softcap=d.get("final_logit_softcapping") if model_type in GEMMA else None,
            hf=dict(d),
        )


def _layer_windows(d: dict[str, Any], model_type: str) -> tuple[int | None, ...]:
    """Each layer's sliding window from the config's `layer_types` (transformers 5), else from
    `use_sliding_window` (every layer), else Gemma's pattern (Gemma 2: every other layer from the
    first; Gemma 3: all but every sixth)."""
    window, layers = d.get("sliding_window"), d["num_hidden_layers"]
    if not window:
        return (None,) * layers
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ValueError(f"config sliding_window must be a positive integer or None, got {window!r}")
    types = d.get("layer_types")
    if not types and model_type == "gemma2":
        types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
    if not types and model_type == "gemma3_text":
        pattern = d.get("sliding_window_pattern") or 6
        types = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(layers)]
    if types:
        if len(types) != layers:
            raise ValueError(f"config layer_types has {len(types)} entries for {layers} layers")
        return tuple(window if t == "sliding_attention" else None for t in types)
    use = d.get("use_sliding_window", model_type in ("mistral", "phi3", "mixtral"))
    return (window if use else None,) * layers


def _rope_parameters(d: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """One flat dict with rope_type and rope_theta, whatever the config's era; and a Gemma 3's
    sliding layers' own (from `rope_parameters["sliding_attention"]` or `rope_local_base_freq`)."""
    params = dict(d.get("rope_parameters") or {})
    local = None
    if "full_attention" in params or "sliding_attention" in params:  # transformers 5: one dict per layer type
        local = dict(params.get("sliding_attention") or {}) or None
        params = dict(params.get("full_attention") or {})
    elif d.get("model_type") == "gemma3_text":
        local = {"rope_type": "default", "rope_theta": d.get("rope_local_base_freq") or 10000.0}
    legacy = d.get("rope_scaling") or {}
    params = {**legacy, **params}
    params.setdefault("rope_theta", d.get("rope_theta", 10000.0))
    rope_type = params.pop("type", None) or params.get("rope_type") or "default"
    params["rope_type"] = rope_type
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(
            f"rope_type {rope_type!r} is not supported; supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
        )
    params.setdefault("original_max_position_embeddings",
                      d.get("original_max_position_embeddings") or d.get("max_position_embeddings", 2048))
    if rope_type == "longrope":
        missing = [k for k in ("short_factor", "long_factor") if not params.get(k)]
        if missing:
            raise ValueError(f"rope_type 'longrope' needs {' and '.join(missing)} in the config's rope parameters")
    if local is not None:
        local.setdefault("rope_type", "default")
        local.setdefault("original_max_position_embeddings", params["original_max_position_embeddings"])
        if local["rope_type"] not in SUPPORTED_ROPE_TYPES:
            raise ValueError(f"the sliding layers' rope_type {local['rope_type']!r} is not supported; "
                             f"supported: {', '.join(SUPPORTED_ROPE_TYPES)}")
    return params, local
