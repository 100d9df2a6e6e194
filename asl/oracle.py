"""The selection-layer oracle: at which layer could one-shot selection have happened, in hindsight?

For one prompt and a selection size: the full cache's greedy answer, then, for every
candidate layer l, the answer when the tokens ASL's scoring picks at layer l are the only
ones that go on (the selection-alone regime: layers up to l keep the whole prompt's KV,
deeper layers the selected tokens' - exactly what `FastKV(layer=l)` with ASL's scoring
does). The oracle layer is the earliest l whose answer equals the full cache's.

Cheap by construction: one full prefill records every layer's states (a `Trunk`); each
candidate forks from it and runs only the layers after l, on the selected tokens, and decodes.
docs/algorithms.md section 13.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .answers import partial
from .calibration.search import earliest_match, stable_match
from .generation import decode_loop, encode, eos_ids, left_pad
from .models.interop import as_decoder
from .policies.fixed import FastKV
from .prefill import AliveTokens, PrefillResult, Trunk, full_trunk, prefill


@dataclass
class LayerOutcome:
    layer: int
    text: str
    tokens: list[int]
    matches: bool  # the full cache's greedy tokens exactly
    partial: float | None  # metrics.partial of the text against the full cache's (None: decoded only to the first difference)
    kv_tokens: int  # KV entries stored, summed over layers (one KV head)


@dataclass
class OracleResult:
    full_text: str
    full_tokens: list[int]
    layers: list[LayerOutcome] = field(default_factory=list)
    prefill_s: float = 0.0  # one full prefill (with the states kept)
    candidates_s: float = 0.0  # all candidates' deeper layers, decoding excluded
    prompt_tokens: int = 0

    @property
    def oracle_layer(self) -> int | None:
        """The earliest candidate layer whose answer equals the full cache's (None: none does)."""
        return earliest_match({o.layer: o.matches for o in self.layers})

    @property
    def stable_layer(self) -> int | None:
        """The earliest candidate layer from which every later candidate matches too."""
        return stable_match({o.layer: o.matches for o in self.layers})

    @property
    def cost(self) -> float:
        """The prefill work of the oracle, as a multiple of one full prefill."""
        return (self.prefill_s + self.candidates_s) / self.prefill_s if self.prefill_s else float("nan")


@torch.inference_mode()
def oracle_layer(model, tokenizer, prompt: str, select_tokens: int = 1024, layers=None, max_new_tokens: int = 32,
                 window: int = 32, kernel: int = 7, pooling: str = "avg", chat: bool = False,
                 stop: list[str] | None = None, partials: bool = True, trunk: Trunk | None = None) -> OracleResult:
    """Per candidate layer (default: all but the last; on a model with sliding-window layers its
    global ones, where a selection is taken: docs/algorithms.md section 20), the greedy answer
    when selection happens after it (see the module docstring); `select_tokens` includes the window.
    `partials=False` decodes a candidate only until its first token that differs from the
    full cache's (the deepest candidate wholly): `matches` and the oracle layer are the same,
    at a fraction of the decoding, but a differing layer's text is that prefix, its partial None.
    `trunk`: this prompt's `asl.prompt_trunk`, shared with sweeps of it (its time counts as the
    oracle's full prefill)."""
    decoder = as_decoder(model, tokenizer)
    c = decoder.config
    candidates = [l for l in range(c.num_layers - 1) if c.window(l) is None] if layers is None else list(layers)
    bad = [l for l in candidates if not isinstance(l, int) or not 0 <= l < c.num_layers]
    if bad or not candidates:
        raise ValueError(f"layers must be layers of the model (0..{c.num_layers - 1}), got {layers!r}")
    FastKV(layer=0, select_tokens=select_tokens, window=window, kernel=kernel, pooling=pooling)  # checks the fields
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
    ids = encode(tokenizer, [prompt], chat)
    if len(ids[0]) + max_new_tokens > c.max_position_embeddings:
        raise ValueError(f"prompt has {len(ids[0])} tokens; with max_new_tokens={max_new_tokens} that exceeds the "
                         f"model's {c.max_position_embeddings} positions")
    device = decoder.lm_head.weight.device
    input_ids, valid = left_pad(ids, device)
    eos = torch.tensor(sorted(eos_ids(decoder, tokenizer)), device=device)
    if trunk is None:
        trunk = full_trunk(decoder, AliveTokens.start(input_ids, valid))
    prefill_s = trunk.seconds
    full = prefill(decoder, input_ids, valid, max_new_tokens, trunk=trunk)
    full_tokens = _answer(decoder, tokenizer, full, max_new_tokens, eos, stop)
    full_text = tokenizer.decode(full_tokens, skip_special_tokens=True)
    out = OracleResult(full_text, full_tokens, prefill_s=prefill_s, prompt_tokens=len(ids[0]))
    for layer in candidates:
        policy = FastKV(layer=layer, select_tokens=select_tokens, window=window, kernel=kernel, pooling=pooling)
        begun = time.perf_counter()
        pre = prefill(decoder, input_ids, valid, max_new_tokens, policy, trunk=trunk)
        out.candidates_s += time.perf_counter() - begun
        whole = partials or layer == candidates[-1]
        tokens = _answer(decoder, tokenizer, pre, max_new_tokens, eos, stop, None if whole else full_tokens)
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        kv = int(pre.cache.kv_tokens()[:, 0].amax(-1).sum())
        matches = tokens == full_tokens
        score = partial(text, [full_text]) if whole or matches else None
        out.layers.append(LayerOutcome(layer, text, tokens, matches, score, kv))
    return out


def _answer(decoder, tokenizer, pre: PrefillResult, max_new_tokens: int, eos, stop, follow=None) -> list[int]:
    first = pre.logits.argmax(-1)
    generated, *_ = decode_loop(decoder, tokenizer, pre, first, max_new_tokens, eos, stop, False,
                                lambda logits: logits.argmax(-1), follow=follow)
    return generated[0]
