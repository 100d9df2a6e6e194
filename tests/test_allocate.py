"""Allocators that wrap a scorer (AdaKV per head, PyramidKV per layer) against asl.reference,
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


@pytest.mark.parametrize("make, match", [
    (lambda: asl.AdaKV(asl.StreamingLLM(budget=64)), "AdaKV wraps a scorer eviction"),
    (lambda: asl.AdaKV(asl.SnapKV(budget=64), alpha_safeguard=1.5), "alpha_safeguard must be a number in"),
    (lambda: asl.PyramidKV(asl.SnapKV(budget=64), beta=0), "beta must be an integer >= 1"),
    (lambda: asl.PyramidKV(asl.SnapKV(budget=8, window=32)), "window \\(32\\) must be smaller than budget"),
])
def test_bad_wrappers_fail_naming_the_field(make, match):
    with pytest.raises(ValueError, match=match):
        make()
