"""PyramidInfer against golden traces of the original code (tests/golden/pyramidinfer.json,
written by benchmarks/golden_pyramidinfer.py, which runs the prefill and generation blocks of
the ASL authors' modeling_qwen2_pyramidinfer.py at 9e1ec0c as they are, on inputs rebuilt
here from their seeds). Our policies are driven as the library drives them: `PyramidInfer`
through `begin` and `after_layer` on each layer's surviving tokens, `PyramidInferDecode` through
the decode loop's own `DecodeEviction` over the prefill's `LayerCache`s (slots, positions, the
ring of recent queries, compaction), one step at a time, beside the same PrefillInfo (so the
prefill hands the decoding its recent rows, as in `generate`).

Every cut of a case clears its scores by a relative margin (`min_margin`, recorded) far above
float rounding and the tolerance of near_ties.py, so the choices must be the original's exactly,
on any CPU.

The decoding agrees with the original at every compression, at the same step, keeping the
same positions, in every case, including the three behaviours this comparison first found
ours without (`BEHAVIOURS`; the cases' `differences` say which each exercises, and together
they exercise all three).
"""
from __future__ import annotations

import json
import pathlib
import sys
import types

import pytest
import torch

import asl
from asl.decoding import DecodeEviction
from asl.models.cache import KVCache, LayerCache
from asl.policies import LayerView, PrefillInfo
from near_ties import SCORE_RTOL

GOLDEN = pathlib.Path(__file__).parent / "golden"
sys.path.insert(0, str(GOLDEN.parent.parent / "benchmarks"))
from golden_pyramidinfer import inputs  # noqa: E402 (the fixture inputs, from their seeds)

CASES = json.loads((GOLDEN / "pyramidinfer.json").read_text())["cases"]
BEHAVIOURS = {  # what the original's decoding does (modeling_qwen2_pyramidinfer.py), PyramidInferDecode too
    "recent_length": "recent_length = int((1 + layer 0's cache length) * recent_ratio) recomputed in every forward "
                     "(line 1006): the recent window and rows grow during decoding",
    "prefill_rows": "the recent rows the prefill stores (line 1086) carry the in-place linspace(1, distance_weight) "
                    "weights of line 1063 on their context columns, and rank with them at the first compressions",
    "short_span": "with fewer than exceed entries before the window, max(int(len(span) * gen_compress_ratio * g_l), "
                  "1) of them are kept (lines 1104-1109)",
}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: on two busy cores a second thread only waits (seconds per test)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rebuilt(case: dict) -> dict:
    x = inputs(case["seed"], case["layers"], case["n"], case["steps"], case["heads"], case["groups"], case["dim"])
    assert abs(float(x["q"].sum() + x["q_new"].sum()) - case["q_sum"]) < 1e-3  # the inputs the original saw
    assert abs(float(x["k"].sum() + x["k_new"].sum()) - case["k_sum"]) < 1e-3
    assert case["min_margin"] > SCORE_RTOL  # no cut is a near-tie
    return x


def policies(case: dict, accumulate_weights: bool = True):
    c = case["config"]
    assert c["prefill_decay_strategy"] == c["gen_decay_strategy"] == "cosine"
    prefill = asl.PyramidInfer(r=c["prefill_decay_ratio"], recent_ratio=c["recent_ratio"],
                               min_context=c["min_context_length"], sink=c["streamingllm_sink_len"],
                               distance_weight=c["distance_weight"], interval=c["layerwise_downsample_interval"])
    decode = asl.PyramidInferDecode(gen_decay=c["gen_decay_ratio"], gen_compress=c["gen_compress_ratio"],
                                    exceed=c["exceed_length_to_compress"], recent_ratio=c["recent_ratio"],
                                    distance_weight=c["distance_weight"], accumulate_weights=accumulate_weights)
    return prefill, decode


def their_prefill(case: dict) -> list[list[int]]:
    """The prompt positions each layer ran on in the original (and cached)."""
    alive, out = set(range(case["n"])), []
    for pruned in case["prefill_pruned"]:
        alive -= set(pruned)
        out.append(sorted(alive))
    return out


def their_decode(case: dict) -> dict[int, list[tuple[int, list[int]]]]:
    """Per recorded layer, (step, kept positions) after each of the original's compressions."""
    prefill = their_prefill(case)
    out = {}
    for layer in case["record"]:
        kept, trace, step = set(prefill[layer]), [], 0
        for c in (c for c in case["compressions"] if c["layer"] == layer):
            kept |= set(range(case["n"] + step, case["n"] + c["step"]))  # tokens of steps step+1 .. c["step"]
            step = c["step"]
            assert set(c["dropped"]) <= kept
            kept -= set(c["dropped"])
            trace.append((step, sorted(kept)))
        out[layer] = trace
    return out


