"""The two policy interfaces and what a policy may read at a layer.

A `SelectionPolicy` decides, during prefill, which tokens travel on to deeper layers; an
`EvictionPolicy` decides which KV entries each layer stores for decoding. Both read a
`LayerView`. Sequences of a batch are left-padded to a common width `n`; every index a
policy returns is a column of that padded layout, and `-1` marks an unused slot.
"""
from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

import torch

from .. import ops
from ..models.rope import turn

POOLINGS = ("avg", "max")
T = TypeVar("T")


@dataclass(frozen=True)
class PrefillInfo:
    """What a policy learns before the prefill starts (so it can check itself against the model)."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    prompt_lengths: tuple[int, ...]
    question_tokens: tuple[int, ...] = ()  # per sequence, the question's tokens at the prompt's end, where known
    layer_windows: tuple[int | None, ...] = ()  # per layer, its sliding window (None: global); () if none has one
    _shared: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def batch_size(self) -> int:
        return len(self.prompt_lengths)

    def window(self, layer: int) -> int | None:
        """The layer's sliding window (docs/algorithms.md section 20), None where it attends globally."""
        return self.layer_windows[layer] if self.layer_windows else None

    @property
    def global_layers(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.num_layers) if self.window(i) is None)

    def shared(self, kind: type[T]) -> T:
        """The one `kind()` object of this prefill, made on the first ask: how the policies of
        one call hand each other data, typed and whichever begins first (PyramidInfer's prefill
        gives its decoding the attention rows it computed, in a `RecentRows`)."""
        if kind not in self._shared:
            self._shared[kind] = kind()
        return self._shared[kind]


@dataclass
class SelectedShares:
    """Per sequence, the share of its prompt a one-shot selection said it keeps (FastKV's
    `tsp_rate`), for an eviction whose budget is a share of the tokens (asl.Proportional)."""

    by_sequence: dict[int, float] = field(default_factory=dict)


@dataclass
class Selection:
    """Tokens to propagate, per sequence: sorted columns of the current layer (`-1` pads).

    `active[b]` says whether sequence b selects now (others keep all their tokens). From a
    policy that `restarts`, any Selection reruns the model from layer 0 on the kept tokens.
    """

    keep: torch.Tensor  # [B, k] int64
    active: torch.Tensor  # [B] bool

    @classmethod
    def from_own_columns(cls, view: LayerView, chosen: dict[int, torch.Tensor]) -> Selection:
        """From per-sequence choices in each sequence's own columns (0 .. alive-1), for the
        sequences in `chosen` (the others keep all their tokens), to the view's padded columns."""
        batch, width = view.valid.shape[0], view.width
        alive = view.alive.tolist()
        k = max(len(c) for c in chosen.values())
        keep = torch.full((batch, k), -1, dtype=torch.long, device=view.valid.device)
        active = torch.zeros(batch, dtype=torch.bool, device=view.valid.device)
        for b, cols in chosen.items():
            keep[b, : len(cols)] = cols + (width - alive[b])
            active[b] = True
        return cls(sort_keep(keep), active)


