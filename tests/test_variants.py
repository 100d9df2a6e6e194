"""The originals' variants one argument away: SnapKV per query head, the ASL authors' top-p KV,
GemFilter's own layers per model family."""
from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import asl
from asl import ops, reference
from asl.policies.topp import window_attention as topp_attention
from asl.bench.methods import gemfilter_layer
from near_ties import assert_scores_close
from tiny import CharTokenizer, random_text, tiny_pair
from test_policies import Recorder

TOK = CharTokenizer()
LAYERS = 6


@pytest.fixture(scope="module")
def model():  # 4 query heads over 2 KV heads
    return tiny_pair("llama", num_hidden_layers=LAYERS, max_position_embeddings=512, eos_token_id=None)[1]


def prompt(seed: int, n: int) -> str:
    return random_text(random.Random(seed), n)


@given(n=st.integers(20, 150), budget=st.integers(10, 90), window=st.integers(1, 8), seed=st.integers(0, 999),
       pooling=st.sampled_from(["avg", "max"]))
def test_snapkv_per_query_head_keeps_each_heads_own_reference_entries(model, n, budget, window, seed, pooling):
    if window >= budget:
        return
    policy = asl.SnapKV(budget=budget, window=window, kernel=5, pooling=pooling, per="query_head")
    rec = Recorder(inner=policy)
    out = asl.generate(model, TOK, prompt(seed, n), max_new_tokens=3, eviction=rec)
    heads = model.config.num_heads
    for s, per_head in zip(rec.seen, out.trace.kv_tokens_per_head):
        assert len(per_head) == heads and max(per_head) == min(budget, n)  # the cache holds H heads
        keys = s["k"].repeat_interleave(heads // s["k"].shape[1], dim=1)  # SnapKV's repeat_kv, then per head
        scores = ops.window_scores(s["q"], keys, s["valid"], window, 5, pooling)[0]  # [H, n - w]: its own numbers
        assert_scores_close(scores, reference.window_scores(s["q"], keys, s["valid"], window, 5, pooling)[0])
        for h in range(heads):
            expected = reference.snapkv_keep(scores[h], n, budget, window)
            expected = list(range(n)) if expected is None else expected.tolist()
            assert s["keep"][0, h][s["keep"][0, h] >= 0].tolist() == expected


@pytest.mark.slow  # compiles or runs the real model
def test_a_per_query_head_cache_decodes_batches_and_compresses(model):
    policy = lambda: asl.SnapKV(budget=24, window=4, per="query_head")  # noqa: E731
    texts = [prompt(1, 90), prompt(2, 20)]
    batch = asl.generate(model, TOK, texts, max_new_tokens=8, eviction=policy())
    alone = [asl.generate(model, TOK, t, max_new_tokens=8, eviction=policy()) for t in texts]
    assert batch.tokens == [a.tokens for a in alone]
    kv_head = asl.generate(model, TOK, texts[0], max_new_tokens=8, eviction=asl.SnapKV(budget=24, window=4))
    assert alone[0].trace.kv_bytes == 2 * kv_head.trace.kv_bytes  # H/G = 2 times the entries
    compiled = asl.generate(model, TOK, texts[0], max_new_tokens=8, eviction=policy(), compile=True)
    assert compiled.tokens == alone[0].tokens
    compressed = asl.compress(model, TOK, texts[0], eviction=policy())
    assert len(asl.generate(model, TOK, "question", cache=compressed, max_new_tokens=4).tokens) == 4


def authors_top_p(probs: torch.Tensor, top_p: float, q_len: int, window: int) -> list[list[int]]:
    """get_top_p_indices (baseline/asl/adaptive_select_layer_utils.py) and the union with token 0
    and the window (customized_cache.py), per KV head: probs [G, n]."""
    sorted_probs, sorted_idx = torch.sort(probs, descending=True, dim=1, stable=True)
    cumprobs = torch.cumsum(sorted_probs, dim=1)
    mask = cumprobs >= top_p
    raw_k = torch.where(mask.any(dim=1), mask.float().argmax(dim=1) + 1, torch.full_like(mask[:, 0], q_len,
                                                                                          dtype=torch.long))
    k = (raw_k // 8) * 8
    out = []
    for head in range(probs.shape[0]):
        chosen = sorted_idx[head, : int(k[head])]
        union = torch.cat([torch.zeros(1, dtype=torch.long), chosen, torch.arange(q_len - window, q_len)]).unique()
        out.append(union.tolist())
    return out


@given(n=st.integers(20, 150), p=st.sampled_from([0.3, 0.6, 0.9, 0.99]), window=st.integers(1, 16),
       seed=st.integers(0, 999))
def test_topp_keeps_what_the_authors_code_keeps(model, n, p, window, seed):
    rec = Recorder(inner=asl.TopP(p=p, window=min(window, n - 1)))
    asl.generate(model, TOK, prompt(seed, n), max_new_tokens=1, eviction=rec)
    w = min(window, n - 1)
    for s in rec.seen:
        groups = s["q"].shape[1] // s["k"].shape[1]
        attn = reference.window_attention(s["q"], s["k"], s["valid"], w)[0]  # [H, w, n]
        attn_cache = attn.view(-1, groups, w, n).mean(dim=(1, 2))  # the group's heads and the window's rows
        own = topp_attention(s["q"], s["k"], s["valid"], w)[0]  # what TopP chose from (near_ties.py)
        assert_scores_close(own, attn_cache)
        expected = authors_top_p(own, p, n, w)
        got = [row[row >= 0].tolist() for row in s["keep"][0]]
        assert got == expected


def test_topp_batch_equals_one_by_one(model):
    texts = [prompt(3, 120), prompt(4, 30), prompt(5, 75)]
    batch = asl.generate(model, TOK, texts, max_new_tokens=5, eviction=asl.TopP(p=0.8, window=8))
    for i, t in enumerate(texts):
        alone = asl.generate(model, TOK, t, max_new_tokens=5, eviction=asl.TopP(p=0.8, window=8))
        assert batch.tokens[i] == alone.tokens
        assert batch.trace.sequences[i].kv_tokens_per_head == alone.trace.kv_tokens_per_head


@pytest.mark.parametrize("make,match", [
    (lambda: asl.SnapKV(per="query"), "per must be one of"),
    (lambda: asl.TopP(p=0), r"p must be a number in \(0, 1\]"),
    (lambda: asl.TopP(p=1.5), r"p must be a number in \(0, 1\]"),
    (lambda: asl.TopP(multiple=0), "multiple must be an integer >= 1"),
])
def test_bad_variant_parameters_fail_naming_them(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_gemfilter_uses_its_own_layer_where_its_repository_has_one():
    assert gemfilter_layer("llama", 32) == (13, "GemFilter's own layer for llama with 32 layers")
    assert gemfilter_layer("mistral", 40)[0] == 19
    layer, why = gemfilter_layer("qwen2", 24)
    assert layer == 10 and "scaled to 24 layers" in why


def test_topp_after_a_selection_keeps_the_selected_tokens_whole(model):
    """The original's `q_len <= select_k`: with ASL selecting k tokens, top-p prunes the layers
    before the selection and caches the k selected tokens whole at every deeper layer."""
    text, k = prompt(11, 150), 40
    fastkv = asl.FastKV(layer=3, select_tokens=k, window=8)
    out = asl.generate(model, TOK, text, max_new_tokens=1, selection=fastkv,
                       eviction=asl.TopP(p=0.5, window=8, select_tokens=k))
    per_head = out.trace.kv_tokens_per_head
    assert all(heads == [k] * len(heads) for heads in per_head[4:])  # after the selection: all k kept
    assert any(max(heads) < 150 for heads in per_head[:4])  # before it: pruned
    pruning = asl.generate(model, TOK, text, max_new_tokens=1, selection=fastkv, eviction=asl.TopP(p=0.5, window=8))
    assert any(max(heads) < k for heads in pruning.trace.kv_tokens_per_head[4:])  # select_tokens=None prunes them
    with pytest.raises(ValueError, match="select_tokens must be an integer >= 1"):
        asl.TopP(select_tokens=0)
