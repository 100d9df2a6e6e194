"""Two evictions in a row (kvpress's ComposedPress of two sequence presses): the second cuts what
the first kept, reading it as a prompt of those entries alone. docs/algorithms.md section 19."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import EvictionPolicy, LayerView, PrefillInfo, keep_from_mask, sort_keep

PREFILL_ONLY = ("merge", "retrieval", "key_channels", "during_decode", "merge_during_decode")


@dataclass
class Chain(EvictionPolicy):
    """At the end of each layer's prefill `first` keeps its entries, then `second` keeps its own
    of those: per sequence, the first's kept columns in prompt order are a prompt of their own
    (keys, values, queries and positions of those tokens; its window the last ones kept) and the
    second's cut of it is stored. Where the first kept other entries on each KV head, the second
    scores each head's alone (its query heads with it). With ratios the chain keeps
    `int(int(n * (1 - r1)) * (1 - r2))`, kvpress's product; with budgets the second's must be
    below the first's. kvpress hands the second press keys in the first's score order; here it
    gets them in prompt order, so a second scorer that reads order (a window, SnapKV's queries)
    reads the right tokens. Only prefill cuts chain: a merge, a retrieval, pruned key channels
    or eviction while decoding is refused (for channels, wrap the chain: `ThinK(Chain(a, b))`)."""

    first: EvictionPolicy
    second: EvictionPolicy

    def _check(self) -> None:
        for name in ("first", "second"):
            part = getattr(self, name)
            if not isinstance(part, EvictionPolicy):
                raise ValueError(f"Chain: {name} must be an EvictionPolicy (e.g. asl.SnapKV(ratio=0.5)), "
                                 f"got {type(part).__name__}")
            part._check()
            hooks = [h for h in PREFILL_ONLY if getattr(type(part), h) is not getattr(EvictionPolicy, h)]
            if hooks or part.every or part.cache_positions:
                raise ValueError(f"Chain: {name} ({type(part).__name__}) does more than cut the prefill "
                                 f"({', '.join(hooks) or 'renumbers or evicts while decoding'}); a chain only "
                                 "composes prefill cuts")
        budgets = [getattr(p, "budget", None) if getattr(p, "ratio", None) is None else None
                   for p in (self.first, self.second)]
        if all(isinstance(b, int) for b in budgets) and budgets[1] >= budgets[0]:
            raise ValueError(f"Chain: second's budget ({budgets[1]}) must be below first's ({budgets[0]}): it only "
                             "sees what the first kept; give it a smaller budget or a ratio")

    @property
    def budget(self) -> int | None:
        """Entries per head the chain keeps at most (the second's budget), None for a ratio."""
        return getattr(self.second, "budget", None) if getattr(self.second, "ratio", None) is None else None

    def begin(self, prefill: PrefillInfo) -> None:
        self.first.begin(prefill)
        self.second.begin(prefill)

    def per_call(self):
        twin = super().per_call()
        twin.first, twin.second = self.first.per_call(), self.second.per_call()
        return twin

    def keep(self, layer: int, view: LayerView) -> torch.Tensor | None:
        g = view.keys.shape[1]
        kept = self.first.keep(layer, view)
        if kept is None:
            kept = keep_from_mask(view.valid)[:, None].expand(-1, g, -1)
        if kept.shape[1] != g:
            raise ValueError(f"Chain: first ({type(self.first).__name__}) keeps per query head ({kept.shape[1]} heads); "
                             f"the second cuts what it keeps per KV head, so it must keep per KV head ({g})")
        rows = []
        for b in range(kept.shape[0]):
            heads = [row[row >= 0].sort().values for row in kept[b]]
            if all(torch.equal(h, heads[0]) for h in heads):  # one prompt for every head
                rows.append(self._cut(layer, view.entries(b, None, heads[0]), heads[0], g))
            else:
                rows.append([self._cut(layer, view.entries(b, j, cols), cols, 1)[0] for j, cols in enumerate(heads)])
        width = max(len(cols) for row in rows for cols in row)
        pad = lambda cols: torch.nn.functional.pad(cols, (0, width - len(cols)), value=-1)  # noqa: E731
        return sort_keep(torch.stack([torch.stack([pad(cols) for cols in row]) for row in rows]))

    def _cut(self, layer: int, part: LayerView, cols: torch.Tensor, heads: int) -> list[torch.Tensor]:
        """The second's cut of one sequence's kept columns `cols`, per head of `part`."""
        if cols.numel() == 0:
            return [cols] * heads
        chosen = self.second.keep(layer, part)
        if chosen is None:
            return [cols] * heads
        if chosen.shape[1] != heads:
            raise ValueError(f"Chain: second ({type(self.second).__name__}) keeps {chosen.shape[1]} heads where the "
                             f"cache holds {heads}: it must keep per KV head")
        return [cols[row[row >= 0]] for row in chosen[0]]
