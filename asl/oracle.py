"""The selection-layer oracle: at which layer could one-shot selection have happened, in hindsight?

For one prompt and a selection size: the full cache's greedy answer, then, for every
candidate layer l, the answer when the tokens ASL's scoring picks at layer l are the only
ones that go on (the selection-alone regime: layers up to l keep the whole prompt's KV,
deeper layers the selected tokens' - exactly what `FastKV(layer=l)` with ASL's scoring
does). The oracle layer is the earliest l whose answer equals the full cache's.

Cheap by construction: one full prefill keeps every layer's input hidden states and KV;
each candidate then runs only the layers after l, on the selected tokens, and decodes.
docs/algorithms.md section 13.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .answers import partial
from .generation import decode_loop, encode, eos_ids, left_pad
from .models.cache import KVCache, LayerCache
from .models.interop import as_decoder
from .policies.base import LayerView, PrefillInfo
from .policies.fixed import FastKV
from .prefill import AliveTokens, PrefillResult, left_pad_columns, run_layers


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
        return next((o.layer for o in self.layers if o.matches), None)

    @property
    def stable_layer(self) -> int | None:
        """The earliest candidate layer from which every later candidate matches too."""
        stable = None
        for outcome in reversed(self.layers):
            if not outcome.matches:
                break
            stable = outcome.layer
        return stable

    @property
    def cost(self) -> float:
        """The prefill work of the oracle, as a multiple of one full prefill."""
        return (self.prefill_s + self.candidates_s) / self.prefill_s if self.prefill_s else float("nan")


@torch.inference_mode()
def oracle_layer(model, tokenizer, prompt: str, select_tokens: int = 1024, layers=None, max_new_tokens: int = 32,
                 window: int = 32, kernel: int = 7, pooling: str = "avg", chat: bool = False,
                 stop: list[str] | None = None, partials: bool = True) -> OracleResult:
    """Per candidate layer (default: all but the last), the greedy answer when selection
    happens after it (see the module docstring); `select_tokens` includes the window.
    `partials=False` decodes a candidate only until its first token that differs from the
    full cache's (the deepest candidate wholly): `matches` and the oracle layer are the same,
    at a fraction of the decoding, but a differing layer's text is that prefix, its partial None."""
    decoder = as_decoder(model, tokenizer)
    c = decoder.config
    candidates = list(range(c.num_layers - 1)) if layers is None else list(layers)
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

    start = time.perf_counter()
    states = _full_pass(decoder, AliveTokens.start(input_ids, valid))
    prefill_s = time.perf_counter() - start
    full_tokens = _answer(decoder, tokenizer, states.result(max_new_tokens), max_new_tokens, eos, stop)
    full_text = tokenizer.decode(full_tokens, skip_special_tokens=True)
    out = OracleResult(full_text, full_tokens, prefill_s=prefill_s, prompt_tokens=len(ids[0]))
    for layer in candidates:
        policy = FastKV(layer=layer, select_tokens=select_tokens, window=window, kernel=kernel, pooling=pooling)
        begun = time.perf_counter()
        pre = states.select_after(decoder, layer, policy, max_new_tokens)
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


@dataclass
class _States:
    """What the full prefill leaves: each layer's input hidden states, keys and values."""

    tokens: AliveTokens
    hidden: list[torch.Tensor]  # [L] inputs of each layer [1, n, D]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    logits: torch.Tensor

    def caches(self, layers: range, extra: int) -> list[LayerCache]:
        """The full cache of those layers, in fresh buffers."""
        valid = self.tokens.valid[:, None].expand_as(self.keys[0][..., 0])
        return [LayerCache.from_prefill(self.keys[i], self.values[i], valid, extra) for i in layers]

    def result(self, extra: int) -> PrefillResult:
        """The full cache, in fresh buffers."""
        n = len(self.keys)
        return _result(self.logits, self.caches(range(n), extra), self.tokens, [int(self.tokens.valid.sum())] * n)

    def select_after(self, decoder, layer: int, policy: FastKV, extra: int) -> PrefillResult:
        """Layers up to `layer` as in the full pass; then the tokens `policy` keeps run the rest."""
        c = decoder.config
        t = self.tokens
        policy.begin(PrefillInfo(c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim, tuple(t.valid.sum(-1).tolist())))
        q, k, v = decoder.layers[layer].project(self.hidden[layer], *decoder.rope(t.positions, self.hidden[0].dtype))
        chosen = policy.after_layer(layer, LayerView(layer, q, k, v, t.positions, t.index, t.valid))
        if chosen is None or layer == c.num_layers - 1:  # nothing to prune: the full cache's answer
            return self.result(extra)
        cols, valid = left_pad_columns(t.columns(chosen))
        kept = AliveTokens(t.ids, t.positions.gather(1, cols), t.index.gather(1, cols), valid)
        h = self.hidden[layer + 1].gather(1, cols[..., None].expand(-1, -1, self.hidden[0].shape[-1]))
        deeper = run_layers(decoder, h, kept, layer + 1, extra)
        alive = [int(t.valid.sum())] * (layer + 1) + deeper.alive_tokens[0]
        return _result(deeper.logits, self.caches(range(layer + 1), extra) + deeper.cache.layers, kept, alive)


def _result(logits, layers, tokens: AliveTokens, alive) -> PrefillResult:
    return PrefillResult(logits=logits, cache=KVCache(layers), alive_tokens=[list(alive)],
                         kept_indices=[tokens.index[tokens.valid].tolist()], next_positions=tokens.positions[:, -1] + 1,
                         policy_s=0.0, restarted=False)


def _full_pass(decoder, tokens: AliveTokens) -> _States:
    kept: list[tuple] = []
    h, rope = decoder.embed(tokens.ids, tokens.positions)
    full = run_layers(decoder, h, tokens, 0, 0, keep_states=kept, rope=rope)
    hidden, keys, values = (list(x) for x in zip(*kept))
    return _States(tokens, hidden, keys, values, full.logits)
