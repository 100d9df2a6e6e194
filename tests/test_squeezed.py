"""Squeezed Attention (asl.SqueezedAttention; docs/algorithms.md section 22): its clusters, its
threshold and each query's choice against the paper's formulas written out, and the two ends
of its threshold against policies whose attention they must equal."""
import math
import random
from dataclasses import dataclass

import pytest
import torch

import asl
from asl.policies.base import LayerView, PrefillInfo
from asl.policies.squeezed import kmeans, quantile
from asl.retrieval import retrieved
from tiny import CharTokenizer, random_text, tiny_pair

TOK = CharTokenizer()


@pytest.fixture(scope="module")
def model():
    return tiny_pair("llama", num_hidden_layers=4, max_position_embeddings=512, eos_token_id=None)[1]


def test_kmeans_recovers_separated_groups():
    gen = torch.Generator().manual_seed(0)
    directions = torch.eye(8)[:3] * 5
    truth = torch.arange(60) % 3
    x = torch.nn.functional.normalize(directions[truth] + 0.05 * torch.randn(60, 8, generator=gen), dim=-1)
    labels = kmeans(x, 3, 300, seed=0)
    pairs = set(zip(truth.tolist(), labels.tolist()))
    assert len(pairs) == 3 and len({b for _, b in pairs}) == 3  # one label per group, each group one label
    assert torch.equal(kmeans(x, 3, 300, seed=0), labels)  # seeded


@pytest.mark.parametrize("q", [0.0, 0.3, 0.5, 0.9])
def test_quantile_is_numpys_linear_one(q):
    x = torch.randn(1001, generator=torch.Generator().manual_seed(1))
    assert quantile(x, q).item() == pytest.approx(torch.quantile(x, q).item(), rel=1e-6)


def test_clusters_threshold_and_choice_follow_the_formulas():
    """One layer, one KV head of two query heads, 12 tokens, window 4: the 8 older keys form two
    clear groups, so k-means' labels are known; the rest is the paper's arithmetic."""
    d, n, w = 4, 12, 4
    gen = torch.Generator().manual_seed(2)
    group = torch.tensor([0, 1] * 4)
    keys = torch.zeros(1, 1, n, d)
    keys[0, 0, :8] = torch.eye(d)[group] * 3 + 0.1 * torch.randn(8, d, generator=gen)
    keys[0, 0, 8:] = torch.randn(4, d, generator=gen)
    queries = torch.randn(1, 2, n, d, generator=gen)
    valid = torch.ones(1, n, dtype=torch.bool)
    positions = torch.arange(n)[None]
    view = LayerView(0, queries, keys, keys.clone(), positions, positions, valid)
    policy = asl.SqueezedAttention(clusters=25, percentile=0.5, window=w)  # K = int(0.25 * 8) = 2
    policy.begin(PrefillInfo(1, 2, 1, d, (n,)))
    state = policy.retrieval(0, view, n + 3)

    labels = state.labels[0, 0]
    assert labels[8:].tolist() == [2] * 7  # the window and the 3 slots after: always attended
    assert len(set(zip(group.tolist(), labels[:8].tolist()))) == 2
    for c in range(2):
        members = keys[0, 0, :8][labels[:8] == c]
        torch.testing.assert_close(state.centroids[0, 0, c], members.mean(0))
        assert state.sizes[0, 0, c].item() == len(members)

    def estimate(q, c):  # exp(q.c_k / sqrt d) / sum_j n_j exp(q.c_j / sqrt d)
        e = [math.exp(float(q @ state.centroids[0, 0, j]) / math.sqrt(d)) for j in range(2)]
        return e[c] / sum(state.sizes[0, 0, j].item() * e[j] for j in range(2))

    pooled = [sum(estimate(queries[0, h, t], int(labels[i])) for t in range(8, 12)) / w
              for h in range(2) for i in range(8)]
    assert state.threshold[0].item() == pytest.approx(torch.quantile(torch.tensor(pooled), 0.5).item(), rel=1e-5)

    q = torch.randn(1, 2, 1, d, generator=gen)
    cache_valid = torch.ones(1, 1, n + 3, dtype=torch.bool)
    chosen = retrieved(q, state, cache_valid)  # [B, G, H/G, cap]
    for h in range(2):
        for i in range(n + 3):
            score = math.inf if i >= 8 else estimate(q[0, h, 0], int(labels[i]))
            assert bool(chosen[0, 0, h, i]) == (score > state.threshold[0].item()), (h, i)
    attended, could = state.attended[0].tolist()
    assert could == 16 and attended == int(chosen[0, 0, :, :8].sum())


