"""asl.compress: compress a context once, ask many questions; exact against fresh prefills."""
import random

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from tiny import CharTokenizer, random_text, tiny_pair

import asl
from asl.context import extend
from asl.prefill import prefill

TOK = CharTokenizer()  # one id per character: context + question tokenise as their concatenation


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def model(request):
    return tiny_pair(request.param, eos_token_id=None)[1]


def ids_of(text: str) -> torch.Tensor:
    return torch.tensor([TOK(text)["input_ids"]])


def question_logits(model, compressed, question: str) -> torch.Tensor:
    ids = ids_of(question)
    return extend(model, compressed, ids, torch.ones_like(ids, dtype=torch.bool), 0).logits


def fresh_logits(model, text: str, selection=None, eviction=None) -> torch.Tensor:
    ids = ids_of(text)
    return prefill(model, ids, torch.ones_like(ids, dtype=torch.bool), 0, selection, eviction).logits


@given(context=st.integers(1, 150), question=st.integers(1, 30), seed=st.integers(0, 999))
def test_the_full_cache_answers_as_a_fresh_prefill(model, context, question, seed):
    rng = random.Random(seed)
    ctx, q = random_text(rng, context), random_text(rng, question)
    compressed = asl.compress(model, TOK, ctx)
    torch.testing.assert_close(question_logits(model, compressed, q), fresh_logits(model, ctx + q),
                               rtol=1e-4, atol=1e-4)


POLICIES = {  # window >= the question's length, so the question's tokens are all in it
    "fastkv": lambda: (asl.FastKV(layer=1, select_tokens=48, window=16), None),
    "snapkv": lambda: (None, asl.SnapKV(budget=40, window=16)),
    "asl+snapkv": lambda: (asl.ASL(tau=0.9, l_min=1, l_obs=2, select_tokens=48, window=16),
                           asl.SnapKV(budget=40, window=16)),
}


@pytest.mark.parametrize("name", list(POLICIES))
def test_a_hint_keeps_what_a_prefill_with_the_question_keeps(model, name):
    """compress(context, question_hint=q) stores, per layer and KV head, exactly the context
    entries a prefill of context + q stores under the same policies: the hint lies in the
    window while they choose, then only its own entries go."""
    rng = random.Random(3)
    ctx, q = random_text(rng, 140), random_text(rng, 12)
    compressed = asl.compress(model, TOK, ctx, *POLICIES[name](), question_hint=q)
    assert compressed.kv_bytes < asl.compress(model, TOK, ctx).kv_bytes
    ids = ids_of(ctx + q)
    fresh = prefill(model, ids, torch.ones_like(ids, dtype=torch.bool), 0, *POLICIES[name]())
    for saved, layer in zip(compressed.layers, fresh.cache.layers):
        for g in range(saved.k.shape[0]):
            context = layer.valid[0, g] & (layer.index[0, g] < len(ctx))
            torch.testing.assert_close(saved.k[g][saved.valid[g]], layer.k[0, g][context], rtol=0, atol=0)
            torch.testing.assert_close(saved.v[g][saved.valid[g]], layer.v[0, g][context], rtol=0, atol=0)


def test_with_a_selection_alone_the_question_runs_as_in_a_fresh_prefill(model):
    """Selection only: the layers up to the selection keep everything and deeper ones the
    selected tokens, which is what the question attends to in a fresh prefill too. (With an
    eviction they differ: a fresh prefill's question attends to the whole context, since
    eviction only shapes the decoding cache; asked on a compressed cache it sees what was kept.)"""
    rng = random.Random(7)
    ctx, q = random_text(rng, 140), random_text(rng, 12)
    policies = POLICIES["fastkv"]
    compressed = asl.compress(model, TOK, ctx, *policies(), question_hint=q)
    torch.testing.assert_close(question_logits(model, compressed, q), fresh_logits(model, ctx + q, *policies()),
                               rtol=1e-4, atol=1e-4)


def test_questions_do_not_disturb_the_cache_or_each_other(model):
    rng = random.Random(4)
    ctx, q1, q2 = random_text(rng, 100), random_text(rng, 7), random_text(rng, 19)
    compressed = asl.compress(model, TOK, ctx, eviction=asl.SnapKV(budget=32, window=8))
    saved = [(layer.k.clone(), layer.v.clone(), layer.valid.clone()) for layer in compressed.layers]
    first = question_logits(model, compressed, q1)
    asl.generate(model, TOK, q2, cache=compressed, max_new_tokens=10)
    torch.testing.assert_close(question_logits(model, compressed, q1), first, rtol=0, atol=0)
    for layer, (k, v, valid) in zip(compressed.layers, saved):
        assert torch.equal(layer.k, k) and torch.equal(layer.v, v) and torch.equal(layer.valid, valid)
    batch = asl.generate(model, TOK, [q1, q2], cache=compressed, max_new_tokens=10)
    for i, q in enumerate([q1, q2]):
        assert batch.tokens[i] == asl.generate(model, TOK, q, cache=compressed, max_new_tokens=10).tokens


