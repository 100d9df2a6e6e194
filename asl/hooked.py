"""Eviction on any transformers causal LM, through its own forward and cache (as kvpress works).

For a family our decoder lacks (GPT-NeoX, Falcon, OPT, ...), the prompt runs through
transformers' forward with an attention function of ours that calls the model's own (sdpa or
eager) and, during the prefill, hands each layer's queries, keys and values to the eviction
policy; the cache is then cut to what each layer keeps, and the answer is decoded by the model
with that cache, its position ids going on from the prompt's. Layer-wise selection (ASL, FastKV,
GemFilter) changes which tokens run deeper layers, which needs our decoder's layer loop.
docs/usage.md, "Any transformers model".
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import torch

from .policies.base import EvictionPolicy, LayerView, PrefillInfo, check_keep, decides_after_prefill, keep_problems, retrieves

SELECTION_NEEDS_DECODER = ("layer-wise selection (ASL, FastKV, GemFilter, ...) runs only on a family asl's own "
                           "decoder supports")
_NAMES = {"sdpa": "asl_sdpa", "eager": "asl_eager"}  # our attention function, by the model's own
_RECORDING: _Recording | None = None  # the prefill whose layers are being recorded, if any


@dataclass
class HookedModel:
    """A transformers causal LM that asl runs with eviction policies only (`asl.from_transformers`
    returns one for a family its decoder lacks)."""

    model: object  # the transformers PreTrainedModel, used as it is
    config: object = field(init=False)

    def __post_init__(self):
        self.config = self.model.config
        impl = self.config._attn_implementation
        if impl not in _NAMES:
            raise ValueError(f"{type(self.model).__name__} runs attention with {impl!r}; asl's eviction on a "
                             f"transformers model needs 'sdpa' or 'eager' (load it with attn_implementation='sdpa')")
        _register()

    @property
    def cache_argument(self) -> str:
        """What the model's forward calls its cache: `cache` from transformers 5.25, `past_key_values` before."""
        import inspect

        return "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


@dataclass
class _Recording:
    eviction: EvictionPolicy | None
    positions: torch.Tensor  # [1, n]
    num_layers: int
    keeps: dict = field(default_factory=dict)  # layer -> keep [1, G, k] or None
    merges: dict = field(default_factory=dict)  # layer -> the kept values an eviction merged into, or None
    calls: int = 0
    policy_s: float = 0.0

    def see(self, module, query, key, value) -> None:
        layer = getattr(module, "layer_idx", None)
        layer = self.calls if layer is None else layer
        self.calls += 1
        if self.eviction is None:
            return
        if not self.keeps:  # the first layer tells the shapes
            self.eviction.begin(PrefillInfo(self.num_layers, query.shape[1], key.shape[1], query.shape[-1],
                                            (query.shape[-2],)))
        valid = torch.ones_like(self.positions, dtype=torch.bool)
        view = LayerView(layer, query, key, value, self.positions, self.positions, valid)
        began = time.perf_counter()
        keep = self.eviction.keep(layer, view)
        self.policy_s += time.perf_counter() - began
        if keep is not None:
            check_keep(keep, valid, query.shape[1], key.shape[1], self.eviction)
            if keep.shape[1] != key.shape[1] or bool((keep < 0).any() | keep_problems(keep, valid).any()):
                raise ValueError(f"{type(self.eviction).__name__} kept a different number of entries per head, or one "
                                 "per query head: a transformers cache holds the same count for every KV head, so on "
                                 "this model use an eviction with one budget for every KV head (SnapKV, StreamingLLM, "
                                 "a scorer), or a family asl's own decoder supports")
        self.keeps[layer] = keep
        if keep is not None:
            self.merges[layer] = self.eviction.merge(layer, view, keep)


def _eager_of(module):
    """The model's own eager attention function (each modeling file defines one)."""
    return getattr(sys.modules[type(module).__module__], "eager_attention_forward")