class LayerView:
    """Post-RoPE q/k/v of one layer's alive tokens, with the shared window scores.

    queries [B, H, n, d], keys / values [B, G, n, d], positions and `index` (the token's
    index in its own prompt) [B, n], `valid` [B, n] (False on left padding). What a scorer may
    read of the model besides (None where the caller has no model): `rope`, the model's RoPE
    (`rope(positions, dtype) -> (cos, sin)` [B, n, d]), and `out_proj`, the layer's output
    projection weight [hidden, H * d]; `hidden`, the layer's output hidden states [B, n, D] (what a
    selection that revives keeps of the tokens it drops: asl.LazyLLM). `window`: the layer's
    sliding window, None where it attends globally (docs/algorithms.md section 20).
    """

    def __init__(self, layer: int, queries, keys, values, positions, index, valid, rope=None, out_proj=None,
                 window: int | None = None, hidden=None):
        self.layer, self.window = layer, window
        self.queries, self.keys, self.values = queries, keys, values
        self.positions, self.index, self.valid = positions, index, valid
        self.rope, self.out_proj, self.hidden = rope, out_proj, hidden
        self._scores: dict[tuple, torch.Tensor] = {}

    def columns(self, b: int, start: int, stop: int) -> "LayerView":
        """Sequence b's columns [start, stop) as a view of their own (batch of one), for a policy
        that scores parts of the prompt as if each were the whole (asl.PerChunk)."""
        part = lambda x: None if x is None else x[b:b + 1, ..., start:stop, :]  # noqa: E731 - [B, heads, n, d]
        flat = lambda x: x[b:b + 1, start:stop]  # noqa: E731 - [B, n]
        hidden = None if self.hidden is None else self.hidden[b:b + 1, start:stop]
        return LayerView(self.layer, part(self.queries), part(self.keys), part(self.values), flat(self.positions),
                         flat(self.index), flat(self.valid), self.rope, self.out_proj, self.window, hidden)

    def entries(self, b: int, head: int | None, cols: torch.Tensor) -> "LayerView":
        """Sequence b at columns `cols` as a view of one sequence, for a policy that scores a chosen
        set as a prompt (asl.Blockwise, asl.Chain): KV head `head` with its query heads, or every
        head where `head` is None."""
        group = self.queries.shape[1] // self.keys.shape[1]
        pick = lambda x, n: x[b:b + 1] if head is None else x[b:b + 1, head * n:(head + 1) * n]  # noqa: E731
        hidden = None if self.hidden is None else self.hidden[b:b + 1, cols]
        return LayerView(self.layer, pick(self.queries, group)[:, :, cols], pick(self.keys, 1)[:, :, cols],
                         pick(self.values, 1)[:, :, cols], self.positions[b:b + 1, cols], self.index[b:b + 1, cols],
                         self.valid[b:b + 1, cols], self.rope, None if head is not None else self.out_proj,
                         self.window, hidden)

    def model_part(self, name: str, who: str):
        """`rope`, `out_proj` or `hidden`, or a clear error naming the policy that needs it."""
        part = getattr(self, name)
        if part is None:
            raise ValueError(f"{who} reads the model's {name}, which this LayerView was built without "
                             f"(give LayerView(..., {name}=...); the prefill always gives it)")
        return part

    def prerope_queries(self, who: str = "this policy") -> torch.Tensor:
        """The queries before RoPE [B, H, n, d] in float32: the rotation undone (a rotation by
        minus the angle, divided by cos^2 + sin^2, which is 1 but for YaRN's attention factor)."""
        return self._unrotated(self.queries, who)

    def prerope_keys(self, who: str = "this policy") -> torch.Tensor:
        """The keys before RoPE [B, G, n, d] in float32 (as `prerope_queries`), computed once per view."""
        if "prerope_keys" not in self._scores:
            self._scores["prerope_keys"] = self._unrotated(self.keys, who)
        return self._scores["prerope_keys"]

    def _unrotated(self, x: torch.Tensor, who: str) -> torch.Tensor:
        cos, sin = self.model_part("rope", who)(self.positions, torch.float32)
        x = x.float()
        cos, sin = cos[:, None], sin[:, None]
        r = cos.shape[-1]  # a partial rotary factor turns only the first r dims
        return torch.cat([turn(x[..., :r], cos, -sin) / (cos * cos + sin * sin), x[..., r:]], dim=-1)

    @property
    def alive(self) -> torch.Tensor:
        """[B] real tokens alive at this layer."""
        return self.valid.sum(-1)

    @property
    def width(self) -> int:
        return self.valid.shape[-1]

    def window_scores(self, window: int = 32, kernel: int = 7, pooling: str = "avg") -> torch.Tensor:
        """Per-KV-head scores of the prefix [B, G, n - window], -inf on padding (section 1, steps 1-4).

        Computed once per layer and argument set, so a selection and an eviction policy with
        the same settings share one computation.
        """
        key = (window, kernel, pooling)
        if key not in self._scores:
            self._scores[key] = ops.window_scores(self.queries, self.keys, self.valid, window, kernel, pooling)
        return self._scores[key]

    def token_scores(self, window: int = 32, kernel: int = 7, pooling: str = "avg") -> torch.Tensor:
        """Per-token scores of the prefix [B, n - window], summed over all heads (step 5)."""
        return self.window_scores(window, kernel, pooling).sum(1)

    def with_window(self, prefix_keep: torch.Tensor, window: int) -> torch.Tensor:
        """Sorted union of chosen prefix columns [..., k'] (-1 pads) and the last `window` columns."""
        win = torch.arange(self.width - window, self.width, device=prefix_keep.device)
        return sort_keep(torch.cat([prefix_keep, win.expand(*prefix_keep.shape[:-1], -1)], dim=-1))


