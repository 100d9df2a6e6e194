"""Compress a context once, answer many questions on it.

`compress` runs the context's prefill with the policies (a selection, an eviction, or both)
and keeps what each layer stored. `generate(..., cache=compressed)` then runs only the
question through every layer, each question token attending to that layer's compressed
entries and to the question before it, and decodes as usual. The compressed entries are
copied into each call's own buffers, so answering never changes them for the next question.

Two uses (docs/algorithms.md section 12):
- query-agnostic (like kvpress's pipeline): the policies score the context's own last
  tokens; the question is unknown when the context is compressed.
- query-aware: `question_hint` is appended to the context while the policies score it (so
  it lies in their observation window), then its own entries are dropped. A causal model's
  context entries never depend on later tokens, so what stays is exactly what a prefill of
  context + hint would keep for the context.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .models.cache import KVCache, LayerCache
from .models.decoder import Decoder
from .models.interop import as_decoder, weights_fingerprint
from .policies.base import PrefillInfo, check_policies, per_call
from .models.decoder import attend, positions_for
from .prefill import PrefillResult, prefill
from .retrieval import SparseKeys, retrieved


@dataclass(frozen=True)
class CompressedLayer:
    k: torch.Tensor  # [G, n, d] the entries the layer kept for the context
    v: torch.Tensor
    valid: torch.Tensor  # [G, n] bool (a head that kept fewer entries has masked slots)
    positions: torch.Tensor | None = None  # [G, n] int64: each entry's position (what a question's RoPE is after)
    sparse: SparseKeys | None = None  # a query-time retrieval's state over the n entries (batch of 1)


@dataclass(frozen=True)
class CompressedContext:
    """What `asl.compress` returns: a reusable per-layer cache of one context."""

    layers: tuple[CompressedLayer, ...]
    next_position: int  # the position the first question token takes
    context_tokens: int  # the context's length in tokens (hint excluded)
    alive_tokens: tuple[int, ...]  # per layer: context tokens the layer ran on
    kept_indices: tuple[int, ...]  # context indices alive at the last layer
    prefill_s: float  # the context's prefill, policies included
    policy_s: float
    report: dict  # the selection's trace fields (selection_layer, ratios), if any
    model_type: str
    decoder: Decoder  # checked by identity when a question is asked
    weights: tuple = ()  # the decoder's weights_fingerprint at compression: stale entries are refused
    context_ids: tuple[int, ...] = ()  # the context's token ids (a repetition penalty counts them)
    chat_suffix: str | None = None  # chat=True: the template's text after the user's message

    @property
    def kv_tokens_per_head(self) -> list[list[int]]:
        """`[L][G]`: entries kept per layer and KV head."""
        return [layer.valid.sum(-1).tolist() for layer in self.layers]

    @property
    def kv_bytes(self) -> int:
        k = self.layers[0].k
        return sum(int(layer.valid.sum()) for layer in self.layers) * 2 * k.shape[-1] * k.element_size()


def compress(model, tokenizer, context: str, selection=None, eviction=None,
             question_hint: str | None = None, chat: bool = False) -> CompressedContext:
    """Prefill `context` once under the policies and return its compressed cache.

    The context is tokenised as given, with the tokenizer's special tokens (BOS); questions
    asked on it later are tokenised without them and appended. `question_hint` steers
    query-aware policies, then its entries are dropped (see the module docstring). With
    `chat=True` the context opens a user turn of the chat template; each question asked with
    `generate(..., cache=..., chat=True)` closes it and the assistant's answer begins.
    """
    decoder = as_decoder(model, tokenizer)
    for name, text in (("context", context), ("question_hint", question_hint)):
        if text is None and name == "question_hint":
            continue
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{name} must be a non-empty string, got {text!r}")
    check_policies(selection, eviction)
    if getattr(selection, "revives", False):
        raise ValueError(f"{type(selection).__name__}(revive=True) selects again while each answer is generated, "
                         "which a compressed context, built once, cannot: give asl.compress revive=False (the static "
                         "form), or generate(...) on the whole prompt")
    if eviction is not None and eviction.every > 0:
        hint = " (StreamingLLM: rolling=False)" if hasattr(eviction, "rolling") else ""
        raise ValueError(f"eviction {type(eviction).__name__} also evicts while decoding (every={eviction.every}), "
                         f"which the questions asked on a compressed context do not: give asl.compress an eviction "
                         f"that acts once, at the end of the prefill{hint}, or generate(...) on the whole prompt")
    selection, eviction = per_call(selection), per_call(eviction)  # one shared policy serves many threads
    if not isinstance(chat, bool):
        raise ValueError(f"chat must be True or False, got {chat!r}")
    prefix, suffix = chat_parts(tokenizer) if chat else ("", None)
    ids = tokenizer(prefix + context, add_special_tokens=not chat)["input_ids"]
    hint = tokenizer(question_hint, add_special_tokens=False)["input_ids"] if question_hint else []
    if not ids:
        raise ValueError("context encodes to no tokens")
    limit = decoder.config.max_position_embeddings
    if len(ids) + len(hint) >= limit:
        raise ValueError(f"context and hint have {len(ids) + len(hint)} tokens; the model has {limit} positions")
    device = decoder.lm_head.weight.device
    input_ids = torch.tensor([ids + hint], device=device)
    with torch.inference_mode():
        start = time.perf_counter()
        pre = prefill(decoder, input_ids, torch.ones_like(input_ids, dtype=torch.bool), 0, selection, eviction,
                      question_tokens=(len(hint),) if hint else (), tokenizer=tokenizer)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        prefill_s = time.perf_counter() - start
    kept = [i for i in pre.kept_indices[0] if i < len(ids)]
    with torch.inference_mode():
        layers = tuple(_context_entries(layer, len(ids), kept if pre.restarted else None) for layer in pre.cache.layers)
    # Positions go on from the context's: its own length, or after a restart (positions
    # renumbered over the kept tokens) the number of context tokens kept.
    next_position = len(kept) if pre.restarted else len(ids)
    if eviction is not None and eviction.cache_positions:  # kvpress's KeyRerotationPress: no gaps left
        layers, next_position = _renumbered(layers, pre.cache.layers, decoder.rope, eviction)
    report = (selection.report() or [{}])[0] if selection is not None else {}
    return CompressedContext(layers, next_position, len(ids), tuple(pre.alive_tokens[0]), tuple(kept), prefill_s,
                             pre.policy_s, report, decoder.config.model_type, decoder, weights_fingerprint(decoder),
                             tuple(ids), suffix)


def _renumbered(layers: tuple, caches: list, rope, eviction) -> tuple[tuple, int]:
    """The compressed layers with each kept key re-rotated from its position in the text to its
    rank among the kept (0, 1, ...), and the position the question then takes: the count
    kept, which every layer and head must share."""
    counts = torch.stack([layer.valid.sum(-1) for layer in layers])  # [L, G]
    if bool((counts != counts[0, 0]).any()):
        raise ValueError(f"{type(eviction).__name__} numbers positions within the cache, which needs every layer and "
                         f"head to keep as many context entries, but they keep {counts.amax(-1).tolist()} (the most "
                         f"of each layer's heads): give it a scorer sized by a budget or a ratio, with no selection")
    out = []
    for layer, cache in zip(layers, caches):
        old = layer.positions
        new = (layer.valid.cumsum(-1) - 1).masked_fill(~layer.valid, 0)
        delta = (new - old).masked_fill(~layer.valid, 0)
        out.append(CompressedLayer(rope.rotate_by(layer.k[None], delta[None])[0], layer.v, layer.valid, new))
    return tuple(out), int(counts[0, 0])


_MARK = "\u2063ASL-QUESTION\u2063"  # text no template rewrites: where the user's message goes


def chat_parts(tokenizer) -> tuple[str, str]:
    """The chat template's text before and after one user message (with the assistant's
    generation prompt): the context follows the first part, each question precedes the second."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("chat=True but the tokenizer has no chat template")
    text = tokenizer.apply_chat_template([{"role": "user", "content": _MARK}], tokenize=False,
                                         add_generation_prompt=True)
    if text.count(_MARK) != 1:
        raise ValueError("chat=True: the tokenizer's chat template does not hold the user's message as given")
    before, after = text.split(_MARK)
    return before, after


