"""PyramidInfer (Yang et al., ACL 2024 Findings, arXiv 2405.12532), as the ASL authors' code runs it.

`PyramidInfer` is the prefill: after every layer the context shrinks to the tokens the
recent queries attend to most, so deeper layers run on (and cache) fewer tokens.
`PyramidInferDecode` is the decoding: every step, a layer whose cache grew by
`exceed` entries since it last compressed cuts the `exceed` entries before its recent
window to a few. Use both: `generate(..., selection=PyramidInfer(), eviction=PyramidInferDecode())`
(the bench's `pyramidinfer`). docs/algorithms.md section 11.

Used together, the prefill hands each layer's recent-attention rows to the decoding (a
`RecentRows` shared through `PrefillInfo.shared`), as the original keeps its prefill's
attention weights: the decoding computes them again only for the layers the prefill did not score.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .base import (DecodeView, EvictionPolicy, LayerView, PrefillInfo, Selection, SelectionPolicy, check_positive_int,
                   is_number, keep_from_mask)


@dataclass
class RecentRows:
    """The prefill's recent-attention rows, for the decoding half of one call. `wanted`: a
    decoding half is there to read them (else the prefill keeps none)."""

    wanted: bool = False
    by_layer: dict[int, dict[int, tuple[torch.Tensor, int, int]]] = field(default_factory=dict)
    # layer -> {sequence: (rows [recent, alive], first column, recent)}


def _check_ratio(name: str, value, low: float = 0.0, high: float = 1.0) -> None:
    if not is_number(value) or not low < value <= high:
        raise ValueError(f"{name} must be a number in ({low}, {high}], got {value!r}")


def cosine_schedule(ratio: float, layer: int, num_layers: int) -> float:
    """`ratio + (1 - ratio) * (cos(pi * layer / L) + 1) / 2`: 1 at layer 0, down to `ratio`."""
    return ratio + (1.0 - ratio) * (math.cos(math.pi * layer / num_layers) + 1.0) / 2.0


def recent_attention(queries: torch.Tensor, keys: torch.Tensor, query_cols: torch.Tensor, key_ok: torch.Tensor
                     ) -> torch.Tensor:
    """Attention probabilities of some queries over keys, averaged over the query heads.

    queries [H, q, d], keys [G, n, d], query_cols [q] (a query sees keys up to its column),
    key_ok [n] bool. Returns [q, n] float32 (fp32 softmax; the original's is in the model dtype).
    One KV group at a time, so the [H, q, n] probabilities are never all held.
    """
    heads, g = queries.shape[0], keys.shape[0]
    r = heads // g
    cols = torch.arange(keys.shape[1], device=keys.device)
    mask = (cols[None, :] <= query_cols[:, None]) & key_ok[None, :]  # [q, n]
    total = torch.zeros(queries.shape[1], keys.shape[1], device=keys.device)
    scale = 1.0 / math.sqrt(queries.shape[-1])
    for group in range(g):
        logits = queries[group * r:(group + 1) * r].float() @ keys[group].float().T * scale  # [r, q, n]
        total += logits.masked_fill(~mask, float("-inf")).softmax(-1).nan_to_num(0.0).sum(0)
    return total / heads


def weighted_recent_mean(probs: torch.Tensor, distance_weight: float) -> torch.Tensor:
    """[q, m] -> [m]: the recent rows weighted `linspace(1, distance_weight)` (latest most), averaged."""
    weights = torch.linspace(1.0, distance_weight, probs.shape[0], device=probs.device)
    return (probs * weights[:, None]).mean(0)


@dataclass
class PyramidInfer(SelectionPolicy):
    """The prefill of PyramidInfer: a selection after every layer, keeping `int(context * r_l)`
    of the context tokens before the recent window, `r_l` falling from 1 to `r` (cosine)."""

    r: float = 0.9  # prefill_decay_ratio: 0.9 for Llama-3.1-8B and Qwen2.5-7B, 0.8 for Qwen2.5-14B
    recent_ratio: float = 0.2  # the recent window: int(recent_ratio * prompt) + 1 tokens, always kept
    min_context: int = 64  # below it (or when r_l would keep fewer) the context is kept whole
    sink: int = 4  # the first context tokens, always kept
    distance_weight: float = 1.2
    interval: int = 1  # layerwise_downsample_interval: prune only after the layers it divides

    def _check(self) -> None:
        _check_ratio("r", self.r)
        check_positive_int("interval", self.interval)
        _check_ratio("recent_ratio", self.recent_ratio, 0.0, 0.99)
        check_positive_int("min_context", self.min_context, 0)
        check_positive_int("sink", self.sink, 0)
        if not is_number(self.distance_weight) or self.distance_weight < 1:
            raise ValueError(f"distance_weight must be a number >= 1, got {self.distance_weight!r}")

    def begin(self, prefill: PrefillInfo) -> None:
        self.num_layers, self.lengths = prefill.num_layers, prefill.prompt_lengths
        self.kept: list[list[int]] = [[] for _ in self.lengths]  # per sequence, context kept per layer
        self.alive = list(self.lengths)  # per sequence, the tokens alive (known here: only this policy prunes)
        self.first: list[int | None] = [None for _ in self.lengths]  # per sequence, the first layer it pruned at
        self._handoff = prefill.shared(RecentRows)  # read by PyramidInferDecode, if it runs in this call

    def recent(self, length: int) -> int:
        """Tokens in the recent window of a `length`-token prompt (the last one included)."""
        return int(length * self.recent_ratio) + 1

    def after_layer(self, layer: int, view: LayerView) -> Selection | None:
        ratio = cosine_schedule(self.r, layer, self.num_layers)
        if ratio >= 1.0 or layer == self.num_layers - 1 or layer % self.interval:  # the original's idx % interval
            return None
        width = view.width
        keeps, active = [], []
        for b, alive in enumerate(self.alive):  # no host read: the counts are the policy's own
            keep = self._keep(view, b, alive, ratio)
            active.append(keep is not None)
            keeps.append(keep if keep is not None else torch.arange(width - alive, width, device=view.keys.device))
        if not any(active):
            return None
        k = max(len(x) for x in keeps)
        out = torch.full((len(keeps), k), -1, dtype=torch.long, device=view.keys.device)
        for b, x in enumerate(keeps):
            out[b, : len(x)] = x
        return Selection(keep=out, active=torch.tensor(active, device=out.device))

    def _keep(self, view: LayerView, b: int, alive: int, ratio: float) -> torch.Tensor | None:
        """Sequence b's kept columns, or None to keep them all (the original's two thresholds)."""
        n = self.lengths[b]
        recent = self.recent(n)
        min_context = min(self.min_context, n - recent)
        context = alive - recent
        kept = int(context * ratio)
        if context <= min_context or kept <= min_context:
            return None
        start = view.width - alive
        cols = torch.arange(start, view.width, device=view.keys.device)
        probs = recent_attention(view.queries[b, :, view.width - recent:], view.keys[b, :, start:],
                                 torch.arange(alive - recent, alive, device=cols.device), view.valid[b, start:])
        if self._handoff.wanted:
            self._handoff.by_layer.setdefault(view.layer, {})[b] = (probs, start, recent)
        scores = weighted_recent_mean(probs[:, :context], self.distance_weight)
        scores[: self.sink] = torch.finfo(scores.dtype).max  # the sinks always stay
        chosen = torch.sort(scores, descending=True, stable=True).indices[:kept].sort().values
        self.kept[b].append(kept)
        self.alive[b] = kept + recent
        if self.first[b] is None:
            self.first[b] = view.layer
        return torch.cat([cols[chosen], cols[context:]])

    def report(self) -> list[dict]:
        """`selection_layer`: the first layer after which the sequence's context shrank."""
        return [{"selection_layer": first} for first in self.first]