def sort_keep(keep: torch.Tensor) -> torch.Tensor:
    """Sort kept columns ascending with the -1 pads moved to the end."""
    big = torch.iinfo(keep.dtype).max
    ordered = torch.where(keep < 0, big, keep).sort(-1).values
    return torch.where(ordered == big, -1, ordered)


def top_prefix(scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Per row, the columns of the `counts[b]` best scores ([..., m] -> [..., max(counts)], -1 pads).

    Ties go to the lower column (stable), so the choice is the same on every run and device.
    A count above m keeps all m (a row that fits its budget, which its caller keeps whole).
    """
    k = min(int(counts.max()), scores.shape[-1]) if counts.numel() else 0
    order = ops.stable_descending_order(scores)[..., :k]
    slot = torch.arange(k, device=scores.device)
    counts = counts.view(*counts.shape, *([1] * (order.dim() - counts.dim())))
    return torch.where(slot < counts, order, -1)


def fill_unevicted(keep: torch.Tensor, view: LayerView, evict: torch.Tensor) -> torch.Tensor:
    """Rows of sequences that fit their budget (`evict[b]` False) keep every real column instead.

    keep [B, G, k] (-1 pads), with k at least the alive tokens of every row that does not evict
    (a budget-sized keep is). Computed on the device: no host read.
    """
    b, g, k = keep.shape
    slot = torch.arange(k, device=keep.device)
    alive = view.alive[:, None, None]
    everything = torch.where(slot < alive, view.width - alive + slot, -1).expand(b, g, k)
    return torch.where(evict[:, None, None], keep, everything)


class _Validated:
    """Dataclass policies check their fields on construction (`_check`) and against the model (`begin`)."""

    def __post_init__(self) -> None:
        self._check()

    def per_call(self):
        """A shallow copy that holds one call's state (what `begin` sets up and `report` reads),
        so one policy object serves many threads and batches at once: `generate` and `compress`
        run a per-call copy, the object itself stays a description. `origin` is the object."""
        twin = copy.copy(self)
        object.__setattr__(twin, "_origin", self.origin)
        return twin

    @property
    def origin(self):
        """The policy object a per-call copy came from (itself, for the object)."""
        return self.__dict__.get("_origin", self)

    def _check(self) -> None:  # pragma: no cover - overridden
        pass


class SelectionPolicy(_Validated, ABC):
    """Decides which tokens propagate to deeper layers during prefill.

    `restarts`: a two-pass method (GemFilter, ASL two-pass) whose first pass only chooses;
    the prefill stores no KV in it and, at the first Selection it returns, reruns the model
    on the chosen tokens (all of them if none is `active`).
    """

    restarts: ClassVar[bool] = False

    @property
    def keeps_last_token(self) -> bool:
        """Whether every selection keeps each sequence's last prompt token (checked: without it
        the answer would continue from another token). GemFilter, faithfully, may not."""
        return True

    def begin(self, prefill: PrefillInfo) -> None:
        """Called once before any compute: check parameters against the model, reset state."""

    @abstractmethod
    def after_layer(self, layer: int, view: LayerView) -> Selection | None:
        """After `layer` ran on the alive tokens: a Selection, or None to keep going."""

    def report(self) -> list[dict]:
        """Per sequence, trace fields such as `selection_layer` and `ratios` ([] for none)."""
        return []


class EvictionPolicy(_Validated, ABC):
    """Decides which KV entries each layer stores for decoding, and may evict while decoding.

    `keep` acts once, at the end of each layer's prefill. A policy that also evicts during
    generation overrides `every` and `during_decode`; `recent_queries` says how many of each
    layer's latest queries it reads. `every` and `cache_positions` are properties, so that
    they may follow the policy's fields (StreamingLLM's `rolling` and `positions`); a class
    attribute (`every = 1`) overrides them as well.
    """

    @property
    def every(self) -> int:
        """Every how many new tokens `during_decode` is called, before the step that writes
        the next token (0: never)."""
        return 0

    @property
    def cache_positions(self) -> bool:
        """Whether decoding renumbers the kept entries by their place in the cache (StreamingLLM's
        `positions="cache"`), the new tokens going on from there; else they keep the text's."""
        return False

    def begin(self, prefill: PrefillInfo) -> None:
        """Called once before any compute: check parameters against the model, reset state."""

    @abstractmethod
    def keep(self, layer: int, view: LayerView) -> torch.Tensor | None:
        """[B, G, k] columns to store per KV head (-1 pads), or None to store all."""

    def merge(self, layer: int, view: LayerView, keep: torch.Tensor) -> torch.Tensor | None:
        """The values to store for the kept columns `keep` [B, G, k] (its own `keep()`'s), [B, G, k, d],
        or None to store them as they are: a policy that folds what it evicts into what it keeps
        (asl.CAM) says so here. Not consulted on a sliding-window layer."""
        return None

    def retrieval(self, layer: int, view: LayerView, cap: int):
        """Query-time key retrieval over what the layer stores, or None (every query attends to
        every stored entry): a `SparseKeys` (asl/retrieval.py) over the layer's `cap` cache slots,
        with which each later query (the question's over a compressed context, each generated
        token's) picks the entries it attends to (asl.SqueezedAttention). Called after `keep`."""
        return None

    def key_channels(self, layer: int, view: LayerView, keep: torch.Tensor | None) -> torch.Tensor | None:
        """[B, G, d] bool: the key channels the layer stores for each KV head (the others are
        zeroed in the stored keys; asl.ThinK), or None to store them all. `keep` is what `keep`
        returned. The prompt's own attention has used the whole keys already."""
        return None

    def after_prefill(self, model, tokens, cache, tokenizer) -> list[torch.Tensor | None] | None:
        """Per layer, the columns to keep [B, G, k] (-1 pads) once every layer has run, or None:
        for a policy that decides only with the whole prompt's cache in hand (asl.KVzip replays
        the context through the model: `model` the Decoder, `tokens` the prompt's AliveTokens,
        `cache` its KVCache, `tokenizer` the caller's, None where it has none). Its `keep` has
        returned None on every layer; no selection runs with it."""
        return None

    def during_decode(self, layer: int, view: DecodeView) -> torch.Tensor | None:
        """[B, G, k] slots of the layer's cache to keep (sorted, -1 pads), or None to keep all."""
        return None

    def merge_during_decode(self, layer: int, view: DecodeView, keep: torch.Tensor) -> torch.Tensor | None:
        """The values to store for the slots `keep` its `during_decode` just returned, [B, G, k, d], or
        None to keep them as they are (asl.CAMDecoding folds what it evicts into what it keeps)."""
        return None

    def recent_queries(self, prompt_length: int, new_tokens: int = 0) -> int:
        """How many of each layer's latest queries (prompt and generated) `during_decode` reads,
        at most, for a prompt of `prompt_length` tokens and `new_tokens` generated."""
        return 0


