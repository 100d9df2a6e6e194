"""The prefill: the prompt runs layer by layer, policies watch, the alive set may shrink.

Sequences of a batch are left-padded; `valid` marks real tokens. Each token carries its
position id and its index in its own prompt, so after a selection the survivors keep their
original positions (docs/algorithms.md section 7). A selection that asks for a restart (the
two-pass methods) reruns the model from layer 0 on the kept tokens, positions renumbered.

The last layer attends and finishes only the last token: every token's K/V is stored, but
only that token's output is read (its logits), so the rest of that layer would be wasted.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import torch

from .models.cache import KVCache, LayerCache
from .models.decoder import Decoder, Masks, positions_for
from .policies.base import (EvictionPolicy, LayerView, PrefillInfo, Selection, SelectionPolicy, check_keep,
                            check_selection, decides_after_prefill, keep_problems)


@dataclass
class AliveTokens:
    """The alive tokens of a batch, left-padded to a common width."""

    ids: torch.Tensor  # [B, n] (only used to start a pass)
    positions: torch.Tensor  # [B, n] RoPE position ids
    index: torch.Tensor  # [B, n] index in the sequence's own prompt
    valid: torch.Tensor  # [B, n] bool

    def to(self, device: torch.device) -> AliveTokens:
        return AliveTokens(*(x.to(device) for x in (self.ids, self.positions, self.index, self.valid)))

    @classmethod
    def start(cls, ids: torch.Tensor, valid: torch.Tensor) -> AliveTokens:
        pos = positions_for(valid)
        return cls(ids, pos, pos.clone(), valid)

    def columns(self, selection: Selection) -> list[torch.Tensor]:
        """Per sequence, the columns that survive `selection`."""
        width = self.valid.shape[1]
        alive = self.valid.sum(-1).tolist()
        return [
            sel[sel >= 0] if bool(active) else torch.arange(width - a, width, device=sel.device)
            for sel, active, a in zip(selection.keep, selection.active, alive)
        ]


@dataclass
class Trunk:
    """What one pass of the whole prompt computes at every layer: its input hidden states,
    queries, keys and values, and the last layer's output. A run that has not pruned yet
    computes exactly these, so runs of the same prompt under different policies fork from it
    (`prefill(..., trunk=...)`, `asl.sweep`, the oracle) instead of running the layers again."""

    tokens: AliveTokens
    hidden: list = field(default_factory=list)  # [L] each layer's input [B, n, D]
    queries: list = field(default_factory=list)
    keys: list = field(default_factory=list)
    values: list = field(default_factory=list)
    output: torch.Tensor | None = None  # the last layer's output (its last token's row)
    logits: torch.Tensor | None = None
    layer_s: list = field(default_factory=list)  # [L] seconds from the pass's start to the end of each layer
    seconds: float = 0.0  # the whole pass, logits included


def full_trunk(model: Decoder, tokens: AliveTokens) -> Trunk:
    """The whole prompt through every layer, recording each (no cache, no policy)."""
    trunk, start = Trunk(tokens), time.perf_counter()
    h, rope = model.embed(tokens.ids, tokens.positions)
    trunk.logits = run_layers(model, h, tokens, 0, 0, record=trunk, rope=rope).logits
    trunk.layer_s = [t - start for t in trunk.layer_s]  # recorded as clock readings
    if trunk.logits.is_cuda:
        torch.cuda.synchronize(trunk.logits.device)
    trunk.seconds = time.perf_counter() - start
    return trunk


def left_pad_columns(columns: list[torch.Tensor], pad_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack per-row column lists right-aligned: ([B, n'] columns (0 on padding), [B, n'] valid)."""
    width = pad_to or max(len(c) for c in columns)
    cols = torch.zeros(len(columns), width, dtype=torch.long, device=columns[0].device)
    valid = torch.zeros(len(columns), width, dtype=torch.bool, device=columns[0].device)
    for b, c in enumerate(columns):
        if len(c):
            cols[b, width - len(c):] = c
            valid[b, width - len(c):] = True
    return cols, valid