def _attention(impl: str):
    def attend(module, query, key, value, attention_mask, **kwargs):
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        own = ALL_ATTENTION_FUNCTIONS.get_interface(impl, _eager_of(module))
        out = own(module, query, key, value, attention_mask, **kwargs)
        if _RECORDING is not None and query.shape[-2] > 1:
            _RECORDING.see(module, query, key, value)
        return out
    return attend


def _register() -> None:
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    for impl, name in _NAMES.items():
        AttentionInterface.register(name, _attention(impl))
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[impl])


class _Routed:
    """Within it, the model's attention goes through ours (and back to its own after)."""

    def __init__(self, hooked: HookedModel, recording: _Recording | None):
        self.hooked, self.recording = hooked, recording

    def __enter__(self):
        global _RECORDING
        self.own = self.hooked.config._attn_implementation
        self.hooked.config._attn_implementation = _NAMES[self.own]
        _RECORDING = self.recording

    def __exit__(self, *exc):
        global _RECORDING
        self.hooked.config._attn_implementation = self.own
        _RECORDING = None


def evicted_prefill(hooked: HookedModel, ids: list[int], eviction: EvictionPolicy | None):
    """The prompt through the model; returns (last logits [1, V], the cache cut per layer, policy seconds)."""
    from transformers import DynamicCache

    device = hooked.device
    input_ids = torch.tensor([ids], device=device)
    positions = torch.arange(len(ids), device=device)[None]
    layers = hooked.config.num_hidden_layers
    recording = _Recording(eviction, positions, layers)
    cache = DynamicCache(config=hooked.config)
    with _Routed(hooked, recording):
        logits = hooked.model(input_ids=input_ids, position_ids=positions, use_cache=True,
                              **{hooked.cache_argument: cache}).logits[:, -1].float()
    if recording.calls != layers:
        raise ValueError(f"{type(hooked.model).__name__}: {recording.calls} of its {layers} layers ran attention "
                         "through transformers' attention interface, which asl's eviction hooks into")
    for layer, keep in recording.keeps.items():
        if keep is not None:
            entry = cache.layers[layer]
            idx = keep[..., None].expand(-1, -1, -1, entry.keys.shape[-1])
            entry.keys, entry.values = entry.keys.gather(2, idx), entry.values.gather(2, idx)
            if recording.merges.get(layer) is not None:
                entry.values = recording.merges[layer].to(entry.values.dtype)
    return logits, cache, recording.policy_s


def decode_step(hooked: HookedModel, token: torch.Tensor, position: int, cache) -> torch.Tensor:
    """One token [1] at `position` over the (evicted) cache: logits [1, V]."""
    with _Routed(hooked, None):
        out = hooked.model(input_ids=token[:, None], position_ids=torch.tensor([[position]], device=token.device),
                           use_cache=True, **{hooked.cache_argument: cache})
    return out.logits[:, -1].float()


def check_hooked(hooked: HookedModel, selection, eviction, cache, compile, streamer) -> None:
    """What the transformers path cannot do, refused before any work."""
    if selection is not None:
        raise ValueError(f"selection: {type(hooked.model).__name__} ({hooked.config.model_type}) is run through "
                         f"transformers' own forward, where only eviction applies; {SELECTION_NEEDS_DECODER}")
    if eviction is not None and (eviction.every > 0 or eviction.cache_positions or retrieves(eviction)
                                 or decides_after_prefill(eviction)):
        raise ValueError(f"eviction: {type(eviction).__name__} acts while decoding, renumbers positions, "
                         f"chooses keys per query (retrieval) or replays the prompt after its prefill, which "
                         f"needs asl's own decoder; on {hooked.config.model_type} give a prefill eviction (SnapKV, a scorer)")
    for name, value, default in (("cache", cache, None), ("compile", compile, False), ("streamer", streamer, None)):
        if value is not default:
            raise ValueError(f"{name}: not available on a transformers model asl runs through its own forward "
                             f"({hooked.config.model_type})")
