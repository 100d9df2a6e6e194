"""Sweeps that share their prefix: one prompt under several one-shot selections (FastKV at
layers l1 < l2 < ..., ASL at several thresholds) or several evictions (SnapKV, TOVA, ... on
the full prefill), the layers before each selection run once for all. A run that has not pruned yet computes exactly the full pass's numbers, so every
point forks from one recorded full pass (`prefill.Trunk`) and runs only the layers after its
selection, on its kept tokens: each answer and trace is what `generate` gives that point alone
(tests/test_sweep.py), at the cost of one full prefill plus the points' deeper layers.
docs/algorithms.md section 13 (the oracle is such a sweep)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .generation import GenerationOutput, check_fits, encode, generate_ids, left_pad
from .generation_settings import resolve
from .models.interop import as_decoder
from .policies.base import SelectionPolicy, check_policies
from .prefill import AliveTokens, Trunk, full_trunk


@dataclass
class SweepOutput:
    outputs: list[GenerationOutput]  # one per selection, in their order
    trunk_s: float  # the shared full pass; each output's trace.prefill_s is its own part beyond it
    trunk_layer_s: list[float]  # [L] seconds from the trunk's start to the end of each of its layers

    @property
    def prefill_s(self) -> float:
        """The whole sweep's prefill time: the trunk and every point's own part."""
        return self.trunk_s + sum(o.trace.prefill_s for o in self.outputs)

    def alone_prefill_s(self, i: int) -> float:
        """What point i's prefill would have taken run alone: the trunk's layers up to its
        selection (all of them where it never selected) and its own part (its policies at
        every layer, the copies of the shared layers' KV, the layers after its selection)."""
        layer = self.outputs[i].trace.selection_layer
        shared = self.trunk_layer_s[-1] if layer is None else self.trunk_layer_s[layer]
        return shared + self.outputs[i].trace.prefill_s


@torch.inference_mode()
def prompt_trunk(model, tokenizer, prompt: str, chat: bool = False) -> Trunk:
    """`prompt`'s full pass, recorded at every layer, for several sweeps and oracles of that
    prompt to fork from (`sweep(..., trunk=)`, `oracle_layer(..., trunk=)`) instead of each
    running it again: asl.bench calibrate reads a prompt's oracle, ASL ratios and rule signals
    from one."""
    _check_prompt(prompt)
    decoder = as_decoder(model, tokenizer)
    ids = encode(tokenizer, [prompt], chat)
    check_fits(decoder, ids, 0)
    return full_trunk(decoder, AliveTokens.start(*left_pad(ids, decoder.lm_head.weight.device)))


def _check_prompt(prompt) -> None:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")


@torch.inference_mode()
def sweep(model, tokenizer, prompt: str, selections: list[SelectionPolicy | None], eviction=None,
          max_new_tokens: int | None = None, stop: list[str] | None = None, chat: bool = False,
          generation_config=None, trunk: Trunk | None = None) -> SweepOutput:
    """`generate(model, tokenizer, prompt, selection=s, eviction=e, ...)` for every point (greedy),
    the full pass shared. A point's selection may be None (the full prefill: an eviction-only
    method, or the full cache itself). `eviction`: one policy (or None) for every point, or a
    list with one per point, so one full pass serves several evictions (kvpress's presses
    side by side). Two-pass selections (GemFilter, ASL two-pass) rerun the model from layer 0
    and cannot share it: they are refused. `trunk`: this prompt's `prompt_trunk`, shared with
    other sweeps or an oracle (its time is counted as the sweep's own)."""
    _check_prompt(prompt)
    if not isinstance(selections, (list, tuple)) or not selections:
        raise ValueError(f"selections must be a non-empty list of selection policies (or None), got {selections!r}")
    evictions = list(eviction) if isinstance(eviction, (list, tuple)) else [eviction] * len(selections)
    if len(evictions) != len(selections):
        raise ValueError(f"eviction: a list needs one policy (or None) per point, {len(selections)}, "
                         f"got {len(evictions)}")
    for s, e in zip(selections, evictions):
        if s is not None and not isinstance(s, SelectionPolicy):
            raise ValueError(f"selections must hold selection policies (or None), got {type(s).__name__}")
        if s is not None and s.restarts:
            raise ValueError(f"selections: {type(s).__name__} reruns the model from layer 0 after its selection; "
                             "a sweep shares the layers before a one-shot selection only")
        check_policies(s, e)
    settings = resolve(generation_config, max_new_tokens=max_new_tokens, stop=stop)
    decoder = as_decoder(model, tokenizer)
    ids = encode(tokenizer, [prompt], chat)
    check_fits(decoder, ids, settings.max_new_tokens)  # before the trunk's work
    input_ids, valid = left_pad(ids, decoder.lm_head.weight.device)
    if trunk is None:
        trunk = full_trunk(decoder, AliveTokens.start(input_ids, valid))
    outputs = [generate_ids(decoder, tokenizer, ids, settings, selection=s, eviction=e, single=True, trunk=trunk)
               for s, e in zip(selections, evictions)]
    return SweepOutput(outputs, trunk.seconds, trunk.layer_s)
