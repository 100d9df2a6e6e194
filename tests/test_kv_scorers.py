"""The scorers from kvpress's list (KNorm, KeyDiff, random, TOVA, observed attention) on
small hand-made layers: each kept set is computed here from the paper's formula, written out
with plain loops in float64, and compared allowing only ties at the cut. And the ratio form
of a budget: kvpress's count per layer, the window always kept."""
from __future__ import annotations

import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import asl
from asl.policies import LayerView

H, G, D = 4, 2, 8


def layer(n: int, seed: int, pad: int = 0) -> LayerView:
    """One sequence of n real tokens after `pad` columns of left padding."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, heads, pad + n, D, generator=gen) for heads in (H, G, G))
    valid = torch.arange(pad + n)[None] >= pad
    index = (torch.arange(pad + n) - pad).clamp(min=0)[None]
    return LayerView(0, q, k, v, index.clone(), index, valid)


def kept(policy, view) -> list[list[int]]:
    """Per KV head, the kept real columns, as token indices (None: every one)."""
    pad = view.width - int(view.alive[0])
    keep = policy.keep(0, view)
    if keep is None:
        return [list(range(view.width - pad))] * view.keys.shape[1]
    keep = keep[0]
    return [[c - pad for c in row.tolist() if c >= 0] for row in keep]


def assert_top(ours: list[int], scores: list[float], count: int, window: int) -> None:
    """`ours` is the window plus the `count` best prefix scores, up to ties at the cut."""
    n = len(scores) + window
    assert set(range(n - window, n)) <= set(ours)
    chosen = sorted(c for c in ours if c < n - window)
    assert len(chosen) == count
    cut = sorted(scores, reverse=True)[count - 1]
    best = {j for j, s in enumerate(scores) if s > cut + 1e-6 * abs(cut)}
    near = {j for j, s in enumerate(scores) if abs(s - cut) <= 1e-6 * abs(cut) + 1e-9}
    assert best <= set(chosen) <= best | near, (chosen, cut)


def causal_attention(view: LayerView) -> list[list[list[float]]]:
    """p[h][i][j] in float64 over one unpadded sequence, by the definition."""
    q, k = view.queries[0].double(), view.keys[0].double()
    n = q.shape[1]
    out = []
    for h in range(H):
        kh = k[h // (H // G)]
        rows = []
        for i in range(n):
            logits = [float(q[h, i] @ kh[j]) / math.sqrt(D) for j in range(i + 1)]
            top = max(logits)
            e = [math.exp(x - top) for x in logits]
            rows.append([x / sum(e) for x in e] + [0.0] * (n - i - 1))
        out.append(rows)
    return out


@pytest.mark.parametrize("window", [0, 4])
def test_knorm_keeps_the_lowest_norm_keys(window):
    view = layer(30, 1)
    policy = asl.KNorm(budget=12, window=window)
    for g, ours in enumerate(kept(policy, view)):
        norms = [-math.sqrt(sum(float(x) ** 2 for x in view.keys[0, g, j])) for j in range(30 - window)]
        assert_top(ours, norms, 12 - window, window)


def test_keydiff_keeps_the_keys_least_like_the_mean_direction():
    view = layer(30, 2, pad=5)  # the anchor is the mean over the real entries only
    policy = asl.KeyDiff(budget=10, window=2)
    for g, ours in enumerate(kept(policy, view)):
        keys = [view.keys[0, g, 5 + j].double() for j in range(28)]
        units = [x / x.norm() for x in keys]
        anchor = sum(units) / len(units)
        scores = [-float(x @ anchor / (x.norm() * anchor.norm())) for x in keys]
        assert_top(ours, scores, 8, 2)


def test_tova_keeps_what_the_last_query_attends_to_over_all_heads():
    view = layer(25, 3)
    p = causal_attention(view)
    scores = [sum(p[h][24][j] for h in range(H)) / H for j in range(24)]
    for ours in kept(asl.TOVA(budget=9, window=1), view):  # one score shared by the KV heads
        assert_top(ours, scores, 8, 1)


def test_observed_attention_averages_over_the_queries_that_see_each_entry():
    n = 25
    view = layer(n, 4)
    p = causal_attention(view)
    policy = asl.ObservedAttention(budget=10, window=0, chunk=7)  # chunks that do not divide n
    for g, ours in enumerate(kept(policy, view)):
        group = range(g * (H // G), (g + 1) * (H // G))
        scores = [sum(sum(p[h][i][j] for i in range(n)) / (n - j) for h in group) for j in range(n)]
        assert_top(ours, scores, 10, 0)


def test_observed_attention_ignores_padding():
    alone, padded = layer(20, 5), layer(20, 5, pad=6)
    padded.queries[:, :, 6:], padded.keys[:, :, 6:] = alone.queries, alone.keys
    policy = asl.ObservedAttention(budget=8, window=2)
    assert kept(policy, padded) == kept(policy, alone)


def test_random_scores_are_seeded_and_the_same_in_a_batch():
    view = layer(40, 6)
    a, b = asl.RandomScores(budget=10, window=0, seed=3), asl.RandomScores(budget=10, window=0, seed=4)
    assert kept(a, view) == kept(asl.RandomScores(budget=10, window=0, seed=3), view) != kept(b, view)
    expected = torch.rand(1, G, 40, generator=torch.Generator().manual_seed(3))  # kvpress's draw, batch of one
    assert kept(a, view)[0] == sorted(expected[0, 0].topk(10).indices.tolist())
    assert kept(a, layer(40, 6, pad=9)) == kept(a, view)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 60), ratio=st.floats(0, 0.99), window=st.integers(0, 5), pad=st.integers(0, 4),
       name=st.sampled_from(["KNorm", "KeyDiff", "TOVA", "ObservedAttention", "RandomScores"]))
def test_a_ratio_keeps_kvpress_count_per_layer_and_the_window(n, ratio, window, pad, name):
    view = layer(n, n, pad)
    policy = getattr(asl, name)(budget=window + 1, window=window, ratio=ratio)
    count = max(1, int(n * (1 - ratio)))  # kvpress's compute_n_kept
    for ours in kept(policy, view):
        assert len(ours) == (n if n <= count else max(count, window))
        assert set(range(max(0, n - window), n)) <= set(ours) and len(set(ours)) == len(ours)
        assert all(0 <= c < n for c in ours)


@pytest.mark.parametrize("make, match", [
    (lambda: asl.KNorm(ratio=1.0), r"ratio must be None or a number in \[0, 1\)"),
    (lambda: asl.TOVA(ratio=-0.1), "ratio must be"),
    (lambda: asl.KNorm(window=-1), "window must be an integer >= 0"),
    (lambda: asl.SnapKV(window=0), "window must be an integer >= 1"),
    (lambda: asl.RandomScores(seed=-1), "seed must be an integer >= 0"),
    (lambda: asl.ObservedAttention(chunk=0), "chunk must be an integer >= 1"),
    (lambda: asl.AdaKV(asl.KNorm(ratio=0.5)), "AdaKV sizes each layer itself"),
    (lambda: asl.SimLayerKV(lazy_threshold=1.5), r"lazy_threshold must be a number in \[0, 1\]"),
    (lambda: asl.SimLayerKV(n_recent=4, n_last=4), r"n_recent \(4\) must be larger than n_last \(4\)"),
])
def test_bad_parameters_are_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def chunk_layer(norms: list[float], pad: int = 0) -> LayerView:
    """A layer whose keys have the given L2 norms (every KV head alike)."""
    view = layer(len(norms), 9, pad)
    direction = torch.zeros(D)
    direction[0] = 1.0
    view.keys[0, :, pad:] = torch.tensor(norms)[:, None] * direction
    return view


@pytest.mark.parametrize("ratio", [None, 0.6])
def test_chunkkv_keeps_the_best_whole_chunks_for_every_head(ratio):
    # 5 chunks of 4 plus a last chunk of 2 (22 prefix tokens), then a window of 2; KNorm scores -norm
    norms = [9, 9, 9, 9, 1, 1, 1, 1, 5, 5, 5, 5, 2, 2, 2, 2, 8, 8, 8, 8, 0.5, 0.5] + [3, 3]
    policy = asl.ChunkKV(asl.KNorm(budget=14, window=2, ratio=ratio), chunk=4)
    # chunk means of -norm: -9, -1, -5, -2, -8, -0.5: the best are the last (2 tokens), then chunks 1, 3
    count = 3 if ratio is None else int(6 * (1 - ratio))  # (14 - 2) // 4 whole chunks, or kvpress's share
    best = [5, 1, 3, 2][:count]
    expected = sorted(j for c in best for j in range(4 * c, min(4 * c + 4, 22))) + [22, 23]
    for pad in (0, 3):
        assert kept(policy, chunk_layer(norms, pad)) == [expected] * G


def test_chunkkv_leaves_a_prefix_shorter_than_a_chunk_to_its_scorer():
    view = layer(12, 10)
    scorer = asl.KNorm(budget=6, window=2)
    assert kept(asl.ChunkKV(scorer, chunk=20), view) == kept(scorer, view)


def lagkv_by_hand(keys, values, sink: int, lag: int) -> list[float]:
    """kvpress's LagKVPress.score for one KV head, with loops, in float64: [n]."""
    n, d = keys.shape
    end = sink + ((n - sink) // lag) * lag
    parts = (end - sink) // lag

    def spread(x):
        out = []
        for p in range(parts - 1):
            own, ref = x[sink + p * lag: sink + (p + 1) * lag], x[sink + (p + 1) * lag: sink + (p + 2) * lag]
            low, high = ref.min(0).values, ref.max(0).values
            stds = [float(((own[t] - low) / (high - low)).std()) for t in range(lag)]
            top = max(stds)
            e = [math.exp(s - top) for s in stds]
            out += [x / sum(e) for x in e]
        return out

    both = [(a + b) / 2 for a, b in zip(spread(keys.double()), spread(values.double()))]
    ranks = []
    for p in range(parts - 1):
        block = both[p * lag:(p + 1) * lag]
        ranks += [sorted(block).index(v) / lag for v in block]
    return [1.0] * sink + ranks + [1.0] * (n - end + lag)


def test_lagkv_ranks_each_partition_by_its_spread_against_the_next():
    n, sink, lag = 2 + 4 * 5 + 3, 2, 5  # 4 partitions (3 scored), a remainder of 3
    view = layer(n, 11, pad=2)
    policy = asl.LagKV(budget=14, window=0, sink=sink, lag=lag)
    for g, ours in enumerate(kept(policy, view)):
        scores = lagkv_by_hand(view.keys[0, g, 2:], view.values[0, g, 2:], sink, lag)
        assert_top(ours, scores, 14, 0)
    short = asl.LagKV(budget=6, window=0, sink=2, lag=8)  # n < sink + 2 lag: the newest tokens
    assert kept(short, layer(12, 12)) == [[0, 1, 8, 9, 10, 11]] * G


@pytest.mark.parametrize("n_last", [1, 2])
def test_simlayerkv_keeps_the_two_ends_of_a_lazy_layer_only(n_last):
    n, initial, recent = 24, 2, 6
    alone, view = layer(n, 13), layer(n, 13, pad=3)
    view.queries[:, :, 3:], view.keys[:, :, 3:] = alone.queries, alone.keys  # the same real tokens, padded
    p = causal_attention(alone)
    ends = set(range(initial)) | set(range(n - n_last - recent, n - n_last))
    share = sum(p[h][i][j] for h in range(H) for i in range(n - n_last, n) for j in ends) / (H * n_last)
    lazy = asl.SimLayerKV(lazy_threshold=share - 0.05, n_last=n_last, n_recent=recent, n_initial=initial)
    busy = asl.SimLayerKV(lazy_threshold=min(1.0, share + 0.05), n_last=n_last, n_recent=recent, n_initial=initial)
    assert kept(lazy, view) == [[0, 1] + list(range(n - recent + n_last, n))] * G
    assert kept(busy, view) == [list(range(n))] * G
    short = asl.SimLayerKV(lazy_threshold=0.0, n_last=n_last, n_recent=n - initial - n_last, n_initial=initial)
    assert kept(short, view) == [list(range(n))] * G  # no more than n_initial + n_recent + n_last tokens


def test_per_layer_ratio_keeps_kvpress_count_of_each_layer():
    from asl.policies import PrefillInfo

    view = layer(30, 14, pad=2)
    policy = asl.PerLayerRatio(asl.KNorm(window=2), ratios=(0.5, 0.8))
    policy.begin(PrefillInfo(2, H, G, D, (30,)))
    for index, ratio in enumerate((0.5, 0.8)):
        count = max(1, int(30 * (1 - ratio)))  # kvpress's compute_n_kept, window included
        for g, ours in enumerate(kept_at(policy, view, index)):
            norms = [-float(view.keys[0, g, 2 + j].double().norm()) for j in range(28)]
            assert_top(ours, norms, count - 2, 2)
    with pytest.raises(ValueError, match="ratios has 2 values; the model has 3 layers"):
        policy.begin(PrefillInfo(3, H, G, D, (30,)))
    with pytest.raises(ValueError, match=r"ratios must be a non-empty tuple of numbers in \[0, 1\)"):
        asl.PerLayerRatio(asl.KNorm(), ratios=(0.5, 1.0))


def kept_at(policy, view, index: int) -> list[list[int]]:
    """kept() at layer `index` of a policy that evicts there."""
    pad = view.width - int(view.alive[0])
    return [[c - pad for c in row.tolist() if c >= 0] for row in policy.keep(index, view)[0]]


@pytest.mark.parametrize("pad", [0, 3])
def test_threshold_eviction_drops_old_entries_scoring_below_it(pad):
    n, recent, window = 40, 6, 2
    view = layer(n, 15, pad)
    norms = [[float(view.keys[0, g, pad + j].double().norm()) for j in range(n)] for g in range(G)]
    ordered = sorted(x for row in norms for x in row)
    middle = ordered[len(ordered) // 3: 2 * len(ordered) // 3]
    cut = max((b - a, (a + b) / 2) for a, b in zip(middle, middle[1:]))[1]  # in the widest gap: no entry near it
    policy = asl.ThresholdEviction(asl.KNorm(window=window), threshold=-cut, sliding_window=recent)
    ours = kept_at(policy, view, 0)
    for g in range(G):
        assert ours[g] == [j for j in range(n) if norms[g][j] <= cut or j >= n - max(recent, window)]
    assert asl.ThresholdEviction(asl.KNorm(window=window), threshold=-1e9).keep(0, view) is None  # nothing below



def attention_by_hand(view, w: int) -> list[list[float]]:
    """Per KV head, the attention each entry gets from the last `w` queries (causal softmax, 1/sqrt(D)),
    summed over them and averaged over the head's query heads; float64, one unpadded sequence."""
    n = view.width
    q, k = view.queries[0].double(), view.keys[0].double()
    out = []
    for g in range(G):
        att = [0.0] * n
        for h in range(g * (H // G), (g + 1) * (H // G)):
            for i in range(n - w, n):
                logits = [float(q[h, i] @ k[g, j]) / math.sqrt(D) for j in range(i + 1)]
                e = [math.exp(x - max(logits)) for x in logits]
                for j in range(i + 1):
                    att[j] += e[j] / sum(e) / (H // G)
        out.append(att)
    return out


def cam_by_hand(view, kept: list[list[int]], m: int, w: int, draws=None):
    """CaM by hand: per head, each evicted entry's merge probability min(1, A_i / mean A of its `m`
    next kept entries), and the kept values [G, k, D] with each evicted value times that probability
    (or its Bernoulli outcome in `draws`) over the count added to those entries."""
    v = view.values[0].double()
    probs, out = [], []
    for g, att in enumerate(attention_by_hand(view, w)):
        merged = [v[g, c].clone() for c in kept[g]]
        head = []
        for e_i, i in enumerate(i for i in range(view.width) if i not in kept[g]):
            after = [s for s, c in enumerate(kept[g]) if c > i][:m]
            p = min(1.0, att[i] / (sum(att[kept[g][s]] for s in after) / len(after))) if after else 0.0
            head.append(p)
            for s in after:
                merged[s] = merged[s] + v[g, i] * (p if draws is None else draws[g][e_i]) / len(after)
        probs.append(head)
        out.append(torch.stack(merged))
    return probs, torch.stack(out)


def test_cam_folds_each_evicted_value_into_the_kept_ones_after_it():
    view = layer(40, 21)
    policy = asl.CAM(asl.KNorm(budget=16, window=3), merge_budget=4, attention_window=6, sampled=False)
    keep = policy.keep(0, view)
    ours = policy.merge(0, view, keep)[0]
    _, expected = cam_by_hand(view, [row.tolist() for row in keep[0]], 4, 6)
    assert (ours.double() - expected).abs().max() < 1e-5
    assert (ours - view.values[0].gather(1, keep[0, :, :, None].expand(-1, -1, D))).abs().max() > 0.1  # it merged


def test_cam_draws_its_merges_from_its_seed():
    view = layer(40, 22)
    make = lambda seed: asl.CAM(asl.KNorm(budget=16, window=3), merge_budget=4, attention_window=6, seed=seed)  # noqa: E731
    keep = make(5).keep(0, view)
    ours = make(5).merge(0, view, keep)[0]
    assert torch.equal(ours, make(5).merge(0, view, keep)[0]) and not torch.equal(ours, make(6).merge(0, view, keep)[0])
    kept = [row.tolist() for row in keep[0]]
    probs, _ = cam_by_hand(view, kept, 4, 6)
    gen = torch.Generator().manual_seed(5 * 1_000_003)  # its draws replayed: per head, in the evicted entries' order
    draws = [torch.bernoulli(torch.tensor(p, dtype=torch.float32), generator=gen).tolist() for p in probs]
    assert (ours.double() - cam_by_hand(view, kept, 4, 6, draws)[1]).abs().max() < 1e-5


def test_cam_runs_in_a_prefill_and_changes_only_the_kept_values():
    from asl.generation import left_pad
    from asl.prefill import prefill
    from tiny import CharTokenizer, random_text, tiny_pair

    _, model = tiny_pair("llama", eos_token_id=None)
    ids, valid = left_pad([CharTokenizer()(random_text(random.Random(3), 120))["input_ids"]], "cpu")
    plain = prefill(model, ids, valid, 4, eviction=asl.KNorm(budget=40, window=8)).cache
    merged = prefill(model, ids, valid, 4, eviction=asl.CAM(asl.KNorm(budget=40, window=8), merge_budget=8)).cache
    for a, b in zip(plain.layers, merged.layers):
        assert torch.equal(a.k, b.k) and torch.equal(a.valid, b.valid)  # the same entries kept
        assert (a.v - b.v).abs().max() > 1e-3  # their values carry what was evicted
    assert merged.kv_tokens().flatten().tolist() == [40] * 8


@pytest.mark.parametrize("pad", [0, 3])
def test_perchunk_keeps_each_chunks_own_share_by_its_own_scores(pad):
    """kvpress's ChunkPress: chunks of 4 from the first token, each keeping max(1, int(c * (1 - ratio)))
    of its own lowest-norm keys (KNorm); with a window, each chunk's last `window` entries stay."""
    norms = [9, 1, 5, 2, 8, 8, 0.5, 3, 4, 6]  # chunks [0, 4), [4, 8), [8, 10)
    view = chunk_layer(norms, pad)
    # ratio 0.5: 2, 2 and 1 kept; the lowest norms of each chunk
    assert kept(asl.PerChunk(asl.KNorm(window=0, ratio=0.5), chunk=4), view) == [[1, 3, 6, 7, 8]] * G
    # window 1: each chunk's last entry kept, then its best others (2, 2 and 1 kept)
    assert kept(asl.PerChunk(asl.KNorm(window=1, ratio=0.5), chunk=4), view) == [[1, 3, 6, 7, 9]] * G
    # a budget of 5 of 10: the share 0.5 in every chunk, as ratio 0.5
    assert kept(asl.PerChunk(asl.KNorm(budget=5, window=0), chunk=4), view) == [[1, 3, 6, 7, 8]] * G


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_merging_folds_each_evicted_value_into_its_most_similar_kept_key(fraction):
    """kvpress's MergingPress written out in float64: target = the kept key of highest cosine,
    weight = max(cos, 0) * |v_e| / (|v_e| + |v_t| + 1e-6) for the `fraction` most similar evicted,
    kept value -> (v_t + sum w v_e) / (1 + sum w)."""
    view = layer(14, 21)
    policy = asl.Merging(asl.KNorm(budget=6, window=2), merge_fraction=fraction)
    keep = policy.keep(0, view)
    merged = policy.merge(0, view, keep)
    for g in range(G):
        kept = [c for c in keep[0, g].tolist() if c >= 0]
        evicted = [c for c in range(14) if c not in kept]
        k, v = view.keys[0, g].double(), view.values[0, g].double()
        cos = lambda a, b: float(k[a] @ k[b] / (k[a].norm() * k[b].norm()))  # noqa: E731
        best = {e: max(kept, key=lambda t: cos(e, t)) for e in evicted}
        sims = sorted((cos(e, best[e]) for e in evicted), reverse=True)
        cut = sims[math.ceil(fraction * len(sims)) - 1]  # the quantile at 1 - fraction, between its neighbours
        added = {t: torch.zeros(D, dtype=torch.float64) for t in kept}
        total = {t: 0.0 for t in kept}
        for e in evicted:
            s = cos(e, best[e])
            if fraction == 1.0 or s >= cut:
                w = max(s, 0) * float(v[e].norm()) / (float(v[e].norm()) + float(v[best[e]].norm()) + 1e-6)
                added[best[e]] += w * v[e]
                total[best[e]] += w
        expected = torch.stack([(v[t] + added[t]) / (1 + total[t]) for t in kept])
        torch.testing.assert_close(merged[0, g, : len(kept)].double(), expected, rtol=1e-5, atol=1e-6)
        assert any(total.values())  # something was merged


def entropy_gated_reference(scores: list[float], chunk: int, low: int, budget: int) -> list[int]:
    """kvpress's EntropyGatedChunkKVPress.compress for one sequence, in plain Python (ties: earlier)."""
    bounds = [(s, min(s + chunk, len(scores))) for s in range(0, len(scores), chunk)]
    means = [sum(scores[s:e]) / (e - s) for s, e in bounds]

    def entropy(part):
        if len(part) == 1:
            return 0.0
        shift = min(min(part), 0.0)
        p = [(x - shift) / (sum(x - shift for x in part) + 1e-8) for x in part]
        return min(max(-sum(q * math.log(q + 1e-8) for q in p) / math.log(len(part)), 0.0), 1.0)

    ents = [entropy(scores[s:e]) for s, e in bounds]
    lower_median = lambda xs: sorted(xs)[(len(xs) - 1) // 2]  # noqa: E731 - torch.median's
    m_mean, m_ent = lower_median(means), lower_median(ents)
    kept = set()
    best_first = lambda cols: sorted(cols, key=lambda j: (-scores[j], j))  # noqa: E731
    for c in sorted(range(len(bounds)), key=lambda c: (-means[c], c)):
        if budget <= 0:
            break
        s, e = bounds[c]
        take = min(e - s, budget, low if means[c] >= m_mean and ents[c] < m_ent else e - s)
        kept |= set(best_first(range(s, e))[:take])
        budget -= take
    if budget > 0:
        kept |= set(best_first([j for j in range(len(scores)) if j not in kept])[:budget])
    return sorted(kept)


@pytest.mark.parametrize("ratio, window", [(0.6, 0), (0.5, 2)])
def test_entropy_gated_chunkkv_follows_kvpress_written_out(ratio, window):
    rng = random.Random(5)
    norms = [rng.choice([0.5, 1, 3, 6, 9]) * rng.uniform(0.9, 1.1) for _ in range(37)]
    policy = asl.EntropyGatedChunkKV(asl.KNorm(window=window, ratio=ratio), chunk=5, low_entropy_chunk=2)
    prefix = [-x for x in norms[: len(norms) - window]]  # K-norm's scores; summed over 2 heads, as alike
    expected = entropy_gated_reference([2 * s for s in prefix], 5, 2, int(37 * (1 - ratio)) - window)
    for pad in (0, 3):
        assert kept(policy, chunk_layer(norms, pad)) == [expected + list(range(37 - window, 37))] * G


@pytest.mark.parametrize("window", [0, 3])
def test_blockwise_keeps_keydiffs_best_block_after_block(window):
    """kvpress's BlockPress around KeyDiff, written out: the first k prefix entries, then for each
    block of 5 the k best of kept + block by -cos(k_j, mean of the set's unit keys)."""
    n, k = 31, 8
    view = layer(n, 33)
    policy = asl.Blockwise(asl.KeyDiff(budget=k + window, window=window), block=5)
    for g in range(G):
        keys = view.keys[0, g].double()
        chosen = list(range(k))
        for s in range(k, n - window, 5):
            cols = chosen + list(range(s, min(s + 5, n - window)))
            unit = torch.stack([keys[c] / keys[c].norm() for c in cols]).mean(0)
            score = {c: -float(keys[c] @ unit / (keys[c].norm() * unit.norm())) for c in cols}
            chosen = sorted(sorted(cols, key=lambda c: (-score[c], c))[:k])
        assert kept(policy, view)[g] == chosen + list(range(n - window, n))
    assert kept(policy, view) != kept(asl.KeyDiff(budget=k + window, window=window), view)  # not one global cut


def test_think_zeroes_the_key_channels_the_latest_queries_use_least():
    """ThinK written out: per KV head, channel c scores mean over the last `window` queries of its
    group of q[c]^2, times mean over the stored keys of k[c]^2; the int(d * ratio) lowest go."""
    view = layer(20, 44, pad=2)
    mask = asl.ThinK(key_channel_ratio=0.5, window=4).key_channels(0, view, None)
    q, k = view.queries[0].double(), view.keys[0].double()
    for g in range(G):
        group = range(g * (H // G), (g + 1) * (H // G))
        score = [sum(float(q[h, -4:, c].pow(2).mean()) for h in group) / len(group) * float(k[g, 2:, c].pow(2).mean())
                 for c in range(D)]
        lowest = sorted(range(D), key=lambda c: (score[c], c))[: D // 2]
        assert mask[0, g].tolist() == [c not in lowest for c in range(D)]
    # composed after a scorer: the keys' part over the entries it keeps only
    scorer = asl.KNorm(budget=8, window=2)
    keep = scorer.keep(0, view)
    composed = asl.ThinK(scorer, key_channel_ratio=0.5, window=4).key_channels(0, view, keep)
    for g in range(G):
        rows = [c for c in keep[0, g].tolist() if c >= 0]
        group = range(g * (H // G), (g + 1) * (H // G))
        score = [sum(float(q[h, -4:, c].pow(2).mean()) for h in group) / len(group) * float(k[g, rows, c].pow(2).mean())
                 for c in range(D)]
        lowest = sorted(range(D), key=lambda c: (score[c], c))[: D // 2]
        assert composed[0, g].tolist() == [c not in lowest for c in range(D)]


def test_think_stores_zeroed_channels_and_answers_from_them():
    from tiny import CharTokenizer, random_text, tiny_pair
    from asl.generation import left_pad
    from asl.prefill import prefill

    model = tiny_pair("llama", num_hidden_layers=2, eos_token_id=None)[1]
    ids, valid = left_pad([CharTokenizer()(random_text(random.Random(3), 40))["input_ids"]], "cpu")
    pre = prefill(model, ids, valid, 2, None, asl.ThinK(key_channel_ratio=0.5, window=8))
    for cache in pre.cache.layers:
        zero = (cache.k[0, :, : cache.filled] == 0).all(1)  # [G, d]: channels zero on every stored key
        assert zero.sum(-1).tolist() == [cache.k.shape[-1] // 2] * cache.k.shape[1]


def test_chain_cuts_what_the_first_kept_as_a_prompt_of_its_own():
    """kvpress's ComposedPress of two sequence presses, written out: per KV head K-norm keeps
    int(40 * 0.5) = 20 (window 2 of them), then KeyDiff keeps int(20 * 0.5) = 10 of those 20,
    its window the last 2 kept and its anchor the mean unit key of the 18 kept before them."""
    n = 40
    view = layer(n, 51, pad=3)
    chain = asl.Chain(asl.KNorm(window=2, ratio=0.5), asl.KeyDiff(window=2, ratio=0.5))
    ours = kept(chain, view)
    for g in range(G):
        keys = view.keys[0, g, 3:].double()
        by_norm = sorted(range(n - 2), key=lambda j: (float(keys[j].norm()), j))[:18]
        first = sorted(by_norm) + [n - 2, n - 1]
        prefix = first[:-2]
        unit = torch.stack([keys[c] / keys[c].norm() for c in prefix]).mean(0)
        score = {c: -float(keys[c] @ unit / (keys[c].norm() * unit.norm())) for c in prefix}
        assert ours[g] == sorted(sorted(prefix, key=lambda c: (-score[c], c))[:8]) + [n - 2, n - 1]
    assert ours[0] != ours[1]  # each head cut on its own entries


def test_chain_after_a_first_that_keeps_everything_is_the_second_alone():
    """The second reads the first's entries as a prompt: where that is the whole prompt (padding
    and all), it chooses as it does alone, SnapKV's window queries included."""
    q, k, v = (torch.randn(2, heads, 30, D, generator=torch.Generator().manual_seed(8)) for heads in (H, G, G))
    valid = torch.ones(2, 30, dtype=torch.bool)
    valid[1, :7] = False  # a shorter sequence, left-padded
    index = (torch.arange(30)[None] - (~valid).sum(-1, keepdim=True)).clamp(min=0)
    view = LayerView(0, q, k, v, index.clone(), index, valid)
    second = asl.SnapKV(budget=12, window=4)
    chain = asl.Chain(asl.KNorm(budget=64, window=4), second)
    assert torch.equal(chain.keep(0, view), second.keep(0, view))


@pytest.mark.parametrize("first, second, message", [
    (lambda: asl.KNorm(budget=20, window=4), lambda: asl.KeyDiff(budget=20, window=4), "must be below first's"),
    (lambda: asl.Merging(asl.KNorm(budget=20, window=4)), lambda: asl.KeyDiff(budget=10, window=4),
     "does more than cut the prefill"),
    (lambda: asl.KNorm(budget=20, window=4), lambda: asl.DecodingEviction(asl.KNorm(window=4), budget=10),
     "does more than cut the prefill"),
    (lambda: asl.KNorm(budget=20, window=4), lambda: "snapkv", "second must be an EvictionPolicy"),
])
def test_chain_refuses_what_it_cannot_compose(first, second, message):
    with pytest.raises(ValueError, match=message):
        asl.Chain(first(), second())


def test_chain_refuses_a_first_that_keeps_per_query_head():
    view = layer(30, 3)
    with pytest.raises(ValueError, match="must keep per KV head"):
        asl.Chain(asl.SnapKV(budget=20, window=4, per="query_head"), asl.KNorm(budget=10, window=4)).keep(0, view)
