"""generate(): greedy tokens against transformers, batches, compiled decode, sampling, stops."""
import random

import pytest
import torch
from tiny import CharTokenizer, random_text, tiny_pair

import asl
from asl.prefill import prefill

TOK = CharTokenizer()


@pytest.fixture(scope="module", params=["llama", "mistral", "qwen2", "qwen3"])
def pair(request):
    return tiny_pair(request.param, eos_token_id=None)


def hf_greedy(hf, prompt: str, n: int) -> list[int]:
    ids = torch.tensor([TOK(prompt)["input_ids"]])
    out = hf.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("length", [1, 17, 90])
def test_greedy_20_tokens_match_transformers(pair, length):
    hf, ours = pair
    prompt = random_text(random.Random(length), length)
    out = asl.generate(ours, TOK, prompt, max_new_tokens=20)
    assert out.tokens == hf_greedy(hf, prompt, 20)
    assert len(out.tokens) == 20 and out.text == TOK.decode(out.tokens)


def test_batch_of_different_lengths_equals_one_by_one(pair):
    _, ours = pair
    rng = random.Random(5)
    prompts = [random_text(rng, n) for n in (3, 61, 24, 40)]
    batch = asl.generate(ours, TOK, prompts, max_new_tokens=12)
    for i, p in enumerate(prompts):
        assert batch.tokens[i] == asl.generate(ours, TOK, p, max_new_tokens=12).tokens
    assert [s.prompt_tokens for s in batch.trace.sequences] == [3, 61, 24, 40]
    assert [s.alive_tokens[0] for s in batch.trace.sequences] == [3, 61, 24, 40]


def test_prefill_logits_equal_the_full_forward_last_token(pair):
    """The prefill attends and finishes only the last token in the last layer; its logits
    must still be the full forward's, padded rows included."""
    _, ours = pair
    rng = random.Random(9)
    rows = [TOK(random_text(rng, n))["input_ids"] for n in (7, 50, 33)]
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    valid = ids != 0
    full = ours(ids, attention_mask=valid.long())[:, -1]
    out = prefill(ours, ids, valid, extra_slots=0)
    torch.testing.assert_close(out.logits, full, rtol=1e-4, atol=1e-4)
    assert out.cache.layers[-1].k.shape[-2] == width  # every token's K/V is still stored


@pytest.mark.slow  # compiles or runs the real model
def test_compiled_decode_gives_the_same_tokens():
    _, ours = tiny_pair("llama", eos_token_id=None)
    rng = random.Random(6)
    prompts = [random_text(rng, n) for n in (20, 33)]
    eager = asl.generate(ours, TOK, prompts, max_new_tokens=16)
    compiled = asl.generate(ours, TOK, prompts, max_new_tokens=16, compile=True)
    assert eager.tokens == compiled.tokens
    # compile time is reported apart, never inside the per-token time; a warm shape compiles nothing
    assert eager.trace.compiles == 0 and eager.trace.compile_s == 0.0
    again = asl.generate(ours, TOK, prompts, max_new_tokens=16, compile=True)
    assert again.tokens == eager.tokens and again.trace.compiles == 0
    if compiled.trace.compiles:  # a fresh process compiles here (an earlier test may have warmed it)
        assert compiled.trace.compile_s > 10 * compiled.trace.decode_s_per_token


@pytest.mark.slow  # compiles or runs the real model
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
def test_cuda_graph_mode_gives_the_same_tokens_and_bad_modes_fail(device):
    """compile="reduce-overhead" (CUDA graphs on a GPU; torch.compile alone on the CPU)."""
    _, ours = tiny_pair("llama", eos_token_id=None)
    ours = ours.to(device)
    assert ours.rope.inv_freq.device.type == device  # no host copy per step (CUDA graphs need that)
    prompts = [random_text(random.Random(8), n) for n in (12, 30)]
    eager = asl.generate(ours, TOK, prompts, max_new_tokens=10)
    graphed = asl.generate(ours, TOK, prompts, max_new_tokens=10, compile="reduce-overhead")
    assert graphed.tokens == eager.tokens
    for bad in ("max", 1, None):
        with pytest.raises(ValueError, match="compile must be False, True or"):
            asl.generate(ours, TOK, prompts, compile=bad)