def _context_entries(layer: LayerCache, context_tokens: int, kept: list[int] | None) -> CompressedLayer:
    """The layer's stored entries of sequence 0, the hint's dropped (they come last in the prompt),
    with their positions: the prompt index, or after a restart (`kept`: the tokens the second
    pass ran on, renumbered from 0) the token's rank among them."""
    valid = layer.valid[0, :, : layer.filled] & (layer.index[0] < context_tokens)
    n = int(valid.sum(-1).max())  # entries are sorted by prompt index: the hint's are at the end
    index = layer.index[0, :, :n].long()
    positions = index if kept is None else torch.searchsorted(torch.tensor(kept, device=index.device), index)
    sparse = None if layer.sparse is None else layer.sparse.sequence(0, n)
    return CompressedLayer(layer.k[0, :, :n].clone(), layer.v[0, :, :n].clone(), valid[:, :n].clone(),
                           positions.masked_fill(~valid[:, :n], 0), sparse)


def extend(decoder: Decoder, compressed: CompressedContext, input_ids: torch.Tensor, valid: torch.Tensor,
           extra_slots: int, eviction=None) -> PrefillResult:
    """Run left-padded questions [B, m] over fresh copies of the compressed cache; with an
    `eviction` that evicts while decoding, the entries' positions and its latest queries too."""
    if compressed.decoder is not decoder:
        raise ValueError("cache was compressed with another model: compress the context with this one")
    check_fresh(compressed, decoder)
    b, m = input_ids.shape
    positions = compressed.next_position + positions_for(valid)
    h, rope = decoder.embed(input_ids, positions)
    recent = 0
    if eviction is not None:
        c = decoder.config
        lengths = tuple(compressed.context_tokens + int(x) for x in valid.sum(-1))
        eviction.begin(PrefillInfo(c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim, lengths))
        recent = eviction.recent_queries(max(lengths), extra_slots)
    caches = []
    for layer, saved in zip(decoder.layers, compressed.layers):
        batch = (b, *saved.k.shape)
        track = eviction is not None or layer.window is not None  # entries keep their positions
        where = saved.positions.expand(batch[:3]) if track else None
        cache = LayerCache.from_prefill(saved.k.expand(batch), saved.v.expand(batch), saved.valid.expand(batch[:3]),
                                        m + extra_slots, positions=where)  # a fresh copy per question
        n = saved.k.shape[1]
        if saved.sparse is not None:
            cache.sparse = saved.sparse.expand(b, cache.k.shape[2])
        q, k, v = layer.project(h, *rope)
        cache.write(torch.arange(n, n + m, device=k.device), k, v, valid)
        if track:
            cache.positions[:, :, n:n + m] = positions.masked_fill(~valid, -1)[:, None]
        if recent:
            cache.keep_queries(q, valid, positions, recent)
        h = layer.finish(h, _question_attention(q, cache, n, m, positions, layer))
        cache.filled = n + m
        caches.append(cache)
    lengths = valid.sum(-1)
    alive = [[a + int(q) for a in compressed.alive_tokens] for q in lengths]
    kept = [list(compressed.kept_indices) + list(range(compressed.context_tokens, compressed.context_tokens + int(q)))
            for q in lengths]
    return PrefillResult(decoder.logits(h[:, -1]), KVCache(caches), alive, kept, positions[:, -1] + 1, 0.0, False)