def _gather_rows(x: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """x [B, n, ...] -> [B, n', ...] at cols [B, n']."""
    idx = cols.view(*cols.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
    return x.gather(1, idx)


def store_layer(k, v, tokens: AliveTokens, keep: torch.Tensor | None, extra_slots: int,
                with_positions: bool = False) -> LayerCache:
    """The layer's cache: all alive entries, or per KV head the columns `keep` (-1 pads); each
    entry remembers its token's prompt index (and position, for a decode-time eviction)."""
    b, g, n, _ = k.shape
    spread = lambda x: x[:, None, :].expand(b, g, n)  # noqa: E731  (one value per token, every KV head)
    return LayerCache.from_prefill(k, v, spread(tokens.valid), extra_slots, spread(tokens.index),
                                   spread(tokens.positions) if with_positions else None, keep)


def window_keep(view: LayerView, eviction: EvictionPolicy | None) -> torch.Tensor | None:
    """A sliding-window layer's cache (docs/algorithms.md section 20): the entries the next token
    can see (positions after `next - window`); with an eviction, what it keeps when the layer's
    tokens are those. Columns of the view, per KV head, -1 pads."""
    b, g = view.valid.shape[0], view.keys.shape[1]
    seen = view.valid & (view.positions > view.positions[:, -1:] + 1 - view.window)
    if eviction is None and bool((seen == view.valid).all()):
        return None  # the whole prompt is within the window
    start = view.width - int(seen.sum(-1).max())
    keep = None
    if eviction is not None:
        part = LayerView(view.layer, *(x[:, :, start:] for x in (view.queries, view.keys, view.values)),
                         *(x[:, start:] for x in (view.positions, view.index)), seen[:, start:], rope=view.rope,
                         out_proj=view.out_proj, window=view.window)
        keep = eviction.keep(view.layer, part)
        if keep is not None:
            return torch.where(keep >= 0, keep + start, -1)
    cols = torch.arange(view.width, device=seen.device).expand(b, -1)
    order = torch.where(seen, cols, view.width).sort(-1).values[:, : view.width - start]
    return torch.where(order < view.width, order, -1)[:, None].expand(b, g, -1).contiguous()


def _check_evictions(problems: list[tuple[int, torch.Tensor]], eviction) -> None:
    """Raise naming the eviction policy, the layer and the sequence whose keep was not sorted
    distinct real columns (one host read per prefill, not one per layer)."""
    if not problems:
        return
    bad = torch.stack([flags.to(problems[0][1].device) for _, flags in problems])  # [layers that evicted, B]
    if bool(bad.any()):
        step, seq = (int(x) for x in bad.nonzero()[0])
        raise ValueError(f"{type(eviction).__name__}: keep() at layer {problems[step][0]} for sequence {seq} is not, "
                         "per KV head, a sorted list of distinct real columns with -1 pads at the end")


def _say_if_over_budget(eviction: EvictionPolicy, view: LayerView) -> None:
    """Once per policy object: an eviction with a `budget` kept everything of a prompt longer
    than it (a broken custom keep() looks like a working one that costs the full cache)."""
    budget, origin = getattr(eviction, "budget", None), getattr(eviction, "origin", eviction)
    if getattr(eviction, "ratio", None) is not None:  # sized from each layer's own tokens: no count to exceed
        return
    if hasattr(eviction, "layer_budget"):  # PyramidKV: the budget is a mean, each layer has its own
        budget = eviction.layer_budget(view.layer, view.width)
    if hasattr(eviction, "prefill_budget"):  # DecodingEviction: its budget is while decoding
        budget = eviction.prefill_budget
    if not isinstance(budget, int) or view.width <= budget or getattr(origin, "_said_over_budget", False):
        return
    object.__setattr__(origin, "_said_over_budget", True)  # also on a frozen dataclass
    warnings.warn(f"{type(eviction).__name__}(budget={budget}).keep() returned None (keep everything) at layer "
                  f"{view.layer} for a prompt of {view.width} tokens: the cache there is not within the budget",
                  stacklevel=2)


@dataclass
class PrefillResult:
    logits: torch.Tensor  # [B, V] of the last prompt token
    cache: KVCache
    alive_tokens: list[list[int]]  # [B][L] real tokens each layer ran on (the final pass)
    kept_indices: list[list[int]]  # [B] prompt indices of the tokens alive at the last layer
    next_positions: torch.Tensor  # [B] position of the first generated token
    policy_s: float  # time spent in the policies (scoring, ranking, choosing)
    restarted: bool


@torch.inference_mode()
def prefill(
    model: Decoder,
    input_ids: torch.Tensor,
    valid: torch.Tensor,
    extra_slots: int,
    selection: SelectionPolicy | None = None,
    eviction: EvictionPolicy | None = None,
    trunk: Trunk | None = None,
    question_tokens: tuple[int, ...] = (),
    tokenizer=None,
) -> PrefillResult:
    """Run the prompt through the model with the policies; see the module docstring. With a
    `trunk` of these very tokens (`full_trunk`), the layers before the first selection are read
    from it, not run: the same numbers, at the cost of the policies alone. `question_tokens`: per
    sequence, how many of the prompt's last tokens are its question (asl.compress's hint), for a
    policy that scores by it (asl.Finch). `tokenizer`: the caller's, for an eviction that writes
    text of its own (asl.KVzip's repeat prompt)."""
    c = model.config
    if trunk is not None and not (torch.equal(trunk.tokens.ids, input_ids) and torch.equal(trunk.tokens.valid, valid)):
        raise ValueError("trunk: it was computed for other tokens than these")
    if trunk is not None and selection is not None and selection.restarts:
        raise ValueError(f"trunk: {type(selection).__name__} reruns the model from layer 0 after its selection; "
                         "only one-shot selections fork from a shared trunk")
    if eviction is not None and eviction.cache_positions and model.local_rope is not None:
        raise ValueError(f"eviction: {type(eviction).__name__} turns kept keys to new positions, which a model whose "
                         f"sliding layers have their own RoPE ({c.model_type}) does not support")
    info = PrefillInfo(c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim, tuple(valid.sum(-1).tolist()),
                       question_tokens, c.layer_windows)
    for policy in (selection, eviction):
        if policy is not None:
            policy.begin(info)
    tokens = AliveTokens.start(input_ids, valid)
    if trunk is not None:
        result = run_layers(model, trunk.hidden[0], tokens, 0, extra_slots, selection, eviction, trunk=trunk)
        return _after_prefill(model, tokens, result, eviction, tokenizer)
    result = _run(model, tokens, extra_slots, selection, eviction)
    if isinstance(result, PrefillResult):
        return _after_prefill(model, tokens, result, eviction, tokenizer)
    # two-pass: rerun the kept tokens alone, renumbered from 0, with no selection
    cols, new_valid = left_pad_columns(tokens.columns(result[0]))
    kept_ids = tokens.ids.gather(1, cols)
    second = AliveTokens(kept_ids, positions_for(new_valid), tokens.index.gather(1, cols), new_valid)
    out = _run(model, second, extra_slots, None, eviction)
    out.policy_s += result[1]
    out.restarted = True
    return out


def _after_prefill(model, tokens: AliveTokens, result: PrefillResult, eviction, tokenizer) -> PrefillResult:
    """The cut of an eviction that chooses once every layer has run (`after_prefill`), applied to
    each layer's stored entries; its time is the policy's."""
    if not decides_after_prefill(eviction):
        return result
    begun = time.perf_counter()
    keeps = eviction.after_prefill(model, tokens, result.cache, tokenizer)
    result.policy_s += time.perf_counter() - begun
    if keeps is None:
        return result
    c = model.config
    layers = list(result.cache.layers)
    for i, (layer, keep) in enumerate(zip(layers, keeps)):
        if keep is None:
            continue
        check_keep(keep, tokens.valid, c.num_heads, c.num_kv_heads, eviction)
        _check_evictions([(i, keep_problems(keep, tokens.valid).any(-1))], eviction)
        n = layer.filled
        cut = lambda x: None if x is None else x[:, :, :n]  # noqa: E731
        layers[i] = LayerCache.from_prefill(layer.k[:, :, :n], layer.v[:, :, :n], layer.valid[:, :, :n],
                                            layer.k.shape[2] - n, cut(layer.index), cut(layer.positions), keep=keep)
    result.cache = KVCache(layers)
    return result


def _run(model, tokens: AliveTokens, extra_slots, selection, eviction):
    """One pass over the layers. Returns a PrefillResult, or (selection, policy_s) on a restart."""
    h, rope = model.embed(tokens.ids, tokens.positions)
    return run_layers(model, h, tokens, 0, extra_slots, selection, eviction, rope=rope)


def run_layers(model, h: torch.Tensor, tokens: AliveTokens, start: int, extra_slots: int,
               selection: SelectionPolicy | None = None, eviction: EvictionPolicy | None = None,
               record: Trunk | None = None, rope: tuple | None = None, trunk: Trunk | None = None):
    """The layer loop (the only one): hidden states `h` [B, n, D] of the alive `tokens` run
    through layers `start`.. with the policies. Returns a PrefillResult whose cache and
    alive counts cover those layers, or (selection, policy_s) when a selection restarts.

    `record`: a Trunk that receives each layer's input h, q, k, v instead of a cache stored.
    `trunk`: one recorded for these tokens; until the first selection prunes, each layer's
    q, k, v and output are read from it instead of computed. `rope`: the tokens' RoPE tables
    where the caller has them already."""
    restarts = selection is not None and selection.restarts
    evicts_later = eviction is not None and eviction.every > 0  # it evicts during decoding too
    decoding = evicts_later or (eviction is not None and eviction.cache_positions)  # entries keep their positions
    recent = eviction.recent_queries(int(tokens.valid.sum(-1).max()), extra_slots) if evicts_later else 0
    masks = Masks(tokens.positions, tokens.valid)
    rope = model.tables(tokens.positions, h.dtype) if rope is None and trunk is None else rope
    layers, alive, policy_s, problems = [], [], 0.0, []
    last = len(model.layers) - 1
    for i in range(start, last + 1):
        layer = model.layers[i]
        if trunk is None and model.layer_device(i) != h.device:  # a model placed across devices: the next stage
            h, tokens = h.to(model.layer_device(i)), tokens.to(model.layer_device(i))
            masks, rope = Masks(tokens.positions, tokens.valid), model.tables(tokens.positions, h.dtype)
        if trunk is not None:  # these tokens ran this layer in the trunk's pass
            q, k, v = trunk.queries[i], trunk.keys[i], trunk.values[i]
            h = trunk.hidden[i + 1] if i < last else trunk.output
        else:
            q, k, v = layer.project(h, *rope)
            if record is not None:
                record.hidden.append(h), record.queries.append(q), record.keys.append(k), record.values.append(v)
            h = layer.prefill(h, q, k, v, masks, last=i == last)
            if record is not None:  # when the layer's work is done (a CUDA device waited for)
                if h.is_cuda:
                    torch.cuda.synchronize(h.device)
                record.layer_s.append(time.perf_counter())
        alive.append(tokens.valid.sum(-1))
        view = LayerView(i, q, k, v, tokens.positions, tokens.index, tokens.valid, rope=model.rope_for(i),
                         out_proj=layer.self_attn.o_proj.weight, window=layer.window, hidden=h if i < last else None)
        begun = time.perf_counter()
        if layer.window is not None and not restarts:  # the eviction chooses among what the layer can still see
            keep = window_keep(view, eviction)
        else:
            keep = eviction.keep(i, view) if eviction is not None and not restarts else None
            if keep is None and eviction is not None and not restarts:
                _say_if_over_budget(eviction, view)
        chosen = selection.after_layer(i, view) if selection is not None else None
        policy_s += time.perf_counter() - begun
        if keep is not None:  # its shape here, its columns on the device (read once, after the loop)
            check_keep(keep, tokens.valid, q.shape[1], k.shape[1], eviction)
            problems.append((i, keep_problems(keep, tokens.valid).any(-1)))
            keep = keep.clamp(max=tokens.valid.shape[-1] - 1)
        if not restarts and record is None:  # a first pass that restarts keeps no KV
            layers.append(store_layer(k, v, tokens, keep, extra_slots, decoding or layer.window is not None))
            begun = time.perf_counter()
            merged = eviction.merge(i, view, keep) if keep is not None and layer.window is None else None
            channels = eviction.key_channels(i, view, keep) if eviction is not None else None
            sparse = eviction.retrieval(i, view, layers[-1].k.shape[2]) if eviction is not None else None
            policy_s += time.perf_counter() - begun
            if merged is not None:  # the eviction folded what it dropped into the values it kept
                layers[-1].v[:, :, : merged.shape[2]] = merged.to(v.dtype)
            if channels is not None:  # the eviction stores only some channels of the keys (the rest zeroed)
                stored = layers[-1]
                stored.k[:, :, : stored.filled] *= channels.repeat_interleave(
                    stored.k.shape[1] // channels.shape[1], dim=1)[:, :, None, :].to(stored.k.dtype)
            if recent:
                layers[-1].keep_queries(q, tokens.valid, tokens.positions, recent)
            layers[-1].sparse = sparse
        del q, k, v, view
        if chosen is None:
            continue
        check_selection(chosen, tokens.valid, selection)
        if restarts:
            return chosen, policy_s
        if not bool(chosen.active.any()):
            continue
        cols, valid = left_pad_columns(tokens.columns(chosen))
        if i < last:
            h = _gather_rows(h, cols)
        tokens = AliveTokens(tokens.ids, tokens.positions.gather(1, cols), tokens.index.gather(1, cols), valid)
        masks = Masks(tokens.positions, valid)
        rope = model.tables(tokens.positions, h.dtype)
        trunk = None  # pruned: from here on the layers run on the kept tokens
    if record is not None:
        record.output = h
    _check_evictions(problems, eviction)
    if restarts:  # it never asked to restart: rerun storing KV, all tokens kept
        nothing = torch.zeros(tokens.valid.shape[0], dtype=torch.bool, device=h.device)
        return Selection(keep=tokens.index[:, :0], active=nothing), policy_s
    return PrefillResult(
        logits=model.logits(h[:, -1]),
        cache=KVCache(layers) if record is None else None,  # recording a trunk: no cache was stored
        alive_tokens=torch.stack([a.to(alive[0].device) for a in alive], 1).tolist(),
        kept_indices=[idx[ok].tolist() for idx, ok in zip(tokens.index, tokens.valid)],
        next_positions=tokens.positions[:, -1] + 1,
        policy_s=policy_s,
        restarted=False,
    )
