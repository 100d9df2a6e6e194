"""Policies against docs/algorithms.md and asl.reference, with hypothesis on tiny random models."""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import asl
from asl import reference
from asl.policies.base import EvictionPolicy
from asl.policies.gemfilter import gemfilter_scores
from near_ties import assert_scores_close, near_threshold
from tiny import CharTokenizer, random_text, tiny_pair

TOK = CharTokenizer()
LAYERS = 12


@pytest.fixture(scope="module")
def model():
    return tiny_pair("llama", num_hidden_layers=LAYERS, max_position_embeddings=512, eos_token_id=None)[1]


@dataclass
class Recorder(EvictionPolicy):
    """Wraps an eviction policy and keeps every layer's view inputs and its choice.

    `scores=(window, kernel, pooling)` also keeps the view's shared window scores [B, G, m]: the
    very numbers a policy with those settings chooses from (near_ties.py says why that matters)."""

    inner: EvictionPolicy | None = None
    scores: tuple | None = None
    seen: list = field(default_factory=list)

    def begin(self, prefill):
        if self.inner is not None:
            self.inner.begin(prefill)

    def keep(self, layer, view):
        keep = self.inner.keep(layer, view) if self.inner is not None else None
        scores = view.window_scores(*self.scores) if self.scores and view.width > self.scores[0] else None
        self.seen.append(dict(layer=layer, q=view.queries, k=view.keys, valid=view.valid.clone(),
                              positions=view.positions, index=view.index, keep=keep, scores=scores))
        return keep


def settings(policy) -> tuple:
    return policy.window, policy.kernel, policy.pooling


def own_scores(seen: dict, policy) -> torch.Tensor:
    """The per-token scores [m] the policy chose from at that layer (its first sequence), checked
    against the reference's within the tolerance."""
    ours = seen["scores"].sum(1)[0]  # as LayerView.token_scores sums them
    assert_scores_close(ours, reference.token_scores(seen["q"], seen["k"], seen["valid"], *settings(policy))[0])
    return ours


def prompt(seed: int, n: int) -> str:
    return random_text(random.Random(seed), n)


asl_params = st.fixed_dictionaries({
    "window": st.integers(2, 12),
    "extra": st.integers(1, 60),  # select_tokens = window + extra
    "l_min": st.integers(1, LAYERS - 2),
    "tau": st.sampled_from([0.0, 0.5, 0.8, 0.95, 1.0, 1.2, 2.0]),
    "kernel": st.sampled_from([1, 3, 7]),
    "pooling": st.sampled_from(["avg", "max"]),
})


def make_asl(p, l_obs_frac: float, l_max=None):
    l_obs = 2 + int(l_obs_frac * (p["l_min"] - 1))
    return asl.ASL(tau=p["tau"], l_min=p["l_min"], l_obs=l_obs, select_tokens=p["window"] + p["extra"],
                   window=p["window"], kernel=p["kernel"], pooling=p["pooling"], l_max=l_max)


def reference_asl(policy: asl.ASL, seen: list, num_layers: int, taken: int | None):
    """docs/algorithms.md section 3, written out with the reference functions, on the scores the
    policy computed at each layer (near_ties.py). Where a ratio is within THRESHOLD_RTOL of tau,
    the reference follows the decision taken (`taken`: the policy's layer): either is right."""
    w, k = policy.window, policy.select_tokens
    n = int(seen[0]["valid"].sum())
    m = n - w
    if m <= k - w:
        return None, None, {}
    ranks, var0, ratios = {}, None, {}
    for layer in range(num_layers):
        if layer >= policy.l_min - policy.l_obs + 1:
            scores = own_scores(seen[layer], policy)
            ranks[layer] = reference.token_ranks(scores)
        if layer >= policy.l_min:
            history = [ranks[j] for j in range(layer - policy.l_obs + 1, layer + 1)]
            select, ratio, var0 = reference.asl_select(history, k - w, policy.tau, var0, layer == policy.l_max)
            ratios[layer] = ratio
            if near_threshold(ratio, policy.tau) and layer != policy.l_max:
                select = layer == taken
            if select:
                return layer, reference.top_k_with_window(scores, k - w, n).tolist(), ratios
    return None, None, ratios