@dataclass
class ForcedThreshold(asl.SqueezedAttention):
    """Its threshold set by hand after the prefill: -inf attends to everything, +inf to the window only."""

    forced: float = 0.0

    def retrieval(self, layer, view, cap):
        state = super().retrieval(layer, view, cap)
        if layer == self._layers - 1:
            self._threshold.fill_(self.forced)
        return state


PROMPTS = [random_text(random.Random(s), n) for s, n in ((1, 150), (2, 90))]


def test_a_threshold_below_every_cluster_is_the_full_cache(model):
    full = asl.generate(model, TOK, PROMPTS, max_new_tokens=6)
    out = asl.generate(model, TOK, PROMPTS, max_new_tokens=6, eviction=ForcedThreshold(window=8, forced=-math.inf))
    assert out.tokens == full.tokens
    assert [s.attended_share for s in out.trace.sequences] == [1.0, 1.0]
    assert out.trace.kv_bytes == full.trace.kv_bytes  # it keeps every entry


def test_a_threshold_above_every_cluster_attends_to_the_window_only(model):
    """The answer's steps then see the window and themselves: StreamingLLM keeping the window
    at the prefill (no sink, positions as in the text) stores exactly those entries."""
    window = asl.StreamingLLM(budget=8, sink=0, rolling=False)
    differs = False
    for p in PROMPTS:
        only = asl.generate(model, TOK, p, max_new_tokens=6, eviction=ForcedThreshold(window=8, forced=math.inf))
        assert only.tokens == asl.generate(model, TOK, p, max_new_tokens=6, eviction=window).tokens
        assert only.trace.sequences[0].attended_share == 0.0
        differs |= only.tokens != asl.generate(model, TOK, p, max_new_tokens=6).tokens
    assert differs  # the window alone answers otherwise than the full cache: the mask is what made them equal


def test_over_a_compressed_context_the_question_attends_sparsely_too(model):
    """asl.compress then a question (the paper's setting): at +inf the question's queries see the
    context's window and the question, as over a context StreamingLLM cut to its window."""
    context, question = PROMPTS[0], " what?"
    sparse = asl.compress(model, TOK, context, eviction=ForcedThreshold(window=8, forced=math.inf))
    cut = asl.compress(model, TOK, context, eviction=asl.StreamingLLM(budget=8, sink=0, rolling=False))
    a = asl.generate(model, TOK, question, max_new_tokens=6, cache=sparse)
    assert a.tokens == asl.generate(model, TOK, question, max_new_tokens=6, cache=cut).tokens
    assert a.trace.sequences[0].attended_share == 0.0
    everything = asl.compress(model, TOK, context, eviction=ForcedThreshold(window=8, forced=-math.inf))
    full = asl.compress(model, TOK, context)
    all_of_it = asl.generate(model, TOK, question, max_new_tokens=6, cache=everything)
    assert all_of_it.tokens == asl.generate(model, TOK, question, max_new_tokens=6, cache=full).tokens != a.tokens


def test_a_higher_percentile_attends_to_fewer(model):
    shares = [asl.generate(model, TOK, PROMPTS[0], max_new_tokens=6,
                           eviction=asl.SqueezedAttention(clusters=20, percentile=p, window=8)).trace.sequences[0]
              .attended_share for p in (0.2, 0.5, 0.9)]
    assert 0 < shares[2] < shares[1] < shares[0] < 1, shares


@pytest.mark.parametrize("make, match", [
    (lambda: asl.SqueezedAttention(clusters=0), "clusters must be a percent in"),
    (lambda: asl.SqueezedAttention(percentile=1.0), r"percentile must be in \[0, 1\)"),
    (lambda: asl.SqueezedAttention(window=0), "window"),
    (lambda: asl.SqueezedAttention(iterations=0), "iterations"),
])
def test_bad_parameters_are_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_compiled_decode_matches_eager(model):
    policy = asl.SqueezedAttention(clusters=20, window=8)
    eager = asl.generate(model, TOK, PROMPTS, max_new_tokens=6, eviction=policy)
    compiled = asl.generate(model, TOK, PROMPTS, max_new_tokens=6, eviction=policy, compile=True)
    assert compiled.tokens == eager.tokens
    assert [s.attended_share for s in compiled.trace.sequences] == [s.attended_share for s in eager.trace.sequences]


def test_a_model_run_through_transformers_forward_refuses_it():
    """An architecture asl runs through transformers' own attention cannot mask per query."""
    from test_hooked import other_family

    hf = other_family("falcon")
    with pytest.raises(ValueError, match="chooses keys per query"):
        asl.generate(hf, TOK, PROMPTS[0], max_new_tokens=2, eviction=asl.SqueezedAttention())
