"""Allocators that wrap a scorer (AdaKV per head, PyramidKV per layer, Proportional per prompt) against asl.reference,
with hypothesis on a tiny random model: budgets kept on average, the window always kept, the
reference's choice exactly."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import asl
from asl import reference
from test_policies import LAYERS, TOK, Recorder, model, prompt  # noqa: F401 (the fixture)


@given(n=st.integers(20, 160), seed=st.integers(0, 10**6), window=st.integers(1, 10), extra=st.integers(1, 60),
       alpha=st.sampled_from([0.0, 0.2, 0.5, 1.0]))
def test_adakv_keeps_the_reference_entries_and_the_layers_budget(model, n, seed, window, extra, alpha):  # noqa: F811
    budget = window + extra
    policy = asl.AdaKV(asl.SnapKV(budget=budget, window=window), alpha_safeguard=alpha)
    rec = Recorder(inner=policy, scores=(window, 7, "avg"))
    out = asl.generate(model, TOK, prompt(seed, n), max_new_tokens=1, eviction=rec)
    for s, per_head in zip(rec.seen, out.trace.kv_tokens_per_head):
        heads = len(per_head)
        expected = reference.adakv_keep(s["scores"][0], n, budget, window, alpha)
        if expected is None:
            assert s["keep"] is None and per_head == [n] * heads
            continue
        assert sum(per_head) == budget * heads  # the layer keeps what SnapKV would, shared unevenly
        assert min(per_head) >= window + int(extra * alpha)  # the safeguard
        kept = [[c for c in row.tolist() if c >= 0] for row in s["keep"][0]]
        assert kept == expected
        assert all(set(range(n - window, n)) <= set(row) for row in kept)


def test_adakv_with_a_full_safeguard_is_its_scorer(model):  # noqa: F811
    snap = asl.SnapKV(budget=24, window=4)
    text = prompt(3, 120)
    alone = asl.generate(model, TOK, text, max_new_tokens=6, eviction=snap)
    wrapped = asl.generate(model, TOK, text, max_new_tokens=6, eviction=asl.AdaKV(snap, alpha_safeguard=1.0))
    assert wrapped.tokens == alone.tokens and wrapped.trace.kv_tokens_per_head == alone.trace.kv_tokens_per_head


def test_adakv_shares_unevenly_where_heads_differ(model):  # noqa: F811
    out = asl.generate(model, TOK, prompt(5, 150), max_new_tokens=1,
                       eviction=asl.AdaKV(asl.SnapKV(budget=40, window=4), alpha_safeguard=0.0))
    assert any(len(set(heads)) > 1 for heads in out.trace.kv_tokens_per_head)


@given(n=st.integers(20, 200), seed=st.integers(0, 10**6), window=st.integers(1, 8), extra=st.integers(1, 80),
       beta=st.integers(1, 30))
def test_pyramidkv_keeps_the_pyramids_budget_per_layer(model, n, seed, window, extra, beta):  # noqa: F811
    budget = window + extra
    policy = asl.PyramidKV(asl.SnapKV(budget=budget, window=window), beta=beta)
    rec = Recorder(inner=policy, scores=(window, 7, "avg"))
    out = asl.generate(model, TOK, prompt(seed, n), max_new_tokens=1, eviction=rec)
    budgets = reference.pyramid_budgets(budget, window, beta, LAYERS, n)
    assert budgets == sorted(budgets, reverse=True) and abs(sum(budgets) / LAYERS - budget) <= 1
    for layer, (s, per_head) in enumerate(zip(rec.seen, out.trace.kv_tokens_per_head)):
        assert per_head == [min(n, budgets[layer])] * len(per_head)
        ours = s["scores"][0]
        expected = reference.snapkv_keep(ours, n, budgets[layer], window)
        assert (s["keep"] is None) if expected is None else torch.equal(s["keep"][0], expected)


def test_pyramid_budgets_follow_the_formula():
    # budget 128, window 8: P = 120, from 2P - P/20 = 234 at layer 0 down to P/20 = 6 at the last
    assert reference.pyramid_budgets(128, 8, 20, 5, 4096) == [8 + 234, 8 + 177, 8 + 120, 8 + 63, 8 + 6]
    # a 200-token prompt: layer 0 keeps the 192-token prefix whole, the last 2P - 192 = 48 (mean kept)
    assert reference.pyramid_budgets(128, 8, 20, 5, 200) == [8 + 192, 8 + 156, 8 + 120, 8 + 84, 8 + 48]
    policy = asl.PyramidKV(asl.SnapKV(budget=128, window=8))
    policy.begin(asl.PrefillInfo(5, 4, 2, 16, (4096,)))
    assert [policy.layer_budget(i, 4096) for i in range(5)] == reference.pyramid_budgets(128, 8, 20, 5, 4096)


@given(lengths=st.lists(st.integers(20, 160), min_size=1, max_size=3), seed=st.integers(0, 10**6),
       window=st.integers(1, 8), rate=st.sampled_from([0.1, 0.25, 0.4, 0.7]))
def test_proportional_keeps_a_share_of_each_prompt_at_every_layer(model, lengths, seed, window, rate):  # noqa: F811
    out = asl.generate(model, TOK, [prompt(seed + i, n) for i, n in enumerate(lengths)], max_new_tokens=1,
                       eviction=asl.Proportional(asl.SnapKV(window=window), rate=rate))
    for trace in out.trace.sequences:
        n = trace.alive_tokens[0]
        assert trace.kv_tokens_per_head == [[min(n, max(window + 1, int(n * rate)))] * len(h)
                                            for h in trace.kv_tokens_per_head]


@given(n=st.integers(40, 400), seed=st.integers(0, 10**6), layer=st.integers(0, LAYERS - 2),
       rates=st.sampled_from([(0.4, 0.6), (0.25, 0.5), (0.3, 0.45), (0.15, 0.35)]))
def test_proportional_after_fastkv_is_fastkvs_retain_rate_over_tsp_rate(model, n, seed, layer, rates):  # noqa: F811
    """FastKV's own arithmetic after its TSP layer: int(k * (retain_rate / tsp_rate)) of the k
    propagated tokens (k / n in its place gives one entry more in about a tenth of cases)."""
    retain, share = rates
    out = asl.generate(model, TOK, prompt(seed, n), max_new_tokens=1,
                       selection=asl.FastKV(layer=layer, select_tokens=None, rate=share, window=4),
                       eviction=asl.Proportional(asl.SnapKV(window=4), rate=retain))
    n = out.trace.alive_tokens[0]
    k = max(5, int(n * share))
    before, after = min(n, max(5, int(n * retain))), min(k, max(5, int(k * (retain / share))))
    assert out.trace.alive_tokens == [n] * (layer + 1) + [k] * (LAYERS - layer - 1)
    assert out.trace.kv_tokens == [before] * (layer + 1) + [after] * (LAYERS - layer - 1)


@pytest.mark.parametrize("make, match", [
    (lambda: asl.AdaKV(asl.StreamingLLM(budget=64)), "AdaKV wraps a scorer eviction"),
    (lambda: asl.AdaKV(asl.SnapKV(budget=64), alpha_safeguard=1.5), "alpha_safeguard must be a number in"),
    (lambda: asl.PyramidKV(asl.SnapKV(budget=64), beta=0), "beta must be an integer >= 1"),
    (lambda: asl.PyramidKV(asl.SnapKV(budget=8, window=32)), "window \\(32\\) must be smaller than budget"),
    (lambda: asl.Proportional(asl.SnapKV(), rate=0), "rate must be a number in \\(0, 1\\]"),
    (lambda: asl.Proportional(asl.TopP()), "Proportional wraps a scorer eviction"),
])
def test_bad_wrappers_fail_naming_the_field(make, match):
    with pytest.raises(ValueError, match=match):
        make()