def test_trace_reports_cache_and_timings():
    _, ours = tiny_pair("qwen3", eos_token_id=None)
    out = asl.generate(ours, TOK, "hello world", max_new_tokens=5)
    t, c = out.trace, ours.config
    assert t.alive_tokens == [11] * c.num_layers and t.kv_tokens == [11] * c.num_layers
    assert t.kv_tokens_per_head == [[11] * c.num_kv_heads] * c.num_layers
    assert t.kv_bytes == 2 * c.num_layers * c.num_kv_heads * 11 * c.head_dim * 4
    assert t.prefill_s > 0 and t.decode_s_per_token > 0


def test_sampling_is_seeded_and_top_k_1_is_greedy():
    _, ours = tiny_pair("llama", eos_token_id=None)
    kw = {"max_new_tokens": 15, "temperature": 1.5}
    a = asl.generate(ours, TOK, "abc", seed=1, **kw).tokens
    assert a == asl.generate(ours, TOK, "abc", seed=1, **kw).tokens
    assert a != asl.generate(ours, TOK, "abc", seed=2, **kw).tokens
    greedy = asl.generate(ours, TOK, "abc", max_new_tokens=15).tokens
    assert asl.generate(ours, TOK, "abc", top_k=1, **kw).tokens == greedy
    assert asl.generate(ours, TOK, "abc", top_p=1e-6, **kw).tokens == greedy


def test_stops_at_eos_and_stop_strings():
    _, ours = tiny_pair("llama", eos_token_id=None)
    free = asl.generate(ours, TOK, "xyz", max_new_tokens=10).tokens
    eos_id = free[3]
    tok = CharTokenizer()
    tok.eos_token_id = eos_id
    stopped = asl.generate(ours, tok, "xyz", max_new_tokens=10).tokens
    assert stopped == free[: free.index(eos_id) + 1]
    stop = TOK.decode(free[4:6])
    out = asl.generate(ours, TOK, "xyz", max_new_tokens=10, stop=[stop])
    assert stop not in out.text and len(out.tokens) <= 6


def test_max_new_tokens_zero_only_prefills():
    _, ours = tiny_pair("llama")
    out = asl.generate(ours, TOK, "abc", max_new_tokens=0)
    assert out.tokens == [] and out.text == "" and out.trace.kv_tokens[0] == 3


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"prompt_or_prompts": ""}, "prompt 0 is empty"),
        ({"prompt_or_prompts": ["ok", "  "]}, "prompt 1 is empty"),
        ({"prompt_or_prompts": []}, "non-empty"),
        ({"max_new_tokens": -1}, "max_new_tokens must be an integer >= 0"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_p": 1.5}, "top_p"),
        ({"prompt_or_prompts": "x" * 300}, "exceeds the model's maximum of 256 positions"),
        ({"prompt_or_prompts": "x" * 250, "max_new_tokens": 10}, "maximum of 256"),
        ({"stop": "abc"}, "stop"),
        ({"stop": 5}, "stop must be None or a list of non-empty strings, got 5"),
        ({"prompt_or_prompts": ["hi", 5]}, "prompt 1 is a int, not a string"),
        ({"temperature": float("nan")}, "temperature must be a number >= 0"),
        ({"temperature": "a"}, "temperature must be a number >= 0"),
        ({"top_p": float("nan")}, "top_p must be None or a number in"),
        ({"max_new_tokens": True}, "max_new_tokens must be an integer"),
        ({"seed": 2**70}, r"seed must be an integer in \[-2\*\*63, 2\*\*64\), got 1180591620717411303424"),
        ({"prompt_or_prompts": "ab\ud800c"}, "prompt 0 is not valid text: surrogates not allowed at character 2"),
    ],
)
def test_bad_input_is_rejected_before_work(kwargs, match, monkeypatch):
    _, ours = tiny_pair("llama")
    monkeypatch.setattr(asl.generation, "prefill", lambda *a, **k: pytest.fail("prefill ran"))
    args = {"prompt_or_prompts": "abc", "max_new_tokens": 4} | kwargs
    with pytest.raises(ValueError, match=match):
        asl.generate(ours, TOK, **args)


def test_a_policy_field_changed_after_construction_is_checked_before_work(monkeypatch):
    _, ours = tiny_pair("llama")
    policy = asl.ASL(select_tokens=16, window=4, l_min=2, l_obs=2)
    policy.tau = float("nan")
    monkeypatch.setattr(asl.generation, "prefill", None)  # no work may start
    with pytest.raises(ValueError, match="tau must be a finite number >= 0, got nan"):
        asl.generate(ours, TOK, "abcdef", max_new_tokens=2, selection=policy)
