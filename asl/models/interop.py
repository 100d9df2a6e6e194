"""transformers models in: our Decoder over a loaded `*ForCausalLM`'s own parameter tensors.

A researcher arrives with a model loaded their way (`AutoModelForCausalLM.from_pretrained`,
a fine-tune, a quantisation-free checkpoint of their own). Our module names mirror
transformers' (`model.layers.0.self_attn.q_proj`), so the conversion assigns their
`Parameter` objects to our modules: nothing is copied, both models see the same storage
(and any later in-place update of it), and the conversion costs no memory.
"""
from __future__ import annotations

import weakref

import torch

from .config import SUPPORTED_MODEL_TYPES, ModelConfig
from .decoder import Decoder

SUPPORTED_CLASSES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
                     "Phi3ForCausalLM", "MixtralForCausalLM", "Qwen3MoeForCausalLM", "Gemma2ForCausalLM",
                     "Gemma3ForCausalLM")

_converted: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # hf model -> (our Decoder, its weights' fingerprint)


def is_transformers_model(model) -> bool:
    """A transformers PreTrainedModel (checked by class, without importing transformers)."""
    return any(c.__module__.startswith("transformers.") and c.__name__ == "PreTrainedModel"
               for c in type(model).__mro__)


def from_transformers(model, tokenizer=None):
    """Our Decoder sharing `model`'s parameters (same tensors: same `data_ptr`, no copy), on
    its device and in its dtype, for a `*ForCausalLM` of a family it runs (SUPPORTED_CLASSES).

    `tokenizer`, when given, only adds its EOS id to the decoder's stop ids. The result is
    cached on the model object, so calling again (or `asl.generate(model, ...)`) converts once.
    A causal LM of another family (GPT-NeoX, Falcon, OPT, ...) comes back as an `asl.HookedModel`:
    `asl.generate` runs it through transformers' own forward with eviction policies only, since
    layer-wise selection (ASL, FastKV, GemFilter) runs only on a family our decoder supports.
    """
    if _other_family(model):
        from ..hooked import HookedModel

        return HookedModel(model)
    _check_supported(model)
    cached = _converted.get(model)
    if cached is not None and _still_shares(cached, model):
        return cached[0]
    config = ModelConfig.from_hf(model.config)
    eos = _eos_ids(config, model, tokenizer)
    if eos != config.eos_token_ids:
        config = _replace(config, eos_token_ids=eos)
    params = dict(model.named_parameters(remove_duplicate=False))
    with torch.device("meta"):
        ours = Decoder(config)
    wanted = dict(ours.named_parameters(remove_duplicate=False))
    missing = sorted(set(wanted) - set(params))
    if config.tie_word_embeddings and missing == ["lm_head.weight"]:
        missing = []  # transformers may list a tied head under the embedding's name only
    unexpected = sorted(set(params) - set(wanted))
    if missing or unexpected:
        raise ValueError(f"{type(model).__name__} does not match the {config.model_type} decoder: "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    ours.load_state_dict({k: params[k] for k in wanted if k in params}, strict=False, assign=True)
    if config.tie_word_embeddings:
        ours.lm_head.weight = ours.model.embed_tokens.weight
    ours.build_rope(ours.lm_head.weight.device)  # its tables were made on meta; fp32, on the model's device
    ours.eval()
    _converted[model] = (ours, weights_fingerprint(model))
    return ours


def as_decoder(model, tokenizer=None):
    """`model` itself if it is our Decoder, its conversion if it is a transformers model (an
    `asl.HookedModel` for a family our decoder lacks)."""
    from ..hooked import HookedModel

    if isinstance(model, (Decoder, HookedModel)):
        return model
    if is_transformers_model(model):
        return from_transformers(model, tokenizer)
    raise ValueError(f"model must be an asl Decoder (from asl.load) or a transformers model "
                     f"({', '.join(SUPPORTED_CLASSES)}), got {type(model).__name__}")


def _other_family(model) -> bool:
    """A transformers causal LM (with its head) of a family our decoder does not run."""
    return (is_transformers_model(model) and type(model).__name__.endswith("ForCausalLM")
            and getattr(model.config, "model_type", None) not in SUPPORTED_MODEL_TYPES)


def _check_supported(model) -> None:
    if not is_transformers_model(model):
        raise ValueError(f"from_transformers takes a transformers model ({', '.join(SUPPORTED_CLASSES)}), "
                         f"got {type(model).__name__}")
    model_type = getattr(model.config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES or not type(model).__name__.endswith("ForCausalLM"):
        raise ValueError(f"{type(model).__name__} (model_type {model_type!r}) is not supported; supported: "
                         f"{', '.join(SUPPORTED_CLASSES)} (a causal LM with its lm_head, not the bare model)")
    devices = {p.device for p in model.parameters()}
    if any(d.type == "meta" for d in devices):
        raise ValueError(f"the model's parameters must all be loaded, found some on {sorted(map(str, devices))} (a "
                         "device_map that offloads to disk leaves them on meta; place every layer on a device)")


def weights_fingerprint(module: torch.nn.Module) -> tuple:
    """A cheap identity of a module's weights: per parameter its name, object, in-place version
    counter, dtype and device. Any in-place update, replaced parameter or module, or `.to()`
    changes it; computing it reads no tensor data (a few hundred tuples for a 0.5B model)."""
    return tuple((name, id(p), p._version, p.dtype, p.device) for name, p in module.named_parameters())


def _still_shares(cached: tuple, model) -> bool:
    """The cached conversion was built from the model's weights as they are now (a replaced
    parameter or layer, an in-place update or a `.to()` since then makes it stale: rebuilt)."""
    return cached[1] == weights_fingerprint(model)


def _eos_ids(config: ModelConfig, model, tokenizer) -> tuple[int, ...]:
    ids = list(config.eos_token_ids)
    extra = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    extra = extra if isinstance(extra, (list, tuple)) else [extra]
    extra.append(getattr(tokenizer, "eos_token_id", None))
    ids += [int(i) for i in extra if i is not None and int(i) not in ids]
    return tuple(ids)


def _replace(config: ModelConfig, **changes) -> ModelConfig:
    import dataclasses

    return dataclasses.replace(config, **changes)
