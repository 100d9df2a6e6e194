"""Query-time key retrieval over a stored cache (docs/algorithms.md section 22).

Some methods keep every entry but let each later query attend to only part of them, chosen
by that query: Squeezed Attention (asl.SqueezedAttention) groups a layer's keys into clusters
once, after the prefill, and each query then attends to the keys of the clusters whose
estimated attention is above one threshold. The state lives on the layer's cache
(`LayerCache.sparse`), in tensors of fixed shape, so the compiled decode step reads it like
the cache itself; the question asked over a compressed context reads it too.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass
class SparseKeys:
    """One layer's retrieval state. `labels` [B, G, cap]: each slot's cluster in [0, K), or K
    for a slot every query attends to (the observation window, the question, the answer);
    `centroids` [B, G, K, d] float32 and `sizes` [B, G, K] (keys per cluster, 0 for padding);
    `threshold` [B]: a key is attended when its cluster's estimated score is above it.
    `attended` [B, 2] counts, over every query head and query step, the clustered entries
    attended and those that could have been (what `attended_share` reports)."""

    labels: torch.Tensor
    centroids: torch.Tensor
    sizes: torch.Tensor
    threshold: torch.Tensor
    attended: torch.Tensor

    @property
    def always(self) -> int:
        """The label of slots every query attends to."""
        return self.centroids.shape[2]

    def with_room(self, cap: int) -> "SparseKeys":
        """The same state over `cap` slots: the new slots (generated tokens) always attended."""
        extra = cap - self.labels.shape[-1]
        if extra <= 0:
            return self
        pad = self.labels.new_full((*self.labels.shape[:2], extra), self.always)
        return replace(self, labels=torch.cat([self.labels, pad], -1))

    def sequence(self, b: int, slots: int) -> "SparseKeys":
        """Sequence b's state over its first `slots` slots (batch dimension kept, of size 1)."""
        pick = slice(b, b + 1)
        return SparseKeys(self.labels[pick, :, :slots].clone(), self.centroids[pick].clone(), self.sizes[pick].clone(),
                          self.threshold[pick].clone(), torch.zeros_like(self.attended[pick]))

    def expand(self, batch: int, cap: int) -> "SparseKeys":
        """A one-sequence state for a batch of `batch` questions asked over it, over `cap` slots."""
        s = self.with_room(cap)
        return SparseKeys(s.labels.expand(batch, -1, -1).clone(), s.centroids.expand(batch, -1, -1, -1),
                          s.sizes.expand(batch, -1, -1), s.threshold.expand(batch).clone(),
                          s.attended.new_zeros(batch, 2))


def retrieved(q: torch.Tensor, sparse: SparseKeys, valid: torch.Tensor, query_valid=None) -> torch.Tensor:
    """Which slots each query head attends to: q [B, H, m, d] (post-RoPE; m queries share one
    choice, by their mean estimated score; `query_valid` [B, m] leaves padding queries out of
    the mean), `valid` [B, G, cap] -> [B, G, H/G, cap] bool.

    A cluster's estimated score is a key's softmax weight were every key its centroid:
    exp(q.c_k / sqrt(d)) / sum_j n_j exp(q.c_j / sqrt(d)), averaged over the m queries.
    Also counts what was attended into `sparse.attended` (in place)."""
    b, h, m, d = q.shape
    g = sparse.centroids.shape[1]
    qg = q.float().view(b, g, h // g, m, d)
    s = torch.matmul(qg, sparse.centroids[:, :, None].transpose(-1, -2)) * d ** -0.5  # [B, G, h/g, m, K]
    p = torch.exp(s - s.amax(-1, keepdim=True))
    estimate = p / (p * sparse.sizes[:, :, None, None, :]).sum(-1, keepdim=True)
    if query_valid is None:
        estimate = estimate.mean(-2)  # [B, G, h/g, K]
    else:
        w = query_valid[:, None, None, :, None].to(estimate.dtype)
        estimate = (estimate * w).sum(-2) / w.sum(-2).clamp(min=1)
    always = torch.full_like(estimate[..., :1], float("inf"))
    per_slot = torch.cat([estimate, always], -1).gather(-1, sparse.labels[:, :, None, :].expand(-1, -1, h // g, -1))
    chosen = per_slot > sparse.threshold[:, None, None, None]
    clustered = (valid & (sparse.labels < sparse.always))[:, :, None, :]
    counts = torch.stack([(chosen & clustered).sum((1, 2, 3)), clustered.expand_as(chosen).sum((1, 2, 3))], -1)
    sparse.attended += counts.to(sparse.attended.dtype)
    return chosen | (sparse.labels == sparse.always)[:, :, None, :]


def attended_share(caches) -> list[float | None]:
    """[B]: the share of clustered entries the queries attended, over every layer with a
    retrieval state, query head and step; None for a sequence where none could be chosen."""
    totals = [c.sparse.attended for c in caches if getattr(c, "sparse", None) is not None]
    if not totals:
        return []
    summed = torch.stack([t.double() for t in totals]).sum(0).tolist()
    return [a / n if n else None for a, n in summed]