# The case that failed on an AVX2-only AMD EPYC (issue 32) while the reference recomputed the
# scores: a near-tie of two float32 scores ranked differently there, so layer 10's ratio came out
# 0.932187823290703 against the reference's 0.9322095571194762 (extra and l_obs found by replaying).
@example(p={"window": 7, "extra": 41, "l_min": 6, "tau": 0.5, "kernel": 1, "pooling": "max"}, l_obs_frac=0.0,
         n=144, seed=200)
# And one that failed the same way on an AVX-512 AMD EPYC run as AVX2 (ATEN_CPU_CAPABILITY=avx2
# ONEDNN_MAX_CPU_ISA=AVX2): 1.6675383318412536 against the reference's 1.6672127977666475.
@example(p={"window": 4, "extra": 45, "l_min": 8, "tau": 0.0, "kernel": 3, "pooling": "max"},
         l_obs_frac=0.10740070010749084, n=154, seed=153166)
@given(p=asl_params, l_obs_frac=st.floats(0, 1), n=st.integers(20, 160), seed=st.integers(0, 10**6))
def test_asl_layer_and_tokens_equal_reference(model, p, l_obs_frac, n, seed):
    policy = make_asl(p, l_obs_frac)
    rec = Recorder(scores=settings(policy))
    out = asl.generate(model, TOK, prompt(seed, n), max_new_tokens=1, selection=policy, eviction=rec)
    layer, keep, ratios = reference_asl(policy, rec.seen, LAYERS, out.trace.selection_layer)
    assert out.trace.selection_layer == layer
    assert out.trace.ratios.keys() == ratios.keys()
    for j in ratios:
        assert out.trace.ratios[j] == pytest.approx(ratios[j], rel=1e-9, abs=1e-12)
    if layer is None:
        assert out.trace.kept_indices == list(range(n)) and out.trace.alive_tokens == [n] * LAYERS
    else:
        assert out.trace.kept_indices == keep
        alive = out.trace.alive_tokens
        assert alive[: layer + 1] == [n] * (layer + 1) and alive[layer + 1:] == [len(keep)] * (LAYERS - layer - 1)


@given(p=asl_params, n=st.integers(20, 160), seed=st.integers(0, 10**6))
def test_asl_thresholds(model, p, n, seed):
    text = prompt(seed, n)
    prunable = n - p["window"] > p["extra"]
    eager = asl.generate(model, TOK, text, max_new_tokens=1, selection=make_asl({**p, "tau": 1.01}, 1.0)).trace
    assert eager.selection_layer == (p["l_min"] if prunable else None)
    never = asl.generate(model, TOK, text, max_new_tokens=1, selection=make_asl({**p, "tau": 0.0}, 1.0)).trace
    assert never.selection_layer is None and never.kept_indices == list(range(n))
    forced = asl.generate(model, TOK, text, max_new_tokens=1,
                          selection=make_asl({**p, "tau": 0.0}, 1.0, l_max=LAYERS - 1)).trace
    assert forced.selection_layer == (LAYERS - 1 if prunable else None)


@given(p=asl_params, n=st.integers(20, 160), seed=st.integers(0, 10**6), layer=st.integers(0, LAYERS - 1))
def test_selection_invariants(model, p, n, seed, layer):
    """Sorted, unique, in range; the window kept; original positions carried; deterministic."""
    w, k = p["window"], p["window"] + p["extra"]
    for policy in (make_asl(p, 0.5), asl.FastKV(layer=layer, select_tokens=k, window=w, kernel=p["kernel"],
                                                 pooling=p["pooling"])):
        rec = Recorder()
        out = asl.generate(model, TOK, prompt(seed, n), max_new_tokens=2, selection=policy, eviction=rec)
        kept = out.trace.kept_indices
        assert kept == sorted(set(kept)) and all(0 <= i < n for i in kept)
        assert set(range(n - w, n)) <= set(kept)
        assert len(kept) == (min(k, n) if out.trace.selection_layer is not None else n)
        for s in rec.seen:
            ok = s["valid"]
            assert torch.equal(s["positions"][ok], s["index"][ok])  # original positions
        if out.trace.selection_layer != LAYERS - 1:  # the last layer's choice has no deeper layer to show in
            assert rec.seen[-1]["index"][0].tolist() == kept
        again = asl.generate(model, TOK, prompt(seed, n), max_new_tokens=2, selection=policy)
        assert again.trace.kept_indices == kept and again.tokens == out.tokens


