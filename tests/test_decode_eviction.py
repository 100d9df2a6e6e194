"""Eviction during decoding: StreamingLLM's rolling cache, PyramidInfer (prefill and decoding)
against independent re-implementations of the authors' code, and the compiled step."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import asl
from asl.policies.pyramidinfer import RecentRows, cosine_schedule
from tiny import CharTokenizer, random_text, tiny_pair

TOK = CharTokenizer()
LAYERS = 8


@pytest.fixture(scope="module")
def model():
    return tiny_pair("qwen2", num_hidden_layers=LAYERS, max_position_embeddings=512, eos_token_id=None)[1]


def prompt(seed: int, n: int) -> str:
    return random_text(random.Random(seed), n)


@dataclass
class RollingRecorder(asl.StreamingLLM):
    """StreamingLLM that records, before each step, the positions layer 0 keeps."""

    kept_positions: list = field(default_factory=list)

    def during_decode(self, layer, view):
        keep = super().during_decode(layer, view)
        if layer == 0:
            slots = keep[0, 0] if keep is not None else torch.arange(view.length)
            slots = slots[slots >= 0]
            self.kept_positions.append(sorted(p for p in view.positions[0, 0, slots].tolist() if p >= 0))
        return keep


@given(n=st.integers(10, 120), new=st.integers(2, 60), budget=st.integers(8, 80), sink=st.integers(0, 4),
       seed=st.integers(0, 999))
def test_a_rolling_cache_never_exceeds_its_budget_and_keeps_sinks_and_the_latest(model, n, new, budget, sink, seed):
    policy = RollingRecorder(budget=budget, sink=sink, positions="original")  # kept tokens by their place in the text
    out = asl.generate(model, TOK, prompt(seed, n), max_new_tokens=new, eviction=policy)
    assert max(out.trace.sequences[0].peak_kv_tokens) == min(budget, n + len(out.tokens) - 1)
    for t, kept in enumerate(policy.kept_positions):  # before step t, tokens 0 .. n + t - 1 exist
        total = n + t
        latest = list(range(max(total - (budget - 1 - sink), sink), total)) if total >= budget else list(range(total))
        expected = sorted(set(range(min(sink, total))) | set(latest)) if total >= budget else latest
        assert kept == expected, t
    after = out.trace.sequences[0].decode_kv_tokens  # the cache right after each compaction, per layer
    assert set(after) == {t for t in range(len(policy.kept_positions)) if n + t >= budget}
    assert all(sizes == [budget - 1] * LAYERS for sizes in after.values())  # room for the step's own token


def test_without_rolling_the_cache_grows_and_with_enough_budget_nothing_changes(model):
    text = prompt(1, 60)
    grown = asl.generate(model, TOK, text, max_new_tokens=30, eviction=asl.StreamingLLM(budget=40, rolling=False))
    assert max(grown.trace.sequences[0].peak_kv_tokens) == 40 + 29 and grown.trace.decode_compactions == 0
    roomy = asl.generate(model, TOK, text, max_new_tokens=30, eviction=asl.StreamingLLM(budget=200))
    assert roomy.tokens == asl.generate(model, TOK, text, max_new_tokens=30).tokens
    assert roomy.trace.decode_compactions == 0


COMPACTING = """
import json, random, sys, torch
import asl
from tiny import CharTokenizer, random_text, tiny_pair
tok = CharTokenizer()
model = tiny_pair("qwen2", num_hidden_layers=8, max_position_embeddings=512, eos_token_id=None)[1].to(torch.float64)
text = random_text(random.Random(2), 70)
run = lambda **kw: asl.generate(model, tok, text, max_new_tokens=40, eviction=asl.StreamingLLM(budget=24, sink=2), **kw)
eager, first, again = run(), run(compile=True), run(compile=True)
print(json.dumps({"same": first.tokens == again.tokens == eager.tokens, "first": first.trace.compiles,
                  "again": again.trace.compiles, "compactions": [first.trace.decode_compactions,
                                                                 again.trace.decode_compactions]}))