def our_prefill(case: dict, x: dict, prefill, decode=None) -> tuple[list[list[int]], list[LayerCache]]:
    """Our selection on each layer's surviving tokens. Returns the positions each layer ran on
    and, with a decoding policy, each layer's cache as the prefill stores it (store_layer)."""
    n, layers, g = case["n"], case["layers"], case["groups"]
    info = PrefillInfo(layers, case["heads"], g, case["dim"], (n,))
    prefill.begin(info)
    if decode is not None:
        decode.begin(info)  # the same PrefillInfo: the prefill hands it its recent rows
    alive = torch.arange(n)
    ran_on, caches = [], []
    for layer in range(layers):
        ran_on.append(alive.tolist())
        q, k = x["q"][layer][:, :, alive], x["k"][layer][:, :, alive]
        m = len(alive)
        valid = torch.ones(1, m, dtype=torch.bool)
        view = LayerView(layer, q, k, k, alive[None], alive[None], valid)
        assert decode is None or decode.keep(layer, view) is None
        chosen = prefill.after_layer(layer, view)
        if decode is not None:
            spread = lambda t: t[:, None, :].expand(1, g, m)  # noqa: E731 (one value per token, every KV head)
            cache = LayerCache.from_prefill(k, k.clone(), spread(valid), case["steps"] + 1, spread(alive[None]),
                                            spread(alive[None]))
            cache.keep_queries(q, valid, alive[None], decode.recent_queries(n, case["steps"] + 1))
            caches.append(cache)
        if chosen is not None and bool(chosen.active[0]):
            cols = chosen.keep[0]
            alive = alive[cols[cols >= 0]]
    return ran_on, caches


def our_decode(case: dict, x: dict, decode, caches: list[LayerCache]) -> dict[int, list[tuple[int, list[int]]]]:
    """The decode loop's side of the eviction, step by step, as generation.decode_loop and
    decode_step run it: before our step t the policy may compact each layer; step t writes token
    t (position n + t) into every layer and its query into the ring. The original compresses
    right after its step s = t, on the same cache, so our compaction before step t is its
    compression at step t. Returns, per recorded layer, (t, kept positions) after each compaction."""
    n = case["n"]
    compacted = []  # the layers whose during_decode returned a keep, this step
    policy_step = decode.during_decode

    def during_decode(layer, view):
        keep = policy_step(layer, view)
        if keep is not None:
            compacted.append(layer)
        return keep

    decode.during_decode = during_decode  # the instance's: the class is untouched
    pre = types.SimpleNamespace(alive_tokens=[[n] * case["layers"]])  # DecodeEviction reads the prompt length
    loop = DecodeEviction(decode, KVCache(caches), pre)
    out = {layer: [] for layer in case["record"]}
    for t in range(case["steps"] + 1):
        compacted.clear()
        slots, _ = loop.before_step(t, torch.tensor([n + t]))
        for layer in set(compacted) & set(out):
            cache, length = caches[layer], loop.next[layer]
            out[layer].append((t, cache.positions[0, 0, :length][cache.valid[0, 0, :length]].tolist()))
        if t == case["steps"]:
            break
        (qslot,) = loop.step_inputs()
        for layer, cache in enumerate(caches):
            new_k = x["k_new"][layer][:, :, t: t + 1]
            cache.write(slots[layer: layer + 1], new_k, new_k)
            cache.write_query(qslot, x["q_new"][layer][:, :, t: t + 1])
        loop.after_step()
    return out


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_pyramidinfer_prefill_keeps_what_the_original_keeps_at_every_layer(case):
    """The tokens each layer runs on (and caches), layer after layer."""
    x = rebuilt(case)
    ran_on, _ = our_prefill(case, x, policies(case)[0])
    theirs = their_prefill(case)
    assert len(theirs) == case["layers"] and len(theirs[-1]) < case["n"]  # it pruned
    for layer, (ours, their) in enumerate(zip(ran_on, theirs)):
        assert ours == their, layer


def test_the_cases_exercise_every_behaviour():
    assert set().union(*(c["differences"] for c in CASES)) == set(BEHAVIOURS)


@pytest.mark.parametrize("case", [c for c in CASES if c["steps"]], ids=lambda c: c["name"])
def test_pyramidinfer_decoding_keeps_what_the_original_keeps_at_every_compression(case):
    """Every step's decision: the same layers compress at the same steps, keeping the same
    positions (the in-place weighting of the stored rows included: accumulate_weights=True)."""
    x = rebuilt(case)
    prefill, decode = policies(case)
    ran_on, caches = our_prefill(case, x, prefill, decode)
    assert ran_on == their_prefill(case)
    ours, theirs = our_decode(case, x, decode, caches), their_decode(case)
    assert sum(len(trace) for trace in theirs.values()) >= 20
    for layer in case["record"]:
        for (t, kept), (s, their_kept) in zip(ours[layer], theirs[layer]):
            assert (t, kept) == (s, their_kept), (layer, t, s)
        assert len(ours[layer]) == len(theirs[layer]), layer


@pytest.mark.parametrize("case", [c for c in CASES if c["steps"] and not c["differences"]], ids=lambda c: c["name"])
def test_pyramidinfer_decoding_with_fresh_weights_keeps_other_entries(case):
    """The original weights its stored rows in place (line 1105 on a view of them): weighting
    fresh rows at each compression (accumulate_weights=False) keeps other entries somewhere."""
    x = rebuilt(case)
    prefill, decode = policies(case, accumulate_weights=False)
    _, caches = our_prefill(case, x, prefill, decode)
    assert our_decode(case, x, decode, caches) != their_decode(case)