@given(n=st.integers(20, 160), seed=st.integers(0, 10**6), layer=st.integers(0, LAYERS - 1),
       window=st.integers(1, 10), extra=st.integers(1, 50), pooling=st.sampled_from(["avg", "max"]))
def test_fastkv_equals_reference(model, n, seed, layer, window, extra, pooling):
    policy = asl.FastKV(layer=layer, select_tokens=window + extra, window=window, pooling=pooling)
    rec = Recorder(scores=settings(policy))
    out = asl.generate(model, TOK, prompt(seed, n), max_new_tokens=1, selection=policy, eviction=rec)
    if n - window <= extra:
        assert out.trace.selection_layer is None
        return
    scores = own_scores(rec.seen[layer], policy)
    assert out.trace.selection_layer == layer
    assert out.trace.kept_indices == reference.top_k_with_window(scores, extra, n).tolist()


@given(n=st.integers(20, 160), seed=st.integers(0, 10**6), window=st.integers(1, 10), extra=st.integers(1, 80),
       kernel=st.sampled_from([1, 5, 7]), pooling=st.sampled_from(["avg", "max"]))
def test_snapkv_keeps_exactly_the_reference_tokens(model, n, seed, window, extra, kernel, pooling):
    budget = window + extra
    rec = Recorder(inner=asl.SnapKV(budget=budget, window=window, kernel=kernel, pooling=pooling),
                   scores=(window, kernel, pooling))
    out = asl.generate(model, TOK, prompt(seed, n), max_new_tokens=1, eviction=rec)
    for s, per_head in zip(rec.seen, out.trace.kv_tokens_per_head):
        assert per_head == [min(n, budget)] * len(per_head)  # never above the budget
        ours = s["scores"][0]  # what SnapKV chose from, checked against the reference's
        assert_scores_close(ours, reference.window_scores(s["q"], s["k"], s["valid"], window, kernel, pooling)[0])
        expected = reference.snapkv_keep(ours, n, budget, window)
        if expected is None:
            assert s["keep"] is None
        else:
            assert torch.equal(s["keep"][0], expected)
            assert all(set(range(n - window, n)) <= set(row.tolist()) for row in s["keep"][0])


@given(n=st.integers(20, 160), seed=st.integers(0, 10**6), budget=st.integers(6, 100), sink=st.integers(0, 5))
def test_streaming_keeps_sink_and_recent(model, n, seed, budget, sink):
    rec = Recorder(inner=asl.StreamingLLM(budget=budget, sink=sink))
    out = asl.generate(model, TOK, prompt(seed, n), max_new_tokens=1, eviction=rec)
    expected = list(range(sink)) + list(range(n - (budget - sink), n)) if n > budget else None
    for s, per_head in zip(rec.seen, out.trace.kv_tokens_per_head):
        assert max(per_head) <= budget
        assert (s["keep"] is None) if expected is None else s["keep"][0, 0].tolist() == expected


@given(n=st.integers(20, 160), seed=st.integers(0, 10**6), layer=st.integers(0, LAYERS - 1),
       k=st.integers(4, 100), keep_last=st.booleans())
