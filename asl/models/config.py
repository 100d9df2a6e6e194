"""The few numbers our decoder needs, read from a Hugging Face config (object or dict).

Both the transformers-4 layout (`rope_theta` + `rope_scaling`) and the transformers-5
layout (`rope_parameters`) are accepted, so a checkpoint folder from either era loads.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "mixtral", "qwen3_moe")
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
    hf: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # the config it was read from

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
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"hidden_act {act!r} is not supported; only 'silu' (gated SiLU MLP) is")
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
        rope = _rope_parameters(d)
        partial = d.get("partial_rotary_factor") or rope.pop("partial_rotary_factor", None) or 1.0
        rope.pop("partial_rotary_factor", None)
        if not 0 < partial <= 1 or int(head_dim * partial) % 2:
            raise ValueError(f"config partial_rotary_factor must be in (0, 1] and turn an even number of a head's "
                             f"{head_dim} dims, got {partial!r}")
        eos = d.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (int(eos),))
        use_window = d.get("use_sliding_window", model_type in ("mistral", "phi3", "mixtral"))
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
            qk_norm=model_type in ("qwen3", "qwen3_moe"),
            rope=rope,
            eos_token_ids=eos_ids,
            sliding_window=d.get("sliding_window") if use_window else None,
            partial_rotary_factor=float(partial),
            num_experts=experts,
            experts_per_token=d.get("num_experts_per_tok") or 0 if experts else 0,
            expert_size=(d.get("moe_intermediate_size") or d["intermediate_size"]) if experts else 0,
            normalize_top_k=bool(d.get("norm_topk_prob", True)),
            dense_layers=dense,
            hf=dict(d),
        )


def _rope_parameters(d: dict[str, Any]) -> dict[str, Any]:
    """One flat dict with rope_type and rope_theta, whatever the config's era."""
    params = dict(d.get("rope_parameters") or {})
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
    return params


def check_window(config: ModelConfig, tokens: int, what: str) -> None:
    """Our attention is full causal: a model whose config asks for sliding-window attention
    computes the same only while the text fits the window; past it, refuse rather than differ."""
    window = config.sliding_window
    if window is not None and tokens > window:
        raise ValueError(f"{what} spans {tokens} tokens, more than the model's sliding window of {window}: "
                         f"sliding-window attention ({config.model_type}) is not implemented; keep it within {window}")