def test_generate_on_a_cache_decodes_like_a_fresh_generate(model):
    rng = random.Random(5)
    ctx, q = random_text(rng, 80), random_text(rng, 10)
    fresh = asl.generate(model, TOK, ctx + q, max_new_tokens=16)
    asked = asl.generate(model, TOK, q, cache=asl.compress(model, TOK, ctx), max_new_tokens=16, compile=False)
    assert asked.tokens == fresh.tokens
    seq = asked.trace.sequences[0]
    assert seq.prompt_tokens == 90 and seq.kv_tokens == [90] * len(model.layers)


def test_a_restart_numbers_the_question_after_the_kept_context(model):
    rng = random.Random(6)
    ctx = random_text(rng, 120)
    compressed = asl.compress(model, TOK, ctx, selection=asl.GemFilter(layer=1, select_tokens=30))
    assert compressed.next_position == len(compressed.kept_indices) <= 30
    assert compressed.report == {} or compressed.report.get("selection_layer") is not None
    out = asl.generate(model, TOK, random_text(rng, 8), cache=compressed, max_new_tokens=4)
    assert len(out.tokens) == 4


@pytest.mark.parametrize("call,match", [
    (lambda m: asl.compress(m, TOK, ""), "context must be a non-empty string"),
    (lambda m: asl.compress(m, TOK, "abc", question_hint=""), "question_hint must be a non-empty string"),
    (lambda m: asl.compress(m, TOK, "abc", selection=asl.SnapKV(64)), "selection must be a SelectionPolicy"),
    (lambda m: asl.generate(m, TOK, "q", cache=object()), "cache must be what asl.compress returned"),
    (lambda m: asl.generate(m, TOK, "q", cache=asl.compress(m, TOK, "abc"), eviction=asl.SnapKV(64)),
     "pass them to asl.compress"),
    (lambda m: asl.generate(m, TOK, "q", cache=asl.compress(m, TOK, "abc"), chat=True), "compressed without its chat template"),
    (lambda m: asl.generate(m, TOK, "q", cache=asl.compress(m, TOK, "x" * 250), max_new_tokens=10),
     "after the compressed context's 250 positions"),
])
def test_bad_input_fails_clearly(model, call, match):
    with pytest.raises(ValueError, match=match):
        call(model)


def test_a_cache_of_another_model_is_refused(model):
    other = tiny_pair("llama", seed=1)[1]
    compressed = asl.compress(other, TOK, "some context")
    with pytest.raises(ValueError, match="compressed with another model"):
        asl.generate(model, TOK, "q", cache=compressed)


def test_a_cache_whose_weights_changed_is_refused():
    """issue 34: a compressed context reused after an in-place weight change answered as the old
    model, and after a cast failed with a raw index_copy_ error."""
    model = tiny_pair("llama", seed=2)[1]
    compressed = asl.compress(model, TOK, random_text(random.Random(1), 80))
    assert len(asl.generate(model, TOK, "q", cache=compressed, max_new_tokens=2).tokens) == 2
    with torch.no_grad():
        model.layers[0].mlp.up_proj.weight.mul_(2.0)
    with pytest.raises(ValueError, match="cache is stale: the model's weights changed .*compress the context again"):
        asl.generate(model, TOK, "q", cache=compressed, max_new_tokens=2)
    fresh = asl.compress(model, TOK, random_text(random.Random(1), 80))
    model.to(torch.bfloat16)
    with pytest.raises(ValueError, match="cache is stale: the model is now torch.bfloat16 on cpu; the context was "
                                         "compressed in torch.float32"):
        asl.generate(model, TOK, "q", cache=fresh, max_new_tokens=2)


def test_an_eviction_that_rolls_while_decoding_is_refused_by_compress(model):
    """Its questions would be answered without the rolling the policy promises (issue 37)."""
    with pytest.raises(ValueError, match=r"StreamingLLM also evicts while decoding .* rolling=False"):
        asl.compress(model, TOK, "some context here", eviction=asl.StreamingLLM(budget=8, sink=2))
    with pytest.raises(ValueError, match="PyramidInferDecode also evicts while decoding"):
        asl.compress(model, TOK, "some context here", eviction=asl.PyramidInferDecode())
    once = asl.compress(model, TOK, "some context here, long enough to roll", eviction=asl.StreamingLLM(
        budget=8, sink=2, rolling=False))
    assert max(once.kv_tokens_per_head[0]) == 8