def decides_after_prefill(eviction: EvictionPolicy | None) -> bool:
    """Whether the eviction chooses once every layer has run (it overrides `after_prefill`)."""
    return eviction is not None and type(eviction).after_prefill is not EvictionPolicy.after_prefill


def retrieves(eviction: EvictionPolicy) -> bool:
    """Whether the eviction chooses keys per query (it overrides `retrieval`): only asl's own
    attention can follow that."""
    return type(eviction).retrieval is not EvictionPolicy.retrieval


class DecodeView:
    """One layer's decoding cache between two steps, for `EvictionPolicy.during_decode`.

    keys / values [B, G, cap, d] and `valid`, `positions` [B, G, cap] are the layer's static
    buffers (read them, do not write): slots `[0, length)` are in use, in the order their
    tokens came (prompt entries by position, then one slot per generated token). `queries`
    [B, H, q, d] are the layer's latest q post-RoPE queries, oldest first, with
    `query_valid` [B, q] (False where a short prompt had fewer) and `query_positions` [B, q].
    `step` is the number of tokens generated so far (the next step writes token `step`).
    """

    def __init__(self, layer, keys, values, valid, positions, length, step, queries=None, query_valid=None,
                 query_positions=None, prompt_lengths=()):
        self.layer, self.keys, self.values, self.valid, self.positions = layer, keys, values, valid, positions
        self.length, self.step, self.prompt_lengths = length, step, prompt_lengths
        self.queries, self.query_valid, self.query_positions = queries, query_valid, query_positions

    @property
    def counts(self) -> torch.Tensor:
        """[B, G] entries in use per sequence and KV head."""
        return self.valid[:, :, : self.length].sum(-1)


