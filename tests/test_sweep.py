"""asl.sweep: one prompt under several one-shot selections, the layers before each selection
run once. Every point's answer and trace equal a separate `generate` run's; the layers before
a selection are computed once for the whole sweep."""
from __future__ import annotations

import pytest
import torch

import asl
from test_policies import LAYERS, TOK, model, prompt  # noqa: F401 (the fixture)

TRACE_FIELDS = ("alive_tokens", "kv_tokens_per_head", "selection_layer", "kept_indices", "ratios")


def assert_same_run(point, alone) -> None:
    assert point.tokens == alone.tokens and point.text == alone.text
    for name in TRACE_FIELDS:
        assert getattr(point.trace, name) == getattr(alone.trace, name), name


@pytest.mark.parametrize("eviction", [None, asl.SnapKV(budget=40, window=4), asl.StreamingLLM(budget=24, sink=2)],
                         ids=["alone", "snapkv", "streaming (rolling)"])
def test_every_point_equals_its_separate_run(model, eviction):  # noqa: F811
    text = prompt(11, 150)
    selections = [asl.FastKV(layer=layer, select_tokens=48, window=4) for layer in (1, 3, 6, 9)]
    selections += [asl.ASL(tau=tau, l_min=2, l_obs=3, select_tokens=48, window=4) for tau in (0.2, 0.6, 1.2)]
    out = asl.sweep(model, TOK, text, selections, eviction=eviction, max_new_tokens=12)
    assert len(out.outputs) == len(selections) and out.trunk_s > 0
    for policy, point in zip(selections, out.outputs):
        alone = asl.generate(model, TOK, text, max_new_tokens=12, selection=policy, eviction=eviction)
        assert_same_run(point, alone)
    layers = [o.trace.selection_layer for o in out.outputs]
    assert layers[:4] == [1, 3, 6, 9] and len(set(layers)) > 2  # points that really differ
    assert len(out.trunk_layer_s) == LAYERS and out.trunk_layer_s == sorted(out.trunk_layer_s)
    assert out.trunk_layer_s[-1] <= out.trunk_s
    assert [out.alone_prefill_s(i) > out.outputs[i].trace.prefill_s for i in range(len(selections))] == \
        [True] * len(selections)


def test_evictions_share_the_full_pass(model):  # noqa: F811
    """One full pass serves several evictions (and the full cache): each point's answer, cache
    and trace are its separate run's."""
    text = prompt(14, 150)
    points = [(None, None), (None, asl.SnapKV(budget=40, window=4)), (None, asl.TOVA(budget=36)),
              (None, asl.StreamingLLM(budget=24, sink=2)), (asl.FastKV(layer=3, select_tokens=48, window=4),
                                                            asl.SnapKV(budget=30, window=4))]
    selections, evictions = [p[0] for p in points], [p[1] for p in points]
    out = asl.sweep(model, TOK, text, selections, eviction=evictions, max_new_tokens=12)
    for (selection, eviction), point in zip(points, out.outputs):
        assert_same_run(point, asl.generate(model, TOK, text, max_new_tokens=12, selection=selection,
                                            eviction=eviction))
    kv = [o.trace.kv_tokens for o in out.outputs]
    assert len({tuple(k) for k in kv}) == len(points)  # points that really differ
    assert [out.alone_prefill_s(i) > out.trunk_layer_s[-1] for i in range(4)] == [True] * 4  # the whole trunk


def test_the_layers_before_a_selection_run_once(model, monkeypatch):  # noqa: F811
    calls = [0] * LAYERS
    for i, layer in enumerate(model.layers):
        real = layer.project
        monkeypatch.setattr(layer, "project", lambda *a, _real=real, _i=i, **k: (calls.__setitem__(_i, calls[_i] + 1),
                                                                               _real(*a, **k))[1])
    points = (2, 5, 8)
    asl.sweep(model, TOK, prompt(12, 150), [asl.FastKV(layer=l, select_tokens=48, window=4) for l in points],
              max_new_tokens=1)
    # the trunk runs every layer once; each point runs only the layers after its selection
    assert calls == [1 + sum(layer > p for p in points) for layer in range(LAYERS)]