"""


@pytest.mark.slow  # compiles
def test_the_compiled_step_is_not_traced_again_after_a_compaction():
    """In float64, so that compiled and eager logits are never near a tie on any CPU; in a
    process of its own, as inductor's 512-bit float64 kernels for this step corrupted the heap
    (asl.generation._step_fn compiles float64 with 256-bit vectors): a crash fails this test
    alone."""
    import json
    import pathlib
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", COMPACTING], capture_output=True, text=True, timeout=600,
                          cwd=pathlib.Path(__file__).parent)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["first"] <= 1 and out["compactions"][0] > 30  # traced once, then compacted often
    assert out["same"] and out["again"] == 0 and out["compactions"][0] == out["compactions"][1]


def test_cache_positions_rerotate_the_kept_keys_to_their_place_in_the_cache(model):
    """positions="cache": the kept entries' keys equal the tokens' keys projected at positions
    0, 1, ... (layer 0's keys depend only on the token and its position)."""
    from asl.decoding import DecodeEviction
    from asl.prefill import prefill

    ids = torch.tensor([TOK(prompt(4, 40))["input_ids"]])
    valid = torch.ones_like(ids, dtype=torch.bool)
    policy = asl.StreamingLLM(budget=16, sink=4, positions="cache")
    with torch.inference_mode():
        pre = prefill(model, ids, valid, 8, eviction=policy)
        DecodeEviction(policy, pre.cache, pre, model.rope)
    layer = pre.cache.layers[0]
    kept = torch.cat([torch.arange(4), torch.arange(40 - 12, 40)])
    h = model.model.embed_tokens(ids[:, kept])
    _, k, _ = model.layers[0].project(h, *model.rope(torch.arange(16)[None], h.dtype))
    torch.testing.assert_close(layer.k[:, :, :16], k, rtol=1e-5, atol=1e-5)
    assert layer.positions[0, 0, :16].tolist() == list(range(16))


@given(n=st.integers(10, 80), new=st.integers(2, 40), budget=st.integers(8, 40), seed=st.integers(0, 999))
def test_cache_positions_stay_below_the_budget(model, n, new, budget, seed):
    policy = RollingRecorder(budget=budget, sink=2, positions="cache")
    out = asl.generate(model, TOK, prompt(seed, n), max_new_tokens=new, eviction=policy)
    for kept in policy.kept_positions:  # layer 0's kept entries before each step: numbered within the cache
        assert len(kept) <= budget and all(p < budget for p in kept), kept
    if n + new <= budget:  # nothing evicted: the positions are the original ones
        assert out.tokens == asl.generate(model, TOK, prompt(seed, n), max_new_tokens=new).tokens


def layer0_keys_at(model, ids: torch.Tensor, kept: list[int], positions: list[int]) -> torch.Tensor:
    """Layer 0's keys of the tokens `kept` projected at `positions` (they depend on nothing else)."""
    h = model.model.embed_tokens(ids[:, kept])
    return model.layers[0].project(h, *model.rope(torch.tensor([positions]), h.dtype))[1]


def test_key_rerotation_turns_the_kept_keys_to_their_rank_and_the_question_follows_them(model):
    context, question = prompt(8, 60), prompt(9, 6)
    scorer = asl.KNorm(budget=20, window=4)
    turned = asl.compress(model, TOK, context, eviction=asl.KeyRerotation(scorer))
    plain = asl.compress(model, TOK, context, eviction=scorer)
    assert (turned.next_position, plain.next_position) == (20, 60)  # kvpress: the cache's length, the context's
    ids = torch.tensor([TOK(context)["input_ids"]])
    for g in range(plain.layers[0].k.shape[0]):  # which tokens each head kept: where its keys match
        kept = [j for j in range(60) if any(torch.allclose(plain.layers[0].k[g, i], layer0_keys_at(
            model, ids, [j], [j])[0, g, 0], atol=1e-5) for i in range(20))]
        assert len(kept) == 20
        torch.testing.assert_close(turned.layers[0].k[g], layer0_keys_at(model, ids, kept, list(range(20)))[0, g],
                                   rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(turned.layers[3].v, plain.layers[3].v)  # values are not turned
    out = asl.generate(model, TOK, question, cache=turned, max_new_tokens=5)
    assert len(out.tokens) == 5
    whole = asl.compress(model, TOK, context, eviction=asl.KeyRerotation(asl.KNorm(budget=100, window=4)))
    same = asl.generate(model, TOK, question, cache=whole, max_new_tokens=5)  # nothing evicted: nothing turned
    assert whole.next_position == 60 and same.tokens == asl.generate(model, TOK, context + question,
                                                                    max_new_tokens=5).tokens


def test_key_rerotation_while_generating_numbers_new_tokens_after_the_kept(model):
    from asl.decoding import DecodeEviction
    from asl.prefill import prefill

    ids = torch.tensor([TOK(prompt(10, 50))["input_ids"]])
    policy = asl.KeyRerotation(asl.KNorm(budget=16, window=6))
    with torch.inference_mode():
        pre = prefill(model, ids, torch.ones_like(ids, dtype=torch.bool), 8, eviction=policy)
        evicting = DecodeEviction(policy, pre.cache, pre, model.rope)
        _, positions = evicting.before_step(0, pre.next_positions)
    assert positions.tolist() == [16] and pre.cache.layers[0].positions[0, 0, :16].tolist() == list(range(16))
    out = asl.generate(model, TOK, prompt(10, 50), max_new_tokens=6, eviction=policy)
    assert out.trace.kv_tokens == [16] * LAYERS
    with pytest.raises(ValueError, match="KeyRerotation numbers positions within the cache"):
        asl.generate(model, TOK, prompt(10, 90), max_new_tokens=2,
                     selection=asl.FastKV(layer=2, select_tokens=30, window=4), eviction=asl.KeyRerotation(
                         asl.KNorm(budget=40, window=4)))


def test_cache_positions_need_a_rolling_cache():
    with pytest.raises(ValueError, match='positions must be "original", "cache" or None'):
        asl.StreamingLLM(positions="text")
    with pytest.raises(ValueError, match="it needs rolling=True"):
        asl.StreamingLLM(positions="cache", rolling=False)


def test_the_default_is_the_originals_cache_positions_when_rolling(model):
    """streaming-llm numbers positions within the cache; kvpress (rolling=False) keeps the text's."""
    assert asl.StreamingLLM().cache_positions and not asl.StreamingLLM(rolling=False).cache_positions
    assert not asl.StreamingLLM(positions="original").cache_positions
    kept = {}
    for positions in (None, "original"):
        policy = RollingRecorder(budget=24, sink=2, positions=positions)
        asl.generate(model, TOK, prompt(6, 60), max_new_tokens=20, eviction=policy)
        kept[positions] = policy.kept_positions
    assert all(max(p) < 24 for p in kept[None]) and max(kept["original"][-1]) > 60  # in the cache vs the text


def test_cache_positions_after_a_selection_that_leaves_layers_uneven_is_refused(model):
    """One position per new token for every layer: the layers must hold as many entries."""
    text = prompt(7, 90)
    with pytest.raises(ValueError, match='numbers positions within the cache.*hold \\[40, 40, 40, 30, 30'):
        asl.generate(model, TOK, text, max_new_tokens=4, selection=asl.FastKV(layer=2, select_tokens=30, window=4),
                     eviction=asl.StreamingLLM(budget=40))
    fits = asl.generate(model, TOK, text, max_new_tokens=4, selection=asl.FastKV(layer=2, select_tokens=30, window=4),
                        eviction=asl.StreamingLLM(budget=24))  # every layer holds 24
    assert fits.trace.kv_tokens == [24] * LAYERS
    asl.generate(model, TOK, text, max_new_tokens=4, selection=asl.FastKV(layer=2, select_tokens=30, window=4),
                 eviction=asl.StreamingLLM(budget=40, positions="original"))


@dataclass
class Unsorted(asl.EvictionPolicy):
    every = 1

    def keep(self, layer, view):
        return None

    def during_decode(self, layer, view):
        return torch.arange(view.length - 1, -1, -1).expand(view.valid.shape[0], view.valid.shape[1], -1)


def test_a_bad_decode_keep_fails_naming_the_policy_and_layer(model):
    with pytest.raises(ValueError, match="Unsorted.during_decode at layer 0: keep must be, per KV head, increasing"):
        asl.generate(model, TOK, prompt(3, 30), max_new_tokens=3, eviction=Unsorted())


# ---- PyramidInfer: the authors' code re-implemented independently (modeling_qwen2_pyramidinfer.py)

def authors_prefill(model, ids: list[int], r: float, min_context: int = 64, sink: int = 4):
    """The original's prefill loop: eager attention (repeat_kv, explicit softmax), the recent
    rows of the head-averaged weights, pruned hidden states. Returns the kept prompt indices
    after every layer and each layer's cache length."""
    n = len(ids)
    recent_length = int(n * 0.2)
    min_context = min(min_context, n - 1 - recent_length)
    positions = torch.arange(n)[None]
    h = model.model.embed_tokens(torch.tensor([ids]))
    kept_after, cache_lengths = [], []
    for idx, layer in enumerate(model.layers):
        cos, sin = model.rope(positions, h.dtype)
        q, k, v = layer.project(h, cos, sin)
        groups = q.shape[1] // k.shape[1]
        k_all, v_all = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
        m = q.shape[2]
        scores = (q @ k_all.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(~torch.ones(m, m, dtype=torch.bool).tril(), float("-inf"))
        weights = scores.softmax(-1, dtype=torch.float32)
        attn = (weights @ v_all.float()).transpose(1, 2).reshape(1, m, -1)
        h = layer.finish(h, attn.to(h.dtype))
        cache_lengths.append(m)
        ratio = (1.0 - r) * (math.cos(math.pi * idx / len(model.layers)) + 1) / 2 + r
        attn_weights = weights.mean(dim=1)
        recent2context = attn_weights[:, -(1 + recent_length):, :-(1 + recent_length)].clone()
        recent2context *= torch.linspace(1.0, 1.2, recent2context.shape[1])[None, :, None]
        recent2context = recent2context.mean(dim=-2)
        recent2context[:, :sink] = torch.finfo(recent2context.dtype).max
        context_length = recent2context.shape[-1]
        if idx < len(model.layers) - 1 and context_length > min_context and ratio < 1.0:
            topk = int(context_length * ratio) if int(context_length * ratio) > min_context else context_length
            chosen = torch.sort(recent2context, descending=True, stable=True).indices[:, :topk].sort(-1).values
            keep = torch.cat([chosen, torch.arange(context_length, m)[None]], dim=-1)
            positions = positions.gather(1, keep)
            h = h.gather(1, keep[..., None].expand(-1, -1, h.shape[-1]))
        kept_after.append(positions[0].tolist())
    return kept_after, cache_lengths


@given(n=st.integers(40, 220), r=st.sampled_from([0.5, 0.8, 0.9]), min_context=st.sampled_from([4, 16, 64]),
       seed=st.integers(0, 999))
def test_pyramidinfer_prefill_equals_the_authors_loop(model, n, r, min_context, seed):
    text = prompt(seed, n)
    policy = asl.PyramidInfer(r=r, min_context=min_context)
    out = asl.generate(model, TOK, text, max_new_tokens=1, selection=policy)
    kept_after, lengths = authors_prefill(model, TOK(text)["input_ids"], r, min_context)
    assert out.trace.alive_tokens == lengths
    assert out.trace.kv_tokens == lengths  # every layer caches the tokens it ran on
    assert out.trace.kept_indices == kept_after[-1]


def test_pyramidinfer_keeps_the_formula_count_per_layer(model):
    n, r = 300, 0.5
    policy = asl.PyramidInfer(r=r, min_context=8)
    out = asl.generate(model, TOK, prompt(4, n), max_new_tokens=1, selection=policy)
    recent = int(0.2 * n) + 1
    alive = [n]
    for layer in range(LAYERS - 1):
        ratio = r + (1 - r) * (math.cos(math.pi * layer / LAYERS) + 1) / 2
        context = alive[-1] - recent
        alive.append(alive[-1] if int(context * ratio) <= min(8, n - recent) or ratio >= 1 else
                     int(context * ratio) + recent)
    assert out.trace.alive_tokens == alive


def authors_decode_lengths(prefill_lengths: list[int], n: int, steps: int, gen_decay=0.1, exceed=16) -> list[list[int]]:
    """The original's generation stage, lengths only: per step (after it), each layer's cache
    length. recent_length is recomputed at each forward from layer 0's length (its line 1006);
    a span shorter than `exceed` before the window keeps its own share (lines 1104-1109)."""
    past = list(prefill_lengths)
    length = list(prefill_lengths)
    out = []
    for t in range(steps):
        recent_length = int((1 + length[0]) * 0.2)  # seq_length_with_past, before this step's token
        seen = n + t + 1  # the cache's seen_tokens counts the model's tokens, not the layer's
        for idx in range(len(length)):
            length[idx] += 1
            g = (1.0 - gen_decay) * (math.cos(math.pi * idx / len(length)) + 1) / 2 + gen_decay
            if seen - recent_length - past[idx] >= exceed:
                span = min(exceed, length[idx] - 1 - recent_length)
                topk = max(int(span * 0.9 * g), 1)
                length[idx] -= span - topk
                past[idx] = length[idx] - recent_length
        out.append(list(length))
    return out


def test_pyramidinfer_decoding_compresses_when_and_as_much_as_the_original(model):
    """The original compresses right after a step; we compress before the next one (the same
    decision on the same cache), so after our step t a layer holds the original's length after
    step t - 1, plus the token step t wrote."""
    n, new = 200, 30
    out = asl.generate(model, TOK, prompt(5, n), max_new_tokens=new, selection=asl.PyramidInfer(r=0.5, min_context=8),
                       eviction=asl.PyramidInferDecode())
    steps = len(out.tokens) - 1  # decode steps (the first token comes from the prefill)
    prefill = out.trace.kv_tokens
    lengths = authors_decode_lengths(prefill, n, steps)
    expected = [max([prefill[i] + 1] + [lengths[t][i] + 1 for t in range(steps - 1)]) for i in range(LAYERS)]
    assert out.trace.sequences[0].peak_kv_tokens == expected
    assert lengths[0][0] == prefill[0] + 1 and lengths[-1][-1] < prefill[-1] + steps  # deep layers compress
    assert out.trace.decode_compactions > 0


@dataclass
class RecomputingDecode(asl.PyramidInferDecode):
    """PyramidInfer's decoding that ignores the rows its prefill hands over (computes them all)."""

    def begin(self, prefill):
        super().begin(prefill)
        self._from_prefill = RecentRows()  # its own, empty: the prefill's rows never reach it


@pytest.mark.parametrize("n,r", [(200, 0.5), (150, 0.9)])
def test_pyramidinfer_decoding_reuses_the_prefills_rows_exactly(model, n, r):
    """The rows the prefill hands to the decoding are the ones the decoding would compute
    (same answer, same rows after the last compaction), and are used on every layer the
    prefill scored, so the first step does not score the prompt again."""
    runs = {}
    for name, decode in (("reused", asl.PyramidInferDecode()), ("recomputed", RecomputingDecode())):
        calls = []  # generate runs a per-call copy of the policy: its state is read from that copy
        decode.per_call = lambda made=decode.per_call: calls.append(made()) or calls[-1]
        out = asl.generate(model, TOK, prompt(7, n), max_new_tokens=40,
                           selection=asl.PyramidInfer(r=r, min_context=8), eviction=decode)
        runs[name] = (out, calls[-1])
    (a, reused), (b, recomputed) = runs["reused"], runs["recomputed"]
    assert a.tokens == b.tokens and a.trace.sequences[0].peak_kv_tokens == b.trace.sequences[0].peak_kv_tokens
    assert a.trace.decode_compactions == b.trace.decode_compactions > 0
    scored = sum(1 for alive, nxt in zip(a.trace.kv_tokens, a.trace.kv_tokens[1:]) if nxt < alive)
    assert reused.rows_reused == scored > 0 and recomputed.rows_reused == 0
    for layer in range(LAYERS):
        torch.testing.assert_close(reused._ordered_rows(layer), recomputed._ordered_rows(layer), rtol=1e-5, atol=1e-6)


@dataclass
class WatchedDecode(asl.PyramidInferDecode):
    """PyramidInfer's decoding, replayed beside a transcription of the original's generation
    stage on the last layer: the same new attention row each step, the original's in-place
    `recent2context_attn_weights *= linspace(...)` on its stored rows, its topk, its gather."""

    replay: dict = field(default_factory=dict)

    def during_decode(self, layer, view):
        keep = super().during_decode(layer, view)
        if layer == LAYERS - 1:
            self._original_step(view, keep)
        return keep

    def _original_step(self, view, keep) -> None:
        rows = self._fresh  # this step's rows as the policy read them, before it compressed
        r = self.replay
        r["rows"] = rows.clone() if "rows" not in r else torch.cat([r["rows"][1:], rows[-1:]])  # the newest row in
        if keep is None:
            return
        slots = view.valid[0, 0, : view.length].nonzero().flatten()
        recent = self._windows[0]  # the step's window: int((layer 0's entries) * recent_ratio) + 1
        span = slots[max(len(slots) - recent - self.exceed, 0): len(slots) - recent]  # the original's slice, clamped
        kept = max(int(len(span) * self.gen_compress * cosine_schedule(self.gen_decay, LAYERS - 1, LAYERS)), 1)
        recent2context = r["rows"][-recent:][:, span]
        recent2context *= torch.linspace(1.0, self.distance_weight, recent)[:, None]
        r["rows"][-recent:, span] = recent2context  # the original's view: the stored rows are scaled
        top = torch.sort(recent2context.mean(0), descending=True, stable=True).indices[:kept]
        expected = sorted(set(slots.tolist()) - set(span.tolist()) | set(span[top].tolist()))
        got = [s for s in keep[0, 0].tolist() if s >= 0]
        r.setdefault("agree", []).append(got == expected)
        gathered = r["rows"][:, torch.tensor(expected)]
        r["rows"] = torch.zeros_like(r["rows"])
        r["rows"][:, : len(expected)] = gathered

    def _update_rows(self, layer, view):
        super()._update_rows(layer, view)
        if layer == LAYERS - 1:
            self._fresh = self._ordered_rows(layer)[0].clone()


@pytest.mark.parametrize("accumulate", [True, False])
def test_pyramidinfer_decoding_weights_its_stored_rows_in_place_as_the_original(model, accumulate):
    """20 and more compressions of the last layer against the original's generation stage: the
    in-place weighting (the default) agrees at every one; fresh weights do not."""
    policy = WatchedDecode(accumulate_weights=accumulate)
    calls = []
    policy.per_call = lambda made=policy.per_call: calls.append(made()) or calls[-1]
    asl.generate(model, TOK, prompt(9, 120), max_new_tokens=200, eviction=policy)
    agree = calls[-1].replay["agree"]
    assert len(agree) >= 20
    if accumulate:
        assert all(agree)
    else:
        assert not all(agree)  # fresh weights keep other entries at some compressions


def test_pyramidinfer_prunes_only_at_its_downsample_interval(model):
    """The original's layerwise_downsample_interval: context tokens are pruned after layer idx
    only where idx % interval == 0; the layers between run on what the last pruning left."""
    every = asl.generate(model, TOK, prompt(6, 300), max_new_tokens=1, selection=asl.PyramidInfer(r=0.5, min_context=8))
    second = asl.generate(model, TOK, prompt(6, 300), max_new_tokens=1,
                          selection=asl.PyramidInfer(r=0.5, min_context=8, interval=2))
    alive = second.trace.alive_tokens  # alive[l] is what layer l ran on: pruned after l - 1
    assert all(alive[layer] == alive[layer - 1] for layer in range(2, LAYERS, 2))  # nothing after odd layers
    assert any(alive[layer] < alive[layer - 1] for layer in range(1, LAYERS, 2))  # pruned after even ones
    assert any(a > b for a, b in zip(alive, every.trace.alive_tokens))  # fewer prunings, more tokens alive
    with pytest.raises(ValueError, match="interval must be an integer >= 1"):
        asl.PyramidInfer(interval=0)


@dataclass
class DecodingRecorder(asl.DecodingEviction):
    """Records, at layer 1, each compaction's cache (slots in use, keys) and the slots it kept."""

    seen: list = field(default_factory=list)

    def during_decode(self, layer, view):
        keep = super().during_decode(layer, view)
        if layer == 1 and keep is not None:
            self.seen.append((view.step, view.valid[0, :, : view.length].clone(), view.keys[0, :, : view.length].clone(),
                              keep[0].clone()))
        return keep


def test_decoding_eviction_cuts_each_layer_back_to_the_scorers_best_every_few_steps(model):
    policy = DecodingRecorder(asl.KNorm(window=3), every=4, budget=12)
    out = asl.generate(model, TOK, prompt(11, 20), max_new_tokens=14, eviction=policy)  # steps 0 .. 12
    assert out.trace.kv_tokens == [20] * LAYERS  # the prefill keeps everything (kvpress's DecodingPress)
    assert [step for step, *_ in policy.seen] == [4, 8, 12]  # every 4 generated tokens
    for step, valid, keys, keep in policy.seen:
        for g in range(keys.shape[0]):
            slots = valid[g].nonzero().flatten().tolist()
            assert len(slots) == (20 + 4 if step == 4 else 12 + 4)  # what the cache held: 12 kept + 4 new
            prefix, window = slots[:-3], slots[-3:]  # the 3 latest entries always stay
            norms = {s: float(keys[g, s].double().norm()) for s in prefix}
            best = sorted(prefix, key=lambda s: norms[s])[:9]  # K-norm: the lowest-norm keys
            assert sorted(c for c in keep[g].tolist() if c >= 0) == sorted(best + window)
    assert out.trace.sequences[0].peak_kv_tokens == [20 + 4] * LAYERS  # the prompt and 4 tokens, before the first cut


@given(n=st.integers(8, 60), new=st.integers(2, 30), every=st.integers(1, 6), budget=st.integers(5, 30),
       seed=st.integers(0, 999))
def test_decoding_eviction_never_holds_more_than_budget_plus_every(model, n, new, every, budget, seed):
    policy = asl.DecodingEviction(asl.TOVA(budget=budget, window=2), every=every, budget=budget, prefill=True)
    out = asl.generate(model, TOK, prompt(seed, n), max_new_tokens=new, eviction=policy)
    trace = out.trace.sequences[0]
    assert max(trace.kv_tokens) == min(n, budget)  # the prefill at the scorer's own budget
    assert all(max(sizes) <= budget for sizes in trace.decode_kv_tokens.values())  # each cut: back to budget
    assert max(trace.peak_kv_tokens) <= min(n, budget) + every  # at most `every` tokens between two cuts


def test_decoding_eviction_with_a_ratio_keeps_a_share_of_the_tokens_seen(model):
    """kvpress's CompressionRatioDecodingPress: each cut keeps max(1, int(seen * (1 - ratio))) of a
    sequence that has seen `seen` tokens, the prompt's and those generated before the cut."""
    policy = DecodingRecorder(asl.KNorm(window=3), every=4, ratio=0.5)
    out = asl.generate(model, TOK, prompt(11, 20), max_new_tokens=14, eviction=policy)  # steps 0 .. 12
    assert [step for step, *_ in policy.seen] == [4, 8, 12]
    for step, valid, keys, keep in policy.seen:
        assert [len([c for c in row.tolist() if c >= 0]) for row in keep] == [int((20 + step) * 0.5)] * keep.shape[0]
    assert sorted(out.trace.sequences[0].decode_kv_tokens) == [4, 8, 12]
    with pytest.raises(ValueError, match="ratio must be None or a number in"):
        asl.DecodingEviction(asl.KNorm(), ratio=1.0)


def test_decoding_eviction_refuses_what_it_cannot_run():
    with pytest.raises(ValueError, match="cannot run ObservedAttention over a decoding cache"):
        asl.DecodingEviction(asl.ObservedAttention())
    with pytest.raises(ValueError, match="cannot run CriticalKV"):
        asl.DecodingEviction(asl.CriticalKV(asl.KNorm()))
    with pytest.raises(ValueError, match=r"budget \(8\) must be larger than the scorer's window \(8\)"):
        asl.DecodingEviction(asl.KNorm(window=8), budget=8)
    with pytest.raises(ValueError, match="every must be an integer >= 1"):
        asl.DecodingEviction(asl.KNorm(), every=0)


def test_decoding_eviction_runs_while_questions_on_a_compressed_context_are_answered(model):
    """kvpress's pipeline with a DecodingPress: the context compressed once, each answer's cache
    cut back while it is generated; the compressed entries stay as they were for the next one."""
    context = prompt(12, 40)
    compressed = asl.compress(model, TOK, context, eviction=asl.KeyRerotation(asl.KNorm(budget=24, window=4)))
    policy = DecodingRecorder(asl.KNorm(window=3), every=5, budget=20)
    first = asl.generate(model, TOK, prompt(13, 6), cache=compressed, max_new_tokens=17, eviction=policy)
    assert [step for step, *_ in policy.seen] == [5, 10, 15] and first.trace.decode_compactions == 3 * LAYERS
    assert first.trace.sequences[0].peak_kv_tokens == [24 + 6 + 5] * LAYERS  # context, question, 5 answer tokens
    assert all(sizes == [20] * LAYERS for sizes in first.trace.sequences[0].decode_kv_tokens.values())
    plain = asl.generate(model, TOK, prompt(13, 6), cache=compressed, max_new_tokens=17)
    assert plain.tokens[:6] == first.tokens[:6]  # the same until the first cut is read
    assert [layer.valid.sum(-1).tolist() for layer in compressed.layers] == [[24] * 2] * LAYERS  # untouched
    rolled = asl.generate(model, TOK, prompt(13, 6), cache=compressed, max_new_tokens=12,
                          eviction=asl.StreamingLLM(budget=26, positions="original"))
    trace = rolled.trace.sequences[0]  # rolling from the first step: 24 + 6 entries cut to 25, then one written
    assert trace.peak_kv_tokens == [30] * LAYERS and set(map(tuple, trace.decode_kv_tokens.values())) == {(25,) * LAYERS}
    with pytest.raises(ValueError, match="takes only an eviction that acts while the answer is generated"):
        asl.generate(model, TOK, "question", cache=compressed, eviction=asl.KNorm(budget=8, window=2))
    with pytest.raises(ValueError, match="runs DecodingEviction and StreamingLLM while answering; PyramidInferDecode"):
        asl.generate(model, TOK, "question", cache=compressed, eviction=asl.PyramidInferDecode())


def test_key_rerotation_turns_only_the_rotary_part_of_a_partial_rotary_head():
    """Phi-4-mini style: 12 of 16 dims turn; re-rotated keys equal the keys projected at the new
    positions, their 4 passing dims untouched."""
    phi = tiny_pair("phi3", "partial", num_hidden_layers=2, eos_token_id=None)[1]
    assert phi.config.rotary_dim == 12
    context = prompt(14, 40)
    turned = asl.compress(phi, TOK, context, eviction=asl.KeyRerotation(asl.KNorm(budget=12, window=3)))
    plain = asl.compress(phi, TOK, context, eviction=asl.KNorm(budget=12, window=3))
    ids = torch.tensor([TOK(context)["input_ids"]])
    for g in range(plain.layers[0].k.shape[0]):
        kept = [j for j in range(40) if any(torch.allclose(plain.layers[0].k[g, i], layer0_keys_at(
            phi, ids, [j], [j])[0, g, 0], atol=1e-5) for i in range(12))]
        torch.testing.assert_close(turned.layers[0].k[g], layer0_keys_at(phi, ids, kept, list(range(12)))[0, g],
                                   rtol=1e-5, atol=1e-5)
    assert torch.equal(turned.layers[0].k[..., 12:], plain.layers[0].k[..., 12:])


@dataclass
class ThresholdRecorder(asl.ThresholdEviction):
    """DMS with decoding=True that records, before each step, the positions layer 0 keeps per KV head."""

    kept_positions: list = field(default_factory=list)

    def during_decode(self, layer, view):
        keep = super().during_decode(layer, view)
        if layer == 0 and view.step > 0:
            heads = []
            for g in range(view.keys.shape[1]):
                slots = keep[0, g] if keep is not None else torch.arange(view.length)
                slots = slots[slots >= 0]
                heads.append(sorted(p for p in view.positions[0, g, slots].tolist() if p >= 0))
            self.kept_positions.append(heads)
        return keep


def test_dms_decoding_evicts_each_token_that_leaves_the_window_below_the_threshold(model):  # noqa: F811
    """Layer 0's key norm is a function of the token alone (RoPE turns it, the norm stays), so
    which entries KNorm's threshold drops is computed here from the token ids: a prompt token
    older than the window at the prefill, then, before step t, the token at position
    n - 1 + t - s (prompt or generated) as it leaves the window of s; the scorer's own window never."""
    n, s, window, new = 40, 6, 2, 24
    vocab = torch.arange(model.config.vocab_size)[None]
    with torch.no_grad():
        h, rope = model.embed(vocab, torch.zeros_like(vocab))
        norms = model.layers[0].project(h, *rope)[1][0].double().norm(dim=-1)  # [G, V]
    middle = norms.flatten().sort().values[norms.numel() // 3: 2 * norms.numel() // 3].tolist()
    cut = max((b - a, (a + b) / 2) for a, b in zip(middle, middle[1:]))[1]  # in the widest gap: no token near it
    policy = ThresholdRecorder(asl.KNorm(window=window), threshold=-cut, sliding_window=s, decoding=True)
    text = prompt(21, n)
    out = asl.generate(model, TOK, text, max_new_tokens=new, eviction=policy)
    ids = TOK(text)["input_ids"] + out.tokens
    n = len(TOK(text)["input_ids"])
    assert len(policy.kept_positions) == len(out.tokens) - 2 and len(out.tokens) > s + 2  # before steps 1 ..
    dropped = {"prompt": 0, "generated": 0}
    for g in range(norms.shape[0]):
        high = [float(norms[g, i]) > cut for i in ids]  # scores below the threshold
        kept = {j for j in range(n) if not high[j] or j >= n - max(s, window)}  # the prefill's choice
        for t, heads in enumerate(policy.kept_positions, start=1):
            kept.add(n - 1 + t)  # the token step t - 1 wrote
            leaving = n - 1 + t - s
            if 0 <= leaving and high[leaving] and leaving < n - window or leaving >= n and high[leaving]:
                kept.discard(leaving)
                dropped["prompt" if leaving < n else "generated"] += 1
            assert heads[g] == sorted(kept), (g, t)
    assert dropped["prompt"] > 0 and dropped["generated"] > 0, dropped  # both kinds were judged while decoding
    assert out.trace.decode_compactions > 0


def test_dms_decoding_refuses_a_scorer_that_cannot_score_a_token_alone():
    with pytest.raises(ValueError, match="scores each new token alone, with its scorer's window 0, which SnapKV"):
        asl.ThresholdEviction(asl.SnapKV(budget=64, window=4), decoding=True)
    with pytest.raises(ValueError, match="cannot score a new token with ExpectedAttention"):
        asl.ThresholdEviction(asl.ExpectedAttention(), decoding=True)
    with pytest.raises(ValueError, match="decoding must be True or False"):
        asl.ThresholdEviction(asl.KNorm(), decoding=1)


@dataclass
class LargeKeys(asl.KNorm):
    """K-norm reversed (the largest keys kept), so the entries evicted get little attention and
    the merge probabilities fall between 0 and 1."""

    def score(self, view):
        return -super().score(view)


@dataclass
class CamRecorder(asl.CAMDecoding):
    """CAMDecoding that records layer 1's first cut: the cache it saw, what it kept, the values it wrote
    (layer 1: at layer 0 a key's norm is its token's alone, so repeated tokens tie)."""

    seen: dict = field(default_factory=dict)

    def during_decode(self, layer, view):
        keep = super().during_decode(layer, view)
        if layer == 1 and keep is not None and "keep" not in self.seen:
            self.seen.update(keys=view.keys[:, :, :view.length].clone(), values=view.values[:, :, :view.length].clone(),
                             queries=view.queries.clone(), query_positions=view.query_positions.clone(),
                             positions=view.positions[:, :, :view.length].clone(), keep=keep.clone())
        return keep

    def merge_during_decode(self, layer, view, keep):
        merged = super().merge_during_decode(layer, view, keep)
        if layer == 1 and "merged" not in self.seen:
            self.seen["merged"] = merged.clone()
        return merged


def test_cam_decoding_merges_as_kvpress_campress_computes_it(model, monkeypatch):  # noqa: F811
    """Layer 1's first cut (after `every` tokens), recomputed from kvpress's CAMPress.compress in
    float64: the kept entries (K-norm averaged over the KV heads), the merged ones (the best
    `every` of the evicted), their targets (the `merge_budget` kept entries after each), the
    probabilities (attention received from the generated tokens, over its targets' mean), and
    the values written, with the policy's own Bernoulli draws (recorded)."""
    n, every, budget, reach = 60, 6, 40, 3
    draws = []
    real = torch.bernoulli
    monkeypatch.setattr(torch, "bernoulli", lambda p, **kw: (draws.append((p.clone(), real(p, **kw))), draws[-1][1])[1])
    policy = CamRecorder(LargeKeys(window=0), every=every, budget=budget, merge_budget=reach, seed=3)
    out = asl.generate(model, TOK, prompt(31, n), max_new_tokens=every + 2, eviction=policy)
    assert out.trace.decode_compactions > 0
    s = policy.seen
    keys, values = s["keys"][0].double(), s["values"][0].double()  # [G, m, d]
    g, m, d = keys.shape
    heads = model.config.num_heads
    score = keys.norm(dim=-1).mean(0)  # [m] the keys' norm, averaged over the KV heads
    ranked = sorted(range(m), key=lambda j: (-float(score[j]), j))
    assert float(score[ranked[budget - 1]] - score[ranked[budget]]) > 1e-5  # no near-tie at the cut
    kept, evicted = sorted(ranked[:budget]), sorted(ranked[budget:])
    assert s["keep"][0].tolist() == [kept] * g
    by_score = sorted(evicted, key=lambda j: (-float(score[j]), -j))[:every]
    merging = sorted(by_score)
    # attention each entry received from the `every` generated tokens so far, per KV head
    q = s["queries"][0, :, -every:].double()  # [H, every, d]
    qpos, pos = s["query_positions"][0, -every:], s["positions"][0, 0]
    received = torch.zeros(g, m, dtype=torch.float64)
    for h in range(heads):
        logits = q[h] @ keys[h // (heads // g)].T / math.sqrt(d)  # [every, m]
        logits = logits.masked_fill(pos[None, :] > qpos[:, None], float("-inf"))
        received[h // (heads // g)] += torch.softmax(logits, -1).sum(0) / (heads // g)
    expected = values.clone()
    p, drawn = draws[1]  # one draw per layer, in order
    for c, j in enumerate(merging):
        after = [x for x in kept if x > j][:reach]
        if not after:
            continue
        prob = (received[:, j] / received[:, after].mean(-1)).clamp(0, 1)
        torch.testing.assert_close(p[:, c].double(), prob, rtol=1e-4, atol=1e-6)
        for head in range(g):
            expected[head, after] += values[head, j] * float(drawn[head, c]) / len(after)
    assert drawn.sum() > 0 and bool((p < 0.999).any())  # merged, and some by a real draw
    torch.testing.assert_close(s["merged"][0].double(), expected[:, kept], rtol=1e-5, atol=1e-6)