@dataclass
class PyramidInferDecode(EvictionPolicy):
    """The decoding of PyramidInfer: before each step, a layer whose cache grew by `exceed`
    entries since it last compressed keeps `max(int(s * gen_compress * g_l), 1)` of the `s`
    entries (at most `exceed`) before its recent window, `g_l` falling from 1 to `gen_decay`
    (cosine). The recent window is `int(c * recent_ratio) + 1` entries, `c` the entries layer 0
    holds as the step starts (the last token included, what layer 0 evicted excluded), so it
    grows with the text as the original's `recent_length` does (recomputed at every forward
    from `1 + get_seq_length(0)`).

    The entries are ranked by the recent rows weighted `linspace(1, distance_weight)`. As the
    original (`recent2context_attn_weights *= ...` on a view of the stored rows), the weights
    are applied to the stored rows in place, so an entry ranked again at a later compression
    carries the earlier weights too, and the rows the prefill stored carry its weighting of
    their context columns; `accumulate_weights=False` weights fresh rows each time."""

    gen_decay: float = 0.1
    gen_compress: float = 0.9
    exceed: int = 16
    recent_ratio: float = 0.2  # as the prefill's: the window is int(recent_ratio * prompt) + 1 entries
    distance_weight: float = 1.2
    accumulate_weights: bool = True  # the original's in-place weighting
    every = 1

    def _check(self) -> None:
        _check_ratio("gen_decay", self.gen_decay)
        _check_ratio("gen_compress", self.gen_compress)
        check_positive_int("exceed", self.exceed)
        _check_ratio("recent_ratio", self.recent_ratio, 0.0, 0.99)
        if not is_number(self.distance_weight) or self.distance_weight < 1:
            raise ValueError(f"distance_weight must be a number >= 1, got {self.distance_weight!r}")
        if not isinstance(self.accumulate_weights, bool):
            raise ValueError(f"accumulate_weights must be True or False, got {self.accumulate_weights!r}")

    def begin(self, prefill: PrefillInfo) -> None:
        self.num_layers, self.lengths = prefill.num_layers, prefill.prompt_lengths
        self._rows: dict[int, torch.Tensor] = {}  # layer -> [B, q, cap] recent attention rows, a ring
        self._head: dict[int, int] = {}  # layer -> the ring's oldest row (the next one overwritten)
        self._from_prefill = prefill.shared(RecentRows)  # filled by PyramidInfer's prefill, if it runs
        self._from_prefill.wanted = True
        self.rows_reused = 0  # (layer, sequence) pairs whose rows came from the prefill
        self._since: dict[int, list[int]] = {}  # layer -> per sequence, its cache length at the last compression
        self._count0: list[int] | None = None  # per sequence, layer 0's entries at the start of the step
        self._windows: list[int] = []  # per sequence, this step's recent window (entries)

    def keep(self, layer: int, view: LayerView) -> None:
        return None  # the prefill's pruning is PyramidInfer's selection

    def recent_queries(self, prompt_length: int, new_tokens: int = 0) -> int:
        return self.window(prompt_length + new_tokens)

    def window(self, tokens: int) -> int:
        """The recent window over a text of `tokens` tokens: the original's recent_length + 1."""
        return int(tokens * self.recent_ratio) + 1

    def during_decode(self, layer: int, view: DecodeView) -> torch.Tensor | None:
        if layer == 0:  # the original's recent_length, from layer 0's length as the step starts
            if self._count0 is None:
                self._count0 = view.valid[:, 0, : view.length].sum(-1).tolist()
            elif view.step > 0:
                self._count0 = [c + 1 for c in self._count0]  # the token the last step wrote
            self._windows = [self.window(c) for c in self._count0]
        self._update_rows(layer, view)
        if view.step == 0:  # the original first checks after the first generated token
            return None
        due = [self.lengths[b] + view.step - (self._windows[b] - 1) - self._since[layer][b]
               >= self.exceed for b in range(len(self.lengths))]
        if not any(due):  # decided on the host's counters: no device read on the steps between compressions
            return None
        counts = view.valid[:, 0, : view.length].sum(-1).tolist()
        keep_mask = view.valid[:, 0, : view.length].clone()  # [B, length]: the same for every KV head
        ratio = cosine_schedule(self.gen_decay, layer, self.num_layers)
        for b in (b for b, d in enumerate(due) if d):
            slots = keep_mask[b].nonzero().flatten()
            recent = self._windows[b]
            span = slots[max(len(slots) - recent - self.exceed, 0): max(len(slots) - recent, 0)]
            kept = max(int(len(span) * self.gen_compress * ratio), 1)  # of the span it has (original: its slice)
            rows = self._ordered_rows(layer)[b, -recent:][:, span]
            scores = weighted_recent_mean(rows, self.distance_weight)
            if self.accumulate_weights:  # the stored rows keep the weights, as the original's do
                self._reweight_in_place(layer, b, recent, span)
            drop = torch.ones(len(span), dtype=torch.bool, device=span.device)
            drop[torch.sort(scores, descending=True, stable=True).indices[:kept]] = False
            keep_mask[b, span[drop]] = False
            self._since[layer][b] = counts[b] - int(drop.sum()) - (recent - 1)
            if layer == 0:
                self._count0[b] -= int(drop.sum())
        keep = keep_from_mask(keep_mask)  # [B, k]
        self._rows[layer] = self._gather_rows(self._rows[layer], keep)
        return keep[:, None].expand(-1, view.valid.shape[1], -1).contiguous()

    def _update_rows(self, layer: int, view: DecodeView) -> None:
        """The attention rows of the recent queries over the cache: all of them at the first
        call (the prefill's last queries: its own rows where the prefill scored this layer),
        then the newest query's row each step, written over the oldest (a ring, no copy)."""
        b, _, cap = view.valid.shape
        ok = view.valid[:, 0]
        if layer not in self._rows:
            self._since[layer] = ok[:, : view.length].sum(-1).tolist()
            q = view.queries.shape[2]
            rows = torch.zeros(b, q, cap, device=view.keys.device)
            scored = self._from_prefill.by_layer.pop(layer, {})
            for i in range(b):
                handed = scored.get(i)
                if handed is not None and handed[2] == self.recent_queries(self.lengths[i]) <= q:
                    probs, start, recent = handed  # its cache's slots are the prefill's columns
                    rows[i, q - recent:, start: start + probs.shape[1]] = probs
                    self.rows_reused += 1
                else:
                    rows[i] = self._rows_of(view, i, torch.arange(q, device=rows.device))
                if self.accumulate_weights:  # the prefill weighted its stored rows' context columns in place
                    recent = self.window(self.lengths[i])
                    slots = ok[i, : view.length].nonzero().flatten()
                    context = slots[: max(len(slots) - recent, 0)]
                    weights = torch.linspace(1.0, self.distance_weight, recent, device=rows.device)
                    rows[i, q - recent:, context] *= weights[:, None]
            self._rows[layer], self._head[layer] = rows, 0
            return
        newest = torch.tensor([view.queries.shape[2] - 1], device=view.keys.device)
        head = self._head[layer]
        for i in range(b):
            self._rows[layer][i, head] = self._rows_of(view, i, newest)[0]
        self._head[layer] = (head + 1) % self._rows[layer].shape[1]

    def _reweight_in_place(self, layer: int, b: int, recent: int, span: torch.Tensor) -> None:
        """Multiply sequence b's last `recent` stored rows (oldest first) by linspace(1,
        distance_weight) over the columns `span`, in the ring itself."""
        ring = self._rows[layer]
        q = ring.shape[1]
        where = (torch.arange(q - recent, q, device=ring.device) + self._head[layer]) % q  # ordered -> ring rows
        weights = torch.linspace(1.0, self.distance_weight, recent, device=ring.device)
        ring[b, where[:, None], span[None, :]] *= weights[:, None]

    def _ordered_rows(self, layer: int) -> torch.Tensor:
        """The layer's rows, oldest first."""
        return self._rows[layer].roll(-self._head[layer], 1)

    def _rows_of(self, view: DecodeView, b: int, which: torch.Tensor) -> torch.Tensor:
        """[len(which), cap]: probabilities of sequence b's queries `which` (ring order) over its
        cache, each seeing the entries up to its own position."""
        queries = view.queries[b, :, which]
        qpos = view.query_positions[b, which]
        keys_pos = view.positions[b, 0]
        ok = view.valid[b, 0]
        cols = torch.arange(keys_pos.shape[0], device=keys_pos.device)
        # a query sees the slots whose position is not after its own: as a column, the last such slot
        sees = torch.where(ok[None] & (keys_pos[None] <= qpos[:, None]), cols[None], -1).amax(-1)
        probs = recent_attention(queries, view.keys[b], sees, ok)
        return probs * view.query_valid[b, which, None]

    @staticmethod
    def _gather_rows(rows: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """The rows' columns follow the compaction: kept slots to the front, the rest zero."""
        gathered = rows.gather(2, keep.clamp(min=0)[:, None, :].expand(-1, rows.shape[1], -1))
        gathered = gathered * (keep >= 0)[:, None, :]
        out = torch.zeros_like(rows)
        out[:, :, : keep.shape[-1]] = gathered
        return out
