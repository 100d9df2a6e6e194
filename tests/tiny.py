"""Tiny randomly initialised transformers models, and our Decoder holding the same weights."""
from __future__ import annotations

import torch
import transformers

from asl.models.config import ModelConfig
from asl.models.weights import decoder_from_state_dict

CONFIG_CLASSES = {
    "llama": transformers.LlamaConfig,
    "mistral": transformers.MistralConfig,
    "qwen2": transformers.Qwen2Config,
    "qwen3": transformers.Qwen3Config,
    "phi3": transformers.Phi3Config,
    "mixtral": transformers.MixtralConfig,
    "qwen3_moe": transformers.Qwen3MoeConfig,
    "gemma2": transformers.Gemma2Config,
    "gemma3_text": transformers.Gemma3TextConfig,
}
# Gemma's tiny models: a window of 24 that prompts pass, a softmax scale other than 1/sqrt(head_dim),
# Gemma 2's soft caps low enough to act on random weights, Gemma 3's last layer a sliding one.
GEMMA = {
    "gemma2": dict(head_dim=16, sliding_window=24, query_pre_attn_scalar=12, attn_logit_softcapping=2.0,
                   final_logit_softcapping=3.0),
    "gemma3_text": dict(head_dim=16, sliding_window=24, query_pre_attn_scalar=12,
                        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"]),
}

ROPE_VARIANTS = {
    "default": {"rope_type": "default"},
    "linear": {"rope_type": "linear", "factor": 2.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
}
# Phi-3's own: LongRoPE (short and long factors, one per pair of turned dims), and Phi-4-mini's
# partial rotary (0.75 of a 16-dim head: 12 dims turn); both with tiny_hf_config("phi3", ...).
PHI3_ROPE = {
    "longrope": {"rope_type": "longrope", "original_max_position_embeddings": 64,
                 "short_factor": [1.0, 1.1, 1.3, 1.6, 2.0, 2.5, 3.1, 3.8],
                 "long_factor": [1.0, 1.5, 2.2, 3.0, 4.1, 5.5, 7.0, 9.0]},
    "partial": {"rope_type": "default", "partial_rotary_factor": 0.75},
    "partial-longrope": {"rope_type": "longrope", "original_max_position_embeddings": 64,
                         "partial_rotary_factor": 0.75, "short_factor": [1.0, 1.2, 1.5, 1.9, 2.4, 3.0],
                         "long_factor": [1.0, 1.7, 2.6, 3.7, 5.0, 6.6]},
}


def tiny_hf_config(model_type: str = "llama", rope: str = "default", **overrides):
    kwargs = dict(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=model_type in ("qwen2", "qwen3"), rms_norm_eps=1e-6, eos_token_id=1,
        pad_token_id=0, bos_token_id=None,
    )
    if model_type in ("qwen3", "qwen3_moe"):
        kwargs["head_dim"] = 16
    if model_type == "mixtral":
        kwargs.update(num_local_experts=4, num_experts_per_tok=2, sliding_window=None, head_dim=16)
    if model_type == "qwen3_moe":  # layer 1 dense, as its mlp_only_layers allows
        kwargs.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True,
                      mlp_only_layers=[1])
    if model_type in ("mistral", "phi3"):
        kwargs["sliding_window"] = None
    kwargs.update(GEMMA.get(model_type, {}))
    kwargs.update(overrides)
    cfg = CONFIG_CLASSES[model_type](**kwargs)
    cfg.rope_parameters = {"rope_theta": 10000.0, **{**ROPE_VARIANTS, **PHI3_ROPE}[rope]}
    if model_type == "gemma3_text":  # its sliding layers turn by their own base
        cfg.rope_parameters = {"full_attention": cfg.rope_parameters,
                               "sliding_attention": {"rope_type": "default", "rope_theta": 1000.0}}
    cfg._attn_implementation = attn_implementation(model_type)
    return cfg


def attn_implementation(model_type: str) -> str:
    """transformers' sdpa attention drops Gemma 2's soft cap; its eager one applies it."""
    return "eager" if model_type == "gemma2" else "sdpa"


def tiny_pair(model_type: str = "llama", rope: str = "default", seed: int = 0, dtype=torch.float32, **overrides):
    """(transformers model, our Decoder) with identical random weights."""
    torch.manual_seed(seed)
    cfg = tiny_hf_config(model_type, rope, **overrides)
    hf = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation=attn_implementation(model_type)).eval()
    with torch.no_grad():  # non-trivial norm weights and biases, so a missed one shows up
        for name, p in hf.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "norm" in name else 0.0))
    ours = decoder_from_state_dict(ModelConfig.from_hf(cfg), hf.state_dict(), dtype, "cpu")
    return hf.to(dtype), ours


class CharTokenizer:
    """A byte-level stand-in for a real tokenizer (ids 2..127), enough for generate()."""

    chat_template = None
    eos_token_id = None

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": [2 + (ord(c) % 126) for c in text]}

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return "".join(chr(i - 2) if 2 <= i < 128 else "?" for i in ids)


def random_text(rng, n: int) -> str:
    return "".join(chr(rng.randrange(32, 126)) for _ in range(n))
