"""CAPKV (arXiv 2604.25975; kvpress's CapPress): an entry is worth what it adds to the capacity
its value spans, weighted by how well its key aligns with where the queries point.
docs/algorithms.md section 19."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from .base import LayerView, is_number
from .expected_attention import FutureQueryScorer, after_sinks


@dataclass
class CapKV(FutureQueryScorer):
    """Per query head, the anchor mu is the mean of the pre-RoPE queries after the first `n_sink`
    tokens, turned by RoPE's rotation averaged over the next `n_future_positions` positions;
    w_j = exp(tau * cos(k_j, mu)) (shifted by the head's largest), and entry j scores
    w_j * v_j' A^-1 v_j with A = I + sum_i w_i v_i v_i' (a weighted leverage of its value), over
    the entries after the sinks; averaged over each KV head's query heads. The sinks score above
    everything. kvpress's is `window=0` with `ratio`."""

    tau: float = 5.0
    epsilon: float = 1e-6

    def _check(self) -> None:
        super()._check()
        for name in ("tau", "epsilon"):
            if not is_number(getattr(self, name)) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be a number >= 0, got {getattr(self, name)!r}")

    def score(self, view: LayerView) -> torch.Tensor:
        queries, rotation = self.future_queries(view)
        h, d, g = queries.shape[1], queries.shape[-1], view.keys.shape[1]

        def score_one(i: int, first: int) -> torch.Tensor:
            anchor = (queries[i, :, first:] @ rotation[i].T).mean(1)  # [H, d]
            keys, values = (x[i, :, first:].float().repeat_interleave(h // g, dim=0) for x in (view.keys, view.values))
            alignment = (F.normalize(keys, dim=-1) @ F.normalize(anchor, dim=-1)[:, :, None])[..., 0].clamp(-1, 1)
            logits = self.tau * alignment
            weights = torch.exp(logits - logits.amax(-1, keepdim=True))  # [H, n']
            scaled = values * torch.sqrt(weights + self.epsilon)[..., None]
            capacity = torch.eye(d, device=values.device) + scaled.transpose(1, 2) @ scaled  # [H, d, d]
            leverage = (values.transpose(1, 2) * torch.linalg.solve(capacity, values.transpose(1, 2))).sum(1)
            return (weights * leverage).view(g, h // g, -1).mean(1)  # [G, n']

        return after_sinks(view, self.n_sink, self.window, score_one)
