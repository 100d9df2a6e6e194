"""`with asl.apply(model, selection=..., eviction=...):` makes a transformers model's own
`model.generate(...)` run asl's prefill and decoding with these policies, as kvpress users
write `with press(model):`. Code written for transformers (its input_ids, attention_mask,
GenerationConfig, streamer, output tensor) runs unchanged, now pruned.

Inside the block `model.generate` is replaced on that model object only; the block's exit
restores it, also after an error. It runs on the model's own weights, converted once
(`asl.from_transformers`), and returns transformers' output: the input ids followed by the
new tokens, finished rows padded with `pad_token_id`.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from .generation import Trace, check_streamer, check_run, generate_ids
from .generation_settings import resolve
from .models.interop import from_transformers, is_transformers_model
from .policies.base import check_policies

# model.generate keywords the replacement understands besides the GenerationConfig fields
_TOKEN_CHOICE = ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "repetition_penalty",
                 "min_new_tokens", "eos_token_id", "stop_strings")
_HARMLESS = {"use_cache": True, "return_dict_in_generate": False, "output_scores": False, "num_beams": 1,
             "num_return_sequences": 1}


@dataclass
class Applied:
    """What `asl.apply` yields: the trace of every `model.generate` call made in the block."""

    traces: list[Trace] = field(default_factory=list)

    @property
    def trace(self) -> Trace:
        """The last call's trace."""
        if not self.traces:
            raise AttributeError("no model.generate call has run inside this asl.apply block yet")
        return self.traces[-1]


@contextlib.contextmanager
def apply(model, selection=None, eviction=None, tokenizer=None, compile=False, seed: int = 0):
    """Within the block, `model.generate(...)` of the transformers `model` runs with
    `selection` and `eviction`. `tokenizer` is needed only for `stop_strings` (as transformers
    needs one too); `compile` and `seed` are asl.generate's."""
    if not is_transformers_model(model):
        raise ValueError(f"asl.apply takes a transformers model (a loaded *ForCausalLM), got {type(model).__name__}; "
                         "with asl's own Decoder call asl.generate(model, tokenizer, prompt, selection=..., eviction=...)")
    check_policies(selection, eviction)
    check_run(compile, seed)
    if "generate" in vars(model):
        raise ValueError("asl.apply: this model's generate is already replaced (an asl.apply block around this one, "
                         "or another library's patch); leave that block first")
    decoder = from_transformers(model, tokenizer)  # checks the architecture before the block runs
    applied = Applied()

    def generate(inputs=None, generation_config=None, *, input_ids=None, attention_mask=None, streamer=None,
                 tokenizer=tokenizer, pad_token_id=None, **kwargs):
        ids = _rows(inputs if inputs is not None else input_ids, attention_mask)
        config = generation_config if generation_config is not None else getattr(model, "generation_config", None)
        choice = _token_choice(kwargs)
        if choice.get("max_new_tokens") is None and getattr(config, "max_new_tokens", None) is None:
            choice["max_new_tokens"] = _from_max_length(config, max(len(x) for x in ids))
        settings = resolve(config, **{("stop" if k == "stop_strings" else k): v for k, v in choice.items()})
        check_streamer(streamer, len(ids))
        out = generate_ids(from_transformers(model, tokenizer), tokenizer, ids, settings, compile=compile, seed=seed,
                           selection=selection, eviction=eviction, streamer=streamer)
        applied.traces.append(out.trace)
        pad = pad_token_id if pad_token_id is not None else getattr(config, "pad_token_id", None)
        if pad is None:
            pad = (settings.eos_token_id or decoder.config.eos_token_ids or (0,))[0]
        return _sequences(inputs if inputs is not None else input_ids, out.tokens, pad)

    model.generate = generate
    try:
        yield applied
    finally:
        del model.generate


def _rows(input_ids, attention_mask) -> list[list[int]]:
    """Each row's real tokens from left-padded input_ids [B, n] and its mask."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.long:
        raise ValueError("model.generate inside asl.apply takes input_ids as an int64 tensor [batch, length], got "
                         f"{type(input_ids).__name__}{'' if not isinstance(input_ids, torch.Tensor) else f' {input_ids.dtype} {list(input_ids.shape)}'}")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask has shape {list(attention_mask.shape)}, input_ids {list(input_ids.shape)}")
    mask = attention_mask.bool().cpu()
    first = mask.long().argmax(-1)
    real = mask.sum(-1)
    if bool((first + real != mask.shape[1]).any()) or bool((real == 0).any()):
        raise ValueError("attention_mask must mark each row's tokens as one block at the end (left padding, as "
                         "decoder-only generation needs) and no row may be empty; set tokenizer.padding_side = 'left'")
    ids = input_ids.cpu()
    return [ids[b, int(first[b]):].tolist() for b in range(ids.shape[0])]


def _token_choice(kwargs: dict) -> dict:
    choice = {k: kwargs.pop(k) for k in _TOKEN_CHOICE if k in kwargs}
    unsupported = sorted(k for k, v in kwargs.items() if k not in _HARMLESS or v != _HARMLESS[k])
    if unsupported:
        raise ValueError(f"model.generate inside asl.apply does not support {', '.join(unsupported)}; it takes "
                         f"input_ids, attention_mask, generation_config, streamer, tokenizer, pad_token_id, "
                         f"{', '.join(_TOKEN_CHOICE)}")
    return choice


def _from_max_length(config, prompt_tokens: int) -> int:
    """transformers' rule when max_new_tokens is unset: generate up to max_length tokens in all."""
    max_length = getattr(config, "max_length", None) or 20
    if max_length <= prompt_tokens:
        raise ValueError(f"the prompt has {prompt_tokens} tokens and generation_config.max_length is {max_length}: "
                         "pass max_new_tokens")
    return max_length - prompt_tokens


def _sequences(input_ids: torch.Tensor, new: list[list[int]], pad: int) -> torch.Tensor:
    """transformers' output: the input rows, then each row's new tokens, padded to one length."""
    width = max(len(x) for x in new)
    tail = torch.full((len(new), width), pad, dtype=torch.long)
    for b, tokens in enumerate(new):
        tail[b, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    return torch.cat([input_ids.cpu(), tail], dim=1).to(input_ids.device)