def test_a_sweep_refuses_what_cannot_share_the_prefix(model):  # noqa: F811
    with pytest.raises(ValueError, match="GemFilter reruns the model from layer 0"):
        asl.sweep(model, TOK, "hello there", [asl.GemFilter(layer=2, select_tokens=8)])
    with pytest.raises(ValueError, match="selections must be a non-empty list"):
        asl.sweep(model, TOK, "hello there", [])
    with pytest.raises(ValueError, match=r"selections must hold selection policies \(or None\), got SnapKV"):
        asl.sweep(model, TOK, "hello there", [asl.SnapKV()])
    with pytest.raises(ValueError, match="eviction: a list needs one policy .or None. per point, 2, got 1"):
        asl.sweep(model, TOK, "hello there", [None, None], eviction=[asl.SnapKV()])
    with pytest.raises(ValueError, match="eviction must be an EvictionPolicy"):
        asl.sweep(model, TOK, "hello there", [None], eviction=[asl.FastKV()])


def test_a_trunk_of_other_tokens_is_refused(model):  # noqa: F811
    from asl.prefill import AliveTokens, full_trunk, prefill

    ids = torch.tensor([TOK(prompt(13, 40))["input_ids"]])
    valid = torch.ones_like(ids, dtype=torch.bool)
    trunk = full_trunk(model, AliveTokens.start(ids, valid))
    with pytest.raises(ValueError, match="trunk: it was computed for other tokens"):
        prefill(model, ids.flip(-1), valid, 4, trunk=trunk)


def test_one_trunk_serves_sweeps_and_the_oracle(model, monkeypatch):  # noqa: F811
    """asl.prompt_trunk: a prompt's full pass shared by an oracle and a sweep (asl.bench
    calibrate) gives what each computes alone, with every layer run once for both."""
    text = prompt(15, 150)
    oracle_alone = asl.oracle_layer(model, TOK, text, select_tokens=48, max_new_tokens=8, window=4, layers=[2, 6])
    points = [asl.ASL(tau=0.6, l_min=2, l_obs=3, select_tokens=48, window=4), asl.FastKV(layer=5, select_tokens=48)]
    sweep_alone = asl.sweep(model, TOK, text, points, max_new_tokens=8)
    calls = [0] * LAYERS
    for i, layer in enumerate(model.layers):
        real = layer.project
        monkeypatch.setattr(layer, "project", lambda *a, _real=real, _i=i, **k: (calls.__setitem__(_i, calls[_i] + 1),
                                                                               _real(*a, **k))[1])
    trunk = asl.prompt_trunk(model, TOK, text)
    assert calls == [1] * LAYERS and trunk.seconds > 0
    oracle = asl.oracle_layer(model, TOK, text, select_tokens=48, max_new_tokens=8, window=4, layers=[2, 6], trunk=trunk)
    shared = asl.sweep(model, TOK, text, points, max_new_tokens=8, trunk=trunk)
    assert [(o.layer, o.tokens, o.matches) for o in oracle.layers] == \
        [(o.layer, o.tokens, o.matches) for o in oracle_alone.layers]
    assert oracle.full_tokens == oracle_alone.full_tokens and oracle.prefill_s == trunk.seconds
    for point, alone in zip(shared.outputs, sweep_alone.outputs):
        assert_same_run(point, alone)
    assert shared.trunk_s == trunk.seconds
    other = asl.prompt_trunk(model, TOK, prompt(16, 150))
    with pytest.raises(ValueError, match="trunk: it was computed for other tokens"):
        asl.sweep(model, TOK, text, points, max_new_tokens=8, trunk=other)
    with pytest.raises(ValueError, match="trunk: it was computed for other tokens"):
        asl.oracle_layer(model, TOK, text, select_tokens=48, window=4, trunk=other)
    with pytest.raises(ValueError, match="prompt must be a non-empty string"):
        asl.prompt_trunk(model, TOK, " ")
