"""How to pick the next tokens, resolved once per call from keyword arguments and a
transformers `GenerationConfig`, the way `model.generate` resolves them: an explicit keyword
wins, then the config's field, then our default. Fields we cannot honour are refused by name
rather than ignored."""
from __future__ import annotations

from dataclasses import dataclass

from .policies.base import is_number

DEFAULT_MAX_NEW_TOKENS = 64

# GenerationConfig fields asl.generate honours (the rest, when set, are refused)
_HONOURED = ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "repetition_penalty", "min_new_tokens",
             "eos_token_id", "stop_strings")
# fields that carry no generation choice of their own (ids of special tokens, bookkeeping)
_NEUTRAL = ("bos_token_id", "pad_token_id", "decoder_start_token_id", "transformers_version", "use_cache",
            "return_dict_in_generate", "output_scores", "output_logits", "output_attentions",
            "output_hidden_states", "cache_implementation")


_SAMPLING_DEFAULTS = {"temperature": 1.0, "top_k": 50, "top_p": 1.0}  # what transformers samples with when unset


@dataclass(frozen=True)
class DecodeSettings:
    """A call's complete token choice. temperature 0 means greedy; `eos_token_id` None means
    the model's and the tokenizer's EOS ids."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    min_new_tokens: int = 0
    eos_token_id: tuple[int, ...] | None = None
    stop: tuple[str, ...] | None = None


def resolve(generation_config=None, **explicit) -> DecodeSettings:
    """DecodeSettings from `generation_config` (a transformers GenerationConfig or None) and the
    keywords given explicitly (None means not given). `do_sample=False` means greedy whatever
    the temperature; `do_sample=True` samples at the config's temperature (1.0 by default)."""
    given = {k: v for k, v in explicit.items() if v is not None}
    fields = _config_fields(generation_config, "max_new_tokens" in given)
    if "stop" in given:
        given["stop_strings"] = given.pop("stop")
    merged = {**fields, **given}
    do_sample = merged.pop("do_sample", None)
    if given.get("do_sample") is False:
        temperature = 0.0
    elif "temperature" in given:
        temperature = given["temperature"]
    elif do_sample:
        temperature = fields.get("temperature", 1.0)
    else:
        temperature = 0.0
    settings = DecodeSettings(
        max_new_tokens=merged.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS),
        temperature=temperature,
        top_k=merged.get("top_k"),
        top_p=merged.get("top_p"),
        repetition_penalty=merged.get("repetition_penalty", 1.0),
        min_new_tokens=merged.get("min_new_tokens", 0),
        eos_token_id=_eos(merged.get("eos_token_id")),
        stop=_stop(merged.get("stop_strings")),
    )
    check(settings)
    return settings


def _config_fields(config, counted: bool) -> dict:
    """The fields a GenerationConfig sets away from transformers' defaults; unsupported ones
    refused. `counted`: max_new_tokens was given, so the config's max_length does not matter."""
    if config is None:
        return {}
    if not hasattr(config, "to_diff_dict"):
        raise ValueError(f"generation_config must be a transformers GenerationConfig, got {type(config).__name__}")
    diff = {k: v for k, v in config.to_diff_dict().items() if not k.startswith("_")}
    if "max_length" in diff and diff.get("max_new_tokens") is None and not counted:
        raise ValueError(f"generation_config sets max_length={diff['max_length']}; asl counts new tokens: set "
                         "max_new_tokens instead")
    diff.pop("max_length", None)
    defaults = {**_SAMPLING_DEFAULTS, **getattr(type(config), "_get_default_generation_params", dict)()}
    refused = sorted(k for k, v in diff.items()
                     if k not in _HONOURED and k not in _NEUTRAL and v is not None and v != defaults.get(k))
    if refused:
        raise ValueError(f"generation_config sets {', '.join(f'{k}={diff[k]!r}' for k in refused)}, which "
                         f"asl.generate does not support; it honours {', '.join(_HONOURED)}")
    fields = {k: v for k, v in diff.items() if k in _HONOURED and v is not None}
    if fields.get("do_sample"):  # transformers samples with its defaults unless the config says otherwise
        for name in ("temperature", "top_k", "top_p"):
            fields.setdefault(name, getattr(config, name, None) if getattr(config, name, None) is not None
                              else defaults[name])
    if fields.get("top_k") == 0:
        fields["top_k"] = None  # transformers' "no top-k"
    if fields.get("top_p") == 1.0:
        fields["top_p"] = None
    return fields


def _eos(value) -> tuple[int, ...] | None:
    if value is None:
        return None
    ids = list(value) if isinstance(value, (list, tuple)) else [value]
    if not ids or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise ValueError(f"eos_token_id must be a token id (an integer >= 0) or a non-empty list of them, got {value!r}")
    return tuple(ids)


def _stop(value) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(isinstance(s, str) and s for s in value):
        raise ValueError(f"stop must be None or a list of non-empty strings, got {value!r}")
    return tuple(value)


def _integer(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def check(s: DecodeSettings) -> None:
    if not _integer(s.max_new_tokens) or s.max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {s.max_new_tokens!r}")
    if not is_number(s.temperature) or s.temperature < 0:
        raise ValueError(f"temperature must be a number >= 0 (0 means greedy), got {s.temperature!r}")
    if s.top_k is not None and (not _integer(s.top_k) or s.top_k < 1):
        raise ValueError(f"top_k must be None or an integer >= 1, got {s.top_k!r}")
    if s.top_p is not None and (not is_number(s.top_p) or not 0 < s.top_p <= 1):
        raise ValueError(f"top_p must be None or a number in (0, 1], got {s.top_p!r}")
    if not is_number(s.repetition_penalty) or s.repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be a number > 0 (1.0 means none), got {s.repetition_penalty!r}")
    if not _integer(s.min_new_tokens) or not 0 <= s.min_new_tokens:
        raise ValueError(f"min_new_tokens must be an integer >= 0, got {s.min_new_tokens!r}")
    if s.min_new_tokens > s.max_new_tokens:
        raise ValueError(f"min_new_tokens ({s.min_new_tokens}) must not exceed max_new_tokens ({s.max_new_tokens})")