def test_gemfilter_restarts_on_the_reference_tokens(model, n, seed, layer, k, keep_last):
    policy = asl.GemFilter(layer=layer, select_tokens=k, keep_last=keep_last)
    rec = Recorder()
    out = asl.generate(model, TOK, prompt(seed, n), max_new_tokens=1, selection=policy, eviction=rec)
    alive = out.trace.alive_tokens
    if n <= k:
        assert out.trace.selection_layer is None and alive == [n] * LAYERS
        return
    plain = Recorder()  # pass 1's layer, seen by a run without the policy
    asl.generate(model, TOK, prompt(seed, n), max_new_tokens=1, eviction=plain)
    s = plain.seen[layer]
    scores = gemfilter_scores(s["q"][0, :, -1], s["k"][0], policy.kernel)  # its own numbers (near_ties.py)
    assert_scores_close(scores, reference.gemfilter_scores(s["q"][0, :, -1], s["k"][0], policy.kernel))
    if keep_last:
        scores[-1] = float("inf")
    expected = torch.sort(scores, descending=True, stable=True).indices[:k].sort().values.tolist()
    assert out.trace.selection_layer == layer and out.trace.kept_indices == expected
    assert alive == [k] * LAYERS  # pass 2 runs every layer on the kept tokens only
    assert rec.seen[0]["positions"][0].tolist() == list(range(k))  # renumbered
    assert rec.seen[0]["index"][0].tolist() == expected


@given(p=asl_params, n=st.integers(20, 160), seed=st.integers(0, 10**6))
def test_asl_two_pass_uses_asl_choice_or_last_layer(model, p, n, seed):
    one = make_asl(p, 1.0)
    two = asl.ASLTwoPass(**{f: getattr(one, f) for f in one.__dataclass_fields__})
    rec = Recorder(scores=settings(one))
    first = asl.generate(model, TOK, prompt(seed, n), max_new_tokens=1, selection=one, eviction=rec)
    out = asl.generate(model, TOK, prompt(seed, n), max_new_tokens=1, selection=two)
    assert out.trace.selection_layer == first.trace.selection_layer
    if n - one.window <= one.select_tokens - one.window:
        assert out.trace.kept_indices == list(range(n))
    elif first.trace.selection_layer is not None:
        assert out.trace.kept_indices == first.trace.kept_indices
    else:
        scores = own_scores(rec.seen[-1], one)  # pass 1 of the two-pass run computes the same numbers
        assert out.trace.kept_indices == reference.top_k_with_window(scores, one.select_tokens - one.window,
                                                                     n).tolist()
    assert out.trace.alive_tokens == [len(out.trace.kept_indices)] * LAYERS


