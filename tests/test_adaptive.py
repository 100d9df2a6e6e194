"""Adaptive rules besides ASL's rank variance (JaccardStop, EntropyStop, FittedStop): their
signals against a reference computed from the very window scores they read, their decision
against their signals, their tokens against FastKV at the layer they chose, per sequence in a
batch, and the fitted rule's logistic fit."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import asl
from test_policies import LAYERS, TOK, Recorder, model, prompt  # noqa: F401 (the fixture)

K, W = 40, 4


def reference_signals(seen: list[dict], num_layers: int) -> dict[int, dict[str, float]]:
    """Depth, Jaccard of consecutive top-(K - W) prefix sets (by prompt index) and normalised
    entropy, from the window scores recorded at each layer (first sequence)."""
    out, previous = {}, None
    for s in seen:
        scores = s["scores"].sum(1)[0]  # [m] as LayerView.token_scores
        valid = s["valid"][0]
        alive = int(valid.sum())
        order = torch.sort(scores, descending=True, stable=True).indices[: K - W]
        chosen = {int(s["index"][0, c]) for c in order.tolist()}
        jaccard = 0.0 if previous is None else len(chosen & previous) / len(chosen | previous)
        previous = chosen
        mass = scores.clamp(min=0).nan_to_num(0.0)
        p = mass / mass.sum()
        entropy = float(-(p * p.clamp(min=1e-30).log()).sum()) / math.log(max(alive - W, 2))
        out[s["layer"]] = {"depth": s["layer"] / (num_layers - 1), "jaccard": jaccard, "entropy": entropy}
    return out


@settings(max_examples=15, deadline=None)
@given(n=st.integers(60, 200), seed=st.integers(0, 10**6), threshold=st.sampled_from([0.1, 0.3, 0.6]),
       l_min=st.integers(0, 5), rule=st.sampled_from(["jaccard", "entropy"]))
def test_the_rule_selects_where_its_signal_first_passes_and_keeps_fastkvs_tokens(model, n, seed, threshold, l_min,
                                                                                  rule):  # noqa: F811
    make = asl.JaccardStop if rule == "jaccard" else asl.EntropyStop
    policy = make(select_tokens=K, window=W, l_min=l_min, threshold=threshold if rule == "jaccard" else 1 - threshold)
    rec = Recorder(scores=(W, 7, "avg"))
    out = asl.generate(model, TOK, prompt(seed, n), max_new_tokens=1, selection=policy, eviction=rec)
    signals = out.trace.sequences[0].signals
    layer = out.trace.selection_layer
    start = max(l_min - 1, 0)  # the layer before l_min, for Jaccard; none computed before it
    assert sorted(signals) == list(range(start, start + len(signals)))
    assert layer is None or max(signals) == layer  # none computed after the selection
    expected = reference_signals(rec.seen[start: start + len(signals)], LAYERS)
    for at, row in signals.items():
        for name, value in row.items():
            assert value == pytest.approx(expected[at][name], abs=1e-5), (at, name)
    passes = [at for at, row in sorted(signals.items()) if at >= l_min and
              (row["jaccard"] >= policy.threshold if rule == "jaccard" else row["entropy"] <= policy.threshold)]
    if n - W <= K - W:  # nothing to prune
        assert layer is None
        return
    assert layer == (passes[0] if passes else None)
    if layer is not None:  # the tokens FastKV keeps at that layer
        fixed = asl.generate(model, TOK, prompt(seed, n), max_new_tokens=1,
                             selection=asl.FastKV(layer=layer, select_tokens=K, window=W, pooling="avg"))
        assert out.trace.kept_indices == fixed.trace.kept_indices and out.trace.alive_tokens == fixed.trace.alive_tokens


def test_l_max_forces_a_selection(model):  # noqa: F811
    out = asl.generate(model, TOK, prompt(1, 150), max_new_tokens=1,
                       selection=asl.JaccardStop(select_tokens=K, window=W, l_min=2, l_max=4, threshold=1.0))
    assert out.trace.selection_layer == 4


def test_each_sequence_of_a_batch_decides_alone(model):  # noqa: F811
    policy = asl.JaccardStop(select_tokens=K, window=W, l_min=1, threshold=0.3)
    texts = [prompt(2, 180), prompt(3, 90), prompt(4, 130)]
    batch = asl.generate(model, TOK, texts, max_new_tokens=4, selection=policy)
    for text, trace, tokens in zip(texts, batch.trace.sequences, batch.tokens):
        alone = asl.generate(model, TOK, text, max_new_tokens=4, selection=policy)
        assert (trace.selection_layer, trace.kept_indices) == (alone.trace.selection_layer, alone.trace.kept_indices)
    assert len({t.selection_layer for t in batch.trace.sequences}) > 1  # they did decide differently


def test_the_fitted_rule_learns_which_signal_keeps_the_answer():
    rows = []
    for p in range(40):  # the answer is kept exactly where the top-k set is stable (jaccard > 0.6)
        signals = {layer: {"depth": layer / 11, "jaccard": ((p * 7 + layer * 13) % 17) / 16,
                           "entropy": ((p * 5 + layer * 3) % 11) / 10} for layer in range(12)}
        rows.append((signals, {layer: row["jaccard"] > 0.6 for layer, row in signals.items()}))
    rule = asl.FittedStop.fit(rows, select_tokens=K, window=W, l_min=0, confidence=0.5)
    assert rule == asl.FittedStop.fit(rows, select_tokens=K, window=W, l_min=0, confidence=0.5)  # deterministic
    assert rule.weights[1] > 0 and abs(rule.weights[1]) > 5 * max(abs(rule.weights[0]), abs(rule.weights[2]))
    fires = rule.fires({name: torch.tensor([0.2, 0.9]) for name in ("depth", "entropy")} |
                       {"jaccard": torch.tensor([0.3, 0.9])})
    assert fires.tolist() == [False, True]
    assert rule.fitted_on == {"prompts": 40, "pairs": 480, "kept_share": pytest.approx(
        sum(m for _, ms in rows for m in ms.values()) / 480)}
    with pytest.raises(ValueError, match="needs \\(prompt, layer\\) pairs of both outcomes"):
        asl.FittedStop.fit([(rows[0][0], {layer: True for layer in range(12)})])


@pytest.mark.parametrize("make, match", [
    (lambda: asl.JaccardStop(threshold=1.5), "threshold must be a number in \\[0, 1\\]"),
    (lambda: asl.EntropyStop(l_min=5, l_max=3), "l_max \\(3\\) must be >= l_min \\(5\\)"),
    (lambda: asl.FittedStop(weights=(1.0, 2.0)), "weights must be 3 numbers"),
    (lambda: asl.FittedStop(confidence=1.0), "confidence must be a number in \\(0, 1\\)"),
    (lambda: asl.JaccardStop(select_tokens=8, window=32), "select_tokens \\(8\\) must be larger than window"),
])
def test_bad_fields_fail_naming_them(make, match):
    with pytest.raises(ValueError, match=match):
        make()