def check_fresh(compressed: CompressedContext, decoder: Decoder) -> None:
    """Refuse entries computed from weights that have changed since (they would answer as the old model)."""
    now = weights_fingerprint(decoder)
    if now == compressed.weights:
        return
    was, is_ = compressed.layers[0].k, decoder.lm_head.weight
    if (was.dtype, was.device) != (is_.dtype, is_.device):
        why = f"the model is now {is_.dtype} on {is_.device}; the context was compressed in {was.dtype} on {was.device}"
    else:
        why = "the model's weights changed since the context was compressed (an in-place update or a replaced parameter)"
    raise ValueError(f"cache is stale: {why}; compress the context again with asl.compress")


def _question_attention(q, cache: LayerCache, n: int, m: int, positions: torch.Tensor, layer) -> torch.Tensor:
    """q [B, H, m, d] over the context's entries and, causally, the question's own: [B, m, H*d].

    Per KV head masks (an eviction keeps different entries per head) repeated over the
    query heads of each group; a padding query sees the context, so its softmax is defined.
    A sliding-window layer's query at position p sees the entries after p - window.
    """
    b, heads, _, d = q.shape
    groups = cache.k.shape[1]
    cap = cache.k.shape[2]
    slot = torch.arange(cap, device=q.device)
    causal = (slot[None, :] < n) | ((slot[None, :] >= n) & (slot[None, :] - n <= torch.arange(m, device=q.device)[:, None]))
    mask = cache.valid[:, :, None, :] & causal  # [B, G, m, cap]
    if layer.window is not None:
        mask = mask & (cache.positions[:, :, None, :] > positions[:, None, :, None] - layer.window)
        mask = mask | (slot[None, None, None, :] == n + torch.arange(m, device=q.device)[:, None])  # a query sees itself
    mask = mask.repeat_interleave(heads // groups, dim=1)
    if cache.sparse is not None:  # one choice per query head for the whole question, as Squeezed Attention's
        mask = mask & retrieved(q, cache.sparse, cache.valid, cache.valid[:, 0, n:n + m]).reshape(b, heads, 1, cap)
    out = attend(q, cache.k, cache.v, mask, layer.self_attn.softcap)
    return out.transpose(1, 2).reshape(b, m, heads * d)