def keep_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """[..., n] bool -> the True columns in order, [..., k] with -1 pads (k the largest count)."""
    n = mask.shape[-1]
    cols = torch.arange(n, device=mask.device).expand_as(mask)
    ordered = torch.where(mask, cols, n).sort(-1).values
    k = int(mask.sum(-1).max()) if mask.numel() else 0
    ordered = ordered[..., :k]
    return torch.where(ordered == n, -1, ordered)


def per_call(policy):
    """The policy's per-call copy (None stays None)."""
    return None if policy is None else policy.per_call()


def check_policies(selection, eviction) -> None:
    """Types first, then the fields again (they may have changed since construction)."""
    if selection is not None and not isinstance(selection, SelectionPolicy):
        raise ValueError(f"selection must be a SelectionPolicy (e.g. asl.ASL()), got {type(selection).__name__}")
    if eviction is not None and not isinstance(eviction, EvictionPolicy):
        raise ValueError(f"eviction must be an EvictionPolicy (e.g. asl.SnapKV(2048)), got {type(eviction).__name__}")
    for policy in (selection, eviction):
        if policy is not None and hasattr(policy, "_check"):
            policy._check()
    if eviction is not None and retrieves(eviction) and (eviction.every > 0 or eviction.cache_positions):
        raise ValueError(f"eviction: {type(eviction).__name__} chooses keys per query (retrieval), whose state is "
                         "laid over the slots the prefill stored; it cannot also move them while decoding "
                         "(every > 0) or renumber their positions")
    if selection is not None and decides_after_prefill(eviction):
        raise ValueError(f"eviction: {type(eviction).__name__} chooses after the whole prompt has run every layer, "
                         f"which a selection ({type(selection).__name__}) has pruned by then: give it no selection")
    if getattr(selection, "revives", False) and eviction is not None:
        raise ValueError(f"{type(selection).__name__}(revive=True) decodes with its own step, which keeps every entry it "
                         f"computes: it takes no eviction ({type(eviction).__name__}); revive=False is the static form, "
                         "which composes with one")


# -- field checks shared by the policies -------------------------------------------------------