POLICIES = {
    "asl+snapkv": lambda: (asl.ASL(tau=0.9, l_min=4, l_obs=3, select_tokens=40, window=8),
                           asl.SnapKV(budget=48, window=8)),
    "asl-forced": lambda: (asl.ASL(tau=0.0, l_min=3, l_obs=2, select_tokens=30, window=6, l_max=6), None),
    "fastkv+snapkv": lambda: (asl.FastKV(layer=5, select_tokens=32, window=4), asl.SnapKV(budget=40, window=8)),
    "gemfilter": lambda: (asl.GemFilter(layer=4, select_tokens=30), None),
    "asl-2pass": lambda: (asl.ASLTwoPass(tau=1.5, l_min=4, l_obs=3, select_tokens=30, window=6), None),
    "streaming": lambda: (None, asl.StreamingLLM(budget=40, sink=4)),  # rolling while decoding
    "pyramidinfer": lambda: (asl.PyramidInfer(r=0.5, min_context=8), asl.PyramidInferDecode(exceed=4)),
    "lazyllm": lambda: (asl.LazyLLM(keep=0.6), None),  # revived while decoding
    "lazyllm-static+snapkv": lambda: (asl.LazyLLM(layers=(2, 5), keep=0.7, revive=False), asl.SnapKV(budget=40, window=4)),
    "full": lambda: (None, asl.Full()),
    "knorm": lambda: (None, asl.KNorm(budget=40, window=8)),
    "keydiff-ratio": lambda: (None, asl.KeyDiff(window=0, ratio=0.6)),  # kvpress's form: a share per layer
    "tova": lambda: (asl.FastKV(layer=3, select_tokens=48, window=4), asl.TOVA(budget=30, window=4)),
    "observed-attention": lambda: (None, asl.ObservedAttention(budget=36, window=4, chunk=32)),
    "random": lambda: (None, asl.RandomScores(budget=30, window=4, seed=1)),
    "lagkv": lambda: (None, asl.LagKV(budget=30, window=4, sink=2, lag=8)),
    "adakv(knorm)": lambda: (None, asl.AdaKV(asl.KNorm(budget=30, window=4))),
    "chunkkv(snapkv)": lambda: (None, asl.ChunkKV(asl.SnapKV(budget=30, window=4), chunk=8)),  # 25 tokens: 2 chunks
    "perchunk(snapkv)": lambda: (None, asl.PerChunk(asl.SnapKV(budget=30, window=4), chunk=40)),
    "entropy-chunkkv(snapkv)": lambda: (None, asl.EntropyGatedChunkKV(asl.SnapKV(budget=30, window=4), chunk=6,
                                                                      low_entropy_chunk=2)),
    "blockwise(keydiff)": lambda: (None, asl.Blockwise(asl.KeyDiff(budget=30, window=4), block=16)),
    "knorm+snapkv": lambda: (None, asl.Chain(asl.KNorm(budget=40, window=4), asl.SnapKV(budget=24, window=4))),
    "fastkv+snapkv+keydiff": lambda: (asl.FastKV(layer=3, select_tokens=48, window=4),
                                      asl.Chain(asl.SnapKV(ratio=0.4, window=4), asl.KeyDiff(ratio=0.5, window=2))),
    "kvzip": lambda: (None, asl.KVzip(ratio=0.5, chunk=64)),
    "kvgrad": lambda: (None, asl.KVgrad(ratio=0.5, chunk=64, layerwise=True)),
    "kvcompose": lambda: (None, asl.KVCompose(ratio=0.6)),
    "kvcompose(unstructured)": lambda: (None, asl.KVCompose(ratio=0.5, structured=False, keep_token_lower_bound=2)),
    "think(snapkv)": lambda: (None, asl.ThinK(asl.SnapKV(budget=30, window=4), key_channel_ratio=0.5, window=8)),
    "think": lambda: (None, asl.ThinK(key_channel_ratio=0.25, window=8)),
    "capkv": lambda: (None, asl.CapKV(budget=30, window=4, n_future_positions=16)),
    "merging(knorm)": lambda: (None, asl.Merging(asl.KNorm(budget=30, window=4), merge_fraction=0.5)),
    "expected-attention": lambda: (asl.FastKV(layer=3, select_tokens=48, window=4),
                                   asl.ExpectedAttention(budget=30, window=4, n_future_positions=16)),
    "simlayerkv": lambda: (None, asl.SimLayerKV(lazy_threshold=0.3, n_recent=16, n_initial=2)),
    "keyrerotation(knorm)": lambda: (None, asl.KeyRerotation(asl.KNorm(budget=30, window=4))),
    "decoding(knorm)": lambda: (None, asl.DecodingEviction(asl.KNorm(window=4), every=3, budget=30)),
    "perlayer(snapkv)": lambda: (None, asl.PerLayerRatio(asl.SnapKV(window=4), ratios=(0.0, 0.9) * (LAYERS // 2))),
    "dms(knorm)": lambda: (None, asl.ThresholdEviction(asl.KNorm(window=2), threshold=-1.0, sliding_window=8)),
    "dms(keydiff,decoding)": lambda: (None, asl.ThresholdEviction(asl.KeyDiff(window=2), threshold=0.0, sliding_window=8,
                                                                  decoding=True)),
    "finch": lambda: (None, asl.Finch(budget=30, window=4)),
    "squeezed": lambda: (None, asl.SqueezedAttention(clusters=20, window=8)),
    "fastkv+squeezed": lambda: (asl.FastKV(layer=3, select_tokens=48, window=4),
                                asl.SqueezedAttention(clusters=20, percentile=0.7, window=8)),
    "cur": lambda: (None, asl.CUR(budget=30, window=0, local_window_size=8)),
    "cam(snapkv)": lambda: (None, asl.CAM(asl.SnapKV(budget=30, window=4), merge_budget=4, attention_window=8)),
    "cam-decoding(knorm)": lambda: (None, asl.CAMDecoding(asl.KNorm(window=2), every=3, budget=30, merge_budget=4)),
    "leverage": lambda: (None, asl.Leverage(budget=30, window=2, sketch_dimension=6)),
    "fastkv+non-causal-attention": lambda: (asl.FastKV(layer=3, select_tokens=48, window=4),
                                            asl.NonCausalAttention(budget=30, window=0, chunk_size=16)),
    "compactor": lambda: (None, asl.Compactor(budget=30, window=0, chunk_size=16, sketch_dimension=6)),
    "criticalkv(expected-attention)": lambda: (None, asl.CriticalKV(asl.ExpectedAttention(budget=36, window=4,
                                                                                          use_vnorm=False))),
    "jaccard-stop+pyramidkv": lambda: (asl.JaccardStop(threshold=0.5, l_min=3, select_tokens=48, window=4),
                                       asl.PyramidKV(asl.SnapKV(budget=36, window=4))),
    "entropy-stop+proportional": lambda: (asl.EntropyStop(threshold=0.9, l_min=3, l_max=7, select_tokens=48, window=4),
                                          asl.Proportional(asl.TOVA(window=4), rate=0.5)),
    "fitted-stop+topp": lambda: (asl.FittedStop(weights=(4.0, 0.0, 0.0), bias=-2.0, confidence=0.5, l_min=2,
                                                select_tokens=48, window=4), asl.TopP(p=0.8, window=4)),
}


def test_every_policy_the_library_exports_is_in_the_batch_test():
    """A new policy gets the batch test (and the tests driven by POLICIES) by being listed here."""
    import inspect

    covered = set()
    for make in POLICIES.values():
        for policy in filter(None, make()):
            covered |= {type(policy), type(getattr(policy, "scorer", None))}
    exported = (getattr(asl.policies, name) for name in asl.policies.__all__)
    concrete = {c for c in exported if isinstance(c, type) and issubclass(c, (asl.EvictionPolicy, asl.SelectionPolicy))
                and not inspect.isabstract(c)}
    assert not concrete - covered, sorted(c.__name__ for c in concrete - covered)


@pytest.mark.parametrize("name", list(POLICIES))
def test_batch_equals_one_by_one(model, name):
    prompts = [prompt(s, n) for s, n in ((1, 150), (2, 25), (3, 90), (4, 41))]
    selection, eviction = POLICIES[name]()
    batch = asl.generate(model, TOK, prompts, max_new_tokens=6, selection=selection, eviction=eviction)
    for i, p in enumerate(prompts):
        alone = asl.generate(model, TOK, p, max_new_tokens=6, selection=selection, eviction=eviction)
        seq = batch.trace.sequences[i]
        assert batch.tokens[i] == alone.tokens, name
        assert seq.selection_layer == alone.trace.selection_layer
        assert seq.kept_indices == alone.trace.kept_indices
        assert seq.kv_tokens_per_head == alone.trace.kv_tokens_per_head
        assert seq.alive_tokens == alone.trace.alive_tokens
        assert seq.peak_kv_tokens == alone.trace.sequences[0].peak_kv_tokens
    assert any(s.selection_layer is not None for s in batch.trace.sequences) or selection is None


def test_decoding_continues_at_the_original_position(model):
    from asl.prefill import prefill
    from asl.generation import left_pad
    ids, valid = left_pad([TOK(prompt(9, 120))["input_ids"]], "cpu")
    pruned = prefill(model, ids, valid, 4, asl.FastKV(layer=3, select_tokens=40, window=8))
    assert pruned.next_positions.tolist() == [120] and len(pruned.kept_indices[0]) == 40
    two_pass = prefill(model, ids, valid, 4, asl.GemFilter(layer=3, select_tokens=40))
    assert two_pass.next_positions.tolist() == [40] and two_pass.restarted


def test_selection_without_pruning_matches_full_cache(model):
    text = prompt(11, 60)
    full = asl.generate(model, TOK, text, max_new_tokens=10)
    for policy in (asl.FastKV(layer=3, select_tokens=500), asl.ASL(tau=0.0, l_min=4, l_obs=3, select_tokens=40),
                   asl.GemFilter(layer=3, select_tokens=100)):
        assert asl.generate(model, TOK, text, max_new_tokens=10, selection=policy).tokens == full.tokens


@pytest.mark.parametrize("make,match", [
    (lambda: asl.SnapKV(budget=32, window=32), "window .* must be smaller than budget"),
    (lambda: asl.StreamingLLM(budget=4, sink=4), "sink"),
    (lambda: asl.ASL(select_tokens=32, window=32), "window .* must be smaller than select_tokens"),
    (lambda: asl.FastKV(layer=3, select_tokens=8, window=8), "select_tokens .* must be larger than window"),
    (lambda: asl.ASL(l_obs=1), "l_obs must be an integer >= 2"),
    (lambda: asl.ASL(l_min=4, l_obs=6), r"l_obs must be in \[2, l_min \+ 1\]"),
    (lambda: asl.ASL(tau=-0.1), "tau must be a finite number >= 0"),
    (lambda: asl.ASL(tau=float("nan")), "tau must be a finite number >= 0, got nan"),
    (lambda: asl.ASL(tau=True), "tau must be a finite number >= 0, got True"),
    (lambda: asl.FastKV(layer=3, select_tokens=None, rate=True), "rate must be in"),
    (lambda: asl.ASL(kernel=4), "kernel must be a positive odd integer"),
    (lambda: asl.SnapKV(kernel=0), "kernel must be a positive odd integer"),
    (lambda: asl.FastKV(kernel=-3), "kernel must be a positive odd integer"),
    (lambda: asl.ASL(pooling="median"), "pooling must be one of"),
    (lambda: asl.FastKV(layer=-1), "layer must be an integer >= 0"),
    (lambda: asl.FastKV(layer=3, select_tokens=None, rate=None), "exactly one of select_tokens"),
    (lambda: asl.FastKV(layer=3, select_tokens=None, rate=1.5), "rate must be in"),
    (lambda: asl.ASL(l_min=10, l_max=5), "l_max must be None or a layer index >= l_min"),
])
def test_bad_parameters_raise_on_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("selection,match", [
    (lambda: asl.ASL(l_min=12, l_obs=8), r"l_min must be a layer index in \[0, 11\]"),
    (lambda: asl.ASL(l_min=5, l_obs=3, l_max=20), r"l_max must be a layer index in \[0, 11\]"),
    (lambda: asl.FastKV(layer=12, select_tokens=40), r"layer must be a layer index in \[0, 11\]"),
    (lambda: asl.GemFilter(layer=30), r"layer must be a layer index in \[0, 11\]"),
])
def test_layer_out_of_range_raises_before_compute(model, selection, match, monkeypatch):
    monkeypatch.setattr(type(model.model.embed_tokens), "forward", lambda *a: pytest.fail("computed"))
    with pytest.raises(ValueError, match=match):
        asl.generate(model, TOK, "some prompt", max_new_tokens=1, selection=selection())


def test_snapkv_can_keep_the_first_layers_whole_as_the_asl_authors_llama_baseline(model):
    n, budget = 120, 24
    out = asl.generate(model, TOK, prompt(2, n), max_new_tokens=1,
                       eviction=asl.SnapKV(budget=budget, window=4, keep_first_layers=5))
    per_head = out.trace.kv_tokens_per_head
    assert all(heads == [n] * len(heads) for heads in per_head[:5])
    assert all(heads == [budget] * len(heads) for heads in per_head[5:])
    with pytest.raises(ValueError, match="keep_first_layers must be an integer >= 0"):
        asl.SnapKV(keep_first_layers=-1)


def test_fastkv_rate_truncates_as_fastkv_does():
    policy = asl.FastKV(layer=3, select_tokens=None, rate=0.2, window=8)
    assert [policy.tokens_for(n) for n in (100, 104, 149, 20)] == [20, 20, 29, 9]  # int(0.2 n), at least w + 1
