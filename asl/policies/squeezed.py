"""Squeezed Attention (Hooper et al., arXiv 2411.09688): every entry is kept, each later query
attends only to the keys its clusters' estimated scores retrieve (docs/algorithms.md section 22).

Read from the authors' code, SqueezeAILab/SqueezedAttention at 4a50c64 (offline_clustering.py,
squeezedattention/clustering.py, the single-level lookup of their modeling_llama.py):
- per layer and KV head, the context's keys but the last `window` (their observation window)
  are L2-normalised and grouped by k-means (k-means++, at most 300 iterations) into
  K = max(1, int(clusters / 100 * (n - window))) clusters; a centroid is the mean of its keys as
  they are (not normalised);
- a key's estimated score for a query q is exp(q.c / sqrt(d)) / sum_j n_j exp(q.c_j / sqrt(d)),
  c its centroid, n_j the keys of cluster j; the window's queries' mean estimate of every key,
  pooled over all layers and heads, gives one threshold: its `percentile` quantile;
- a later query attends to the keys whose estimate is above it, to the window and to the
  tokens after the context. A question (several queries) shares one choice, by their mean.
Two settings, as kvpress has them for the question: `asl.compress(context, eviction=
SqueezedAttention())` then questions (the paper's: the question's own prefill is sparse too),
or a whole prompt (the question in the window, only the answer's steps sparse).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..retrieval import SparseKeys
from .base import EvictionPolicy, LayerView, PrefillInfo, check_positive_int, is_number


@dataclass
class SqueezedAttention(EvictionPolicy):
    """Keep every KV entry; each later query attends to the keys its clusters retrieve."""

    clusters: float = 5.0  # percent of the clustered keys that become centroids (their --percent_clusters)
    percentile: float = 0.5  # the threshold's quantile of the window's estimates (their --percentile)
    window: int = 100  # the observation window: always attended, its queries set the threshold
    iterations: int = 300  # k-means iterations at most (their max_iter)
    seed: int = 0  # k-means++'s draws (each layer and head from this seed: batch-independent)

    def _check(self) -> None:
        if not is_number(self.clusters) or not 0 < self.clusters <= 100:
            raise ValueError(f"clusters must be a percent in (0, 100] (centroids per 100 clustered keys), "
                             f"got {self.clusters!r}")
        if not is_number(self.percentile) or not 0 <= self.percentile < 1:
            raise ValueError(f"percentile must be in [0, 1) (the threshold's quantile; 0.5 keeps about half), "
                             f"got {self.percentile!r}")
        check_positive_int("window", self.window)
        check_positive_int("iterations", self.iterations)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an int, got {self.seed!r}")

    def begin(self, prefill: PrefillInfo) -> None:
        self._layers = prefill.num_layers
        self._pools: list[list[torch.Tensor]] = [[] for _ in range(prefill.batch_size)]
        self._threshold: torch.Tensor | None = None

    def keep(self, layer: int, view: LayerView) -> None:
        return None  # every entry stays; retrieval chooses per query

    def retrieval(self, layer: int, view: LayerView, cap: int) -> SparseKeys | None:
        if self._threshold is None:  # one tensor every layer's state shares, filled after the last layer
            self._threshold = torch.full((view.keys.shape[0],), float("-inf"), device=view.keys.device)
        state = None if view.window is not None else self._fit(view, cap)  # a sliding layer sees its window only
        if layer == self._layers - 1:
            for b, pool in enumerate(self._pools):
                if pool:
                    self._threshold[b] = quantile(torch.cat(pool), self.percentile)
        return state

    def _fit(self, view: LayerView, cap: int) -> SparseKeys:
        b, g, _, d = view.keys.shape
        h = view.queries.shape[1]
        per_seq = []
        for s in range(b):
            cols = view.valid[s].nonzero().flatten()
            clustered, window = cols[: max(len(cols) - self.window, 0)], cols[max(len(cols) - self.window, 0):]
            k = max(1, int(self.clusters / 100 * len(clustered))) if len(clustered) else 0
            heads = [self._cluster(view.keys[s, j, clustered].float(), k) for j in range(g)]
            per_seq.append((clustered, window, k, heads))
        width = max(1, max(k for _, _, k, _ in per_seq))
        labels = torch.full((b, g, cap), width, dtype=torch.long, device=view.keys.device)
        centroids = torch.zeros(b, g, width, d, device=view.keys.device)
        sizes = torch.zeros(b, g, width, device=view.keys.device)
        for s, (clustered, window, k, heads) in enumerate(per_seq):
            for j, (assigned, centres) in enumerate(heads):
                if k:
                    labels[s, j, clustered] = assigned
                    centroids[s, j, :k] = centres
                    sizes[s, j, :k] = torch.bincount(assigned, minlength=k).float()
            if k and len(window):
                q = view.queries[s][:, window].float()  # [H, w, d]
                group = torch.arange(h, device=q.device) // (h // g)
                c, n = centroids[s, group, :k], sizes[s, group, :k]  # [H, K, d], [H, K]
                p = torch.exp(torch.matmul(q, c.transpose(-1, -2)) * d ** -0.5)
                estimate = (p / (p * n[:, None]).sum(-1, keepdim=True)).mean(1)  # [H, K]
                self._pools[s].append(estimate.gather(1, labels[s, group][:, clustered]).flatten())
        return SparseKeys(labels, centroids, sizes, self._threshold, torch.zeros(b, 2, device=view.keys.device))

    def _cluster(self, keys: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """k-means of the normalised keys [N, d]: (labels [N], centroids [k, d] of the keys as given)."""
        if k == 0:
            return keys.new_zeros(0, dtype=torch.long), keys.new_zeros(0, keys.shape[-1])
        labels = kmeans(torch.nn.functional.normalize(keys, dim=-1), k, self.iterations, self.seed)
        sums = keys.new_zeros(k, keys.shape[-1]).index_add_(0, labels, keys)
        counts = torch.bincount(labels, minlength=k).clamp(min=1)
        return labels, sums / counts[:, None]  # an empty cluster's centroid is 0, as theirs


def kmeans(x: torch.Tensor, k: int, iterations: int, seed: int) -> torch.Tensor:
    """Lloyd's k-means of x [N, d] from a k-means++ start (Arthur & Vassilvitskii): labels [N].
    Stops when no label changes; an empty cluster keeps its last centre."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    n = x.shape[0]
    k = min(k, n)
    centres = x.new_empty(k, x.shape[1])
    centres[0] = x[int(torch.randint(n, (1,), generator=gen))]
    nearest = ((x - centres[0]) ** 2).sum(-1)
    for i in range(1, k):
        total = float(nearest.sum())
        pick = int(torch.multinomial((nearest / total).cpu(), 1, generator=gen)) if total > 0 else i % n
        centres[i] = x[pick]
        nearest = torch.minimum(nearest, ((x - centres[i]) ** 2).sum(-1))
    labels = None
    for _ in range(iterations):
        distances = (centres * centres).sum(-1)[None] - 2 * x @ centres.T
        new = distances.argmin(-1)
        if labels is not None and torch.equal(new, labels):
            break
        labels = new
        sums = torch.zeros_like(centres).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k)
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centres)
    return labels


def quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """numpy's default (linear) quantile of a 1-D tensor, at any size (torch.quantile stops at 2**24)."""
    ordered = x.float().sort().values
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)