def is_number(value) -> bool:
    """A finite int or float, not a bool (True is an int to Python; NaN passes every < test)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_positive_int(name: str, value, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_kernel(kernel) -> None:
    if not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"kernel must be a positive odd integer (1, 3, 5, ...), got {kernel!r}")


def check_pooling(pooling) -> None:
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")


def check_layer(name: str, layer, num_layers: int) -> None:
    if not isinstance(layer, int) or not 0 <= layer < num_layers:
        raise ValueError(f"{name} must be a layer index in [0, {num_layers - 1}] for this model, got {layer!r}")


def check_global_layer(name: str, layer: int, prefill: PrefillInfo, local_layers: bool) -> None:
    """A selection's scores at a sliding-window layer come from queries that see only the window's
    keys (docs/algorithms.md section 20): such a layer is taken only when the user asks for it."""
    window = prefill.window(layer)
    if window is not None and not local_layers:
        raise ValueError(f"{name}={layer} is a sliding-window layer of this model (window {window}), whose queries "
                         f"see only the last {window} positions' keys; pick a global layer "
                         f"({', '.join(map(str, prefill.global_layers))}) or set local_layers=True")


def check_window_below(window: int, name: str, value: int) -> None:
    if window >= value:
        raise ValueError(f"window ({window}) must be smaller than {name} ({value}): {name} includes the window")



# -- what the prefill checks of a policy's answer (so a bad index can never become a token) -----

def check_selection(selection: Selection, valid: torch.Tensor, policy) -> None:
    """A Selection must name, per active sequence, sorted distinct real columns of this layer
    (`-1` pads at the end): anything else would turn padding or a repeated token into a token.
    It keeps at least one token, and the last prompt token unless the policy says otherwise
    (`keeps_last_token`). Raises ValueError naming the policy and the sequence; one host read."""
    name = type(policy).__name__
    if not isinstance(selection, Selection):
        raise ValueError(f"{name}.after_layer must return an asl.Selection or None, got {type(selection).__name__}")
    b, width = valid.shape
    keep, active = selection.keep, selection.active
    if not (isinstance(keep, torch.Tensor) and keep.dim() == 2 and keep.shape[0] == b and not keep.is_floating_point()):
        raise ValueError(f"{name}: Selection.keep must be an integer tensor [batch={b}, k], got "
                         f"{getattr(keep, 'shape', type(keep).__name__)}")
    if not (isinstance(active, torch.Tensor) and active.shape == (b,)):
        raise ValueError(f"{name}: Selection.active must be a bool tensor [batch={b}], got "
                         f"{getattr(active, 'shape', type(active).__name__)}")
    real = active.bool()
    bad = keep_problems(keep[:, None], valid)[:, 0] & real
    empty = real & ~(keep >= 0).any(-1)
    dropped = (real & ~(keep == width - 1).any(-1) if getattr(policy, "keeps_last_token", True)
               else torch.zeros_like(real))
    if not bool((bad | empty | dropped).any()):  # the one host read of the check
        return
    if bool(bad.any()):  # a malformed keep first: it says most about what went wrong
        seq = int(bad.nonzero()[0, 0])
        raise ValueError(f"{name}: Selection.keep of sequence {seq} is not a sorted list of distinct real columns "
                         f"in [0, {width}) with -1 pads at the end (padding columns: the first "
                         f"{width - int(valid[seq].sum())}): {keep[seq].tolist()[:16]}")
    seq = int((empty | dropped).nonzero()[0, 0])
    what = "keeps no token" if bool(empty[seq]) else "drops the last prompt token (the answer continues from it)"
    raise ValueError(f"{name}: Selection.keep of sequence {seq} {what}; a policy that means to says so with "
                     "the property keeps_last_token = False")


def check_keep(keep, valid: torch.Tensor, num_heads: int, num_kv_heads: int, policy) -> None:
    """An eviction's keep() must be None or an integer tensor [B, G, k] (or [B, H, k] for a cache
    per query head); anything else raises naming the policy, before torch's own error would.
    Shapes only: no host read."""
    b = valid.shape[0]
    if not (isinstance(keep, torch.Tensor) and keep.dim() == 3 and keep.shape[0] == b
            and keep.shape[1] in (num_kv_heads, num_heads) and not keep.is_floating_point()
            and keep.dtype != torch.bool):
        got = f"{keep.dtype} {tuple(keep.shape)}" if isinstance(keep, torch.Tensor) else type(keep).__name__
        raise ValueError(f"{type(policy).__name__}.keep() must return None or an integer tensor of columns "
                         f"[batch={b}, heads={num_kv_heads} (or {num_heads} per query head), k], got {got}")


def keep_problems(keep: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[B, G] True where the columns keep[b, g] ([B, G, k], -1 pads) are out of range, point at
    padding, repeat, are unsorted or have a column after a pad. Stays on the device (no host read)."""
    width = valid.shape[-1]
    real = keep >= 0
    safe = keep.clamp(0, width - 1)
    on_pad = real & ~valid[:, None, :].expand(-1, keep.shape[1], -1).gather(2, safe)
    bad = (keep < -1) | (keep >= width) | on_pad
    order = real[..., 1:] & (~real[..., :-1] | (keep[..., 1:] <= keep[..., :-1]))
    return bad.any(-1) | order.any(-1)
