"""Sliding-window layers (Mistral, Phi-3, Gemma 2 and 3) against transformers, and what the
policies do there (docs/algorithms.md section 20)."""
import pytest
import torch

import asl
from tiny import CharTokenizer, tiny_pair

WINDOWED = {  # model type -> its tiny model's overrides: a window of 24, which the prompts pass
    "gemma3_text": {},  # layers 0, 1, 3 sliding (its own RoPE base), 2 global
    "gemma2": {},  # every other layer sliding, soft caps
    "mistral": {"sliding_window": 24},  # every layer sliding
    "phi3": {"sliding_window": 24},
}
TEXT = "the window slides over the prompt and past it " * 2
N = len(TEXT)  # one token per character


@pytest.fixture(scope="module", params=list(WINDOWED))
def pair(request):
    return tiny_pair(request.param, eos_token_id=None, **WINDOWED[request.param])


def test_logits_match_transformers_past_the_window_and_the_window_acts(pair):
    hf, ours = pair
    wide = tiny_pair(ours.config.model_type, eos_token_id=None, **{**WINDOWED[ours.config.model_type],
                                                                   "sliding_window": 4096})[1]
    for n in (20, 150):
        ids = torch.randint(0, 128, (2, n), generator=torch.Generator().manual_seed(n))
        with torch.no_grad():
            expected = hf(ids).logits.float()
        got = ours(ids)
        assert (got - expected).abs().max().item() < 1e-4
        gap = (got - wide(ids)).abs().max().item()
        assert gap < 1e-5 if n <= 24 else gap > 1e-3  # the same within the window, not past it


def test_greedy_answers_equal_transformers_past_the_window(pair):
    hf, ours = pair
    ids = CharTokenizer()(TEXT)["input_ids"]
    ours_tokens = asl.generate(ours, CharTokenizer(), TEXT, max_new_tokens=30).tokens
    with torch.no_grad():
        theirs = hf.generate(torch.tensor([ids]), max_new_tokens=30, min_new_tokens=30, do_sample=False)
    assert ours_tokens == theirs[0, len(ids):].tolist()


@pytest.mark.slow  # torch.compile of a decode step
def test_a_compiled_step_keeps_the_window():
    _, ours = tiny_pair("gemma3_text", eos_token_id=None)
    eager = asl.generate(ours, CharTokenizer(), TEXT, max_new_tokens=30)
    assert asl.generate(ours, CharTokenizer(), TEXT, max_new_tokens=30, compile=True).tokens == eager.tokens


def test_a_sliding_layer_stores_only_what_the_next_token_sees():
    _, ours = tiny_pair("gemma3_text", eos_token_id=None)
    n = len(CharTokenizer()(TEXT)["input_ids"])
    full = asl.generate(ours, CharTokenizer(), TEXT, max_new_tokens=5)
    assert full.trace.kv_tokens == [23, 23, n, 23]  # window - 1 entries on the sliding layers
    snap = asl.generate(ours, CharTokenizer(), TEXT, max_new_tokens=5, eviction=asl.SnapKV(budget=16, window=4))
    assert snap.trace.kv_tokens == [16, 16, 16, 16]  # within the window, the eviction chooses among its entries
    wide = asl.generate(ours, CharTokenizer(), TEXT, max_new_tokens=5, eviction=asl.SnapKV(budget=40, window=4))
    assert wide.trace.kv_tokens == [23, 23, 40, 23]  # the window is already within the budget


def test_padded_rows_answer_as_alone_past_the_window():
    _, ours = tiny_pair("gemma2", eos_token_id=None)
    texts = [TEXT, TEXT[:50]]
    batched = asl.generate(ours, CharTokenizer(), texts, max_new_tokens=12).tokens
    assert batched == [asl.generate(ours, CharTokenizer(), t, max_new_tokens=12).tokens for t in texts]


def test_a_compressed_context_answers_as_the_whole_prompt_past_the_window():
    _, ours = tiny_pair("gemma3_text", eos_token_id=None)
    context, question = TEXT, " and what slid?"
    whole = asl.generate(ours, CharTokenizer(), context + question, max_new_tokens=12).tokens
    cache = asl.compress(ours, CharTokenizer(), context)
    assert asl.generate(ours, CharTokenizer(), question, max_new_tokens=12, cache=cache).tokens == whole


def test_selection_is_taken_at_global_layers_unless_asked():
    _, ours = tiny_pair("gemma3_text", eos_token_id=None)
    with pytest.raises(ValueError, match=r"layer=1 is a sliding-window layer .* global layer \(2\) or set local_layers"):
        asl.generate(ours, CharTokenizer(), TEXT, max_new_tokens=2, selection=asl.FastKV(layer=1, select_tokens=40))
    with pytest.raises(ValueError, match="layer=0 is a sliding-window layer"):
        asl.generate(ours, CharTokenizer(), TEXT, max_new_tokens=2, selection=asl.GemFilter(layer=0, select_tokens=40))
    at_global = asl.generate(ours, CharTokenizer(), TEXT, max_new_tokens=2, selection=asl.FastKV(layer=2, select_tokens=40))
    assert at_global.trace.alive_tokens == [N, N, N, 40]
    local = asl.FastKV(layer=1, select_tokens=40, local_layers=True)
    assert asl.generate(ours, CharTokenizer(), TEXT, max_new_tokens=2, selection=local).trace.alive_tokens == [N, N, 40, 40]
    ranked = asl.ASL(tau=0.0, l_min=2, l_obs=2, select_tokens=40, window=4)
    # one global layer before the last: no history of two to compare, so no ratio at all
    assert list(asl.generate(ours, CharTokenizer(), TEXT, max_new_tokens=2, selection=ranked).trace.ratios) == []
    everywhere = asl.ASL(tau=0.0, l_min=2, l_obs=2, select_tokens=40, window=4, local_layers=True)
    assert list(asl.generate(ours, CharTokenizer(), TEXT, max_new_tokens=2, selection=everywhere).trace.ratios) == [2, 3]


def test_key_rerotation_is_refused_where_sliding_layers_have_their_own_rope():
    _, ours = tiny_pair("gemma3_text", eos_token_id=None)
    with pytest.raises(ValueError, match="own RoPE"):
        asl.generate(ours, CharTokenizer(), TEXT, max_new_tokens=2,
                     eviction=asl.KeyRerotation(asl.KNorm(budget=16, window=4)))


def test_the_oracle_tries_the_global_layers():
    _, ours = tiny_pair("gemma3_text", eos_token_id=None)
    result = asl.oracle_layer(ours, CharTokenizer(), TEXT, select_tokens=40, window=4, max_new_tokens=4)
    assert [o.layer for o in result.layers] == [2]  # layer 3, the last, is never a candidate
    with pytest.raises(ValueError, match="layer=1 is a sliding-window layer"):
        asl.oracle_layer(ours, CharTokenizer(), TEXT, select_tokens=40, window=4, max_new_tokens=4, layers=[1])


def test_asl_ranks_two_global_layers_before_its_first_ratio():
    """l_min at the first global layer: its history holds one rank vector there, whose variance
    says nothing; the first ratio is taken at the next global layer, with two."""
    _, ours = tiny_pair("gemma3_text", eos_token_id=None, num_hidden_layers=6,
                        layer_types=["sliding_attention", "full_attention"] * 3)
    ranked = asl.ASL(tau=0.5, l_min=1, l_obs=2, select_tokens=40, window=4)
    out = asl.generate(ours, CharTokenizer(), TEXT, max_new_tokens=2, selection=ranked)
    assert list(out.trace.ratios) == [3, 5] and out.trace.ratios[3] == 1.0
