"""The selection-layer oracle against FastKV run at every candidate layer one by one."""
import random

import pytest

import asl
from tiny import CharTokenizer, random_text, tiny_pair

TOK = CharTokenizer()
LAYERS = 8


@pytest.fixture(scope="module")
def model():
    return tiny_pair("qwen2", num_hidden_layers=LAYERS, max_position_embeddings=512, eos_token_id=None)[1]


@pytest.mark.parametrize("n,select", [(150, 40), (90, 24), (30, 64)])
def test_the_oracle_answers_as_fastkv_at_each_layer(model, n, select):
    text = random_text(random.Random(n), n)
    result = asl.oracle_layer(model, TOK, text, select_tokens=select, max_new_tokens=12, window=8, kernel=5)
    full = asl.generate(model, TOK, text, max_new_tokens=12)
    assert result.full_tokens == full.tokens and result.full_text == full.text
    assert [o.layer for o in result.layers] == list(range(LAYERS - 1))
    for outcome in result.layers:
        fastkv = asl.FastKV(layer=outcome.layer, select_tokens=select, window=8, kernel=5, pooling="avg")
        alone = asl.generate(model, TOK, text, max_new_tokens=12, selection=fastkv)
        assert outcome.tokens == alone.tokens, outcome.layer
        assert outcome.matches == (alone.tokens == full.tokens)
        assert outcome.kv_tokens == sum(alone.trace.kv_tokens)
        assert 0.0 <= outcome.partial <= 1.0 and (outcome.partial == 1.0 or not outcome.matches)
    if n <= select:  # nothing to prune: every layer gives the full answer
        assert result.oracle_layer == 0 and result.stable_layer == 0
    expected = next((o.layer for o in result.layers if o.matches), None)
    assert result.oracle_layer == expected


def test_the_oracle_costs_less_than_a_prefill_per_layer(model):
    text = random_text(random.Random(7), 400)
    result = asl.oracle_layer(model, TOK, text, select_tokens=40, max_new_tokens=2, window=8)
    assert 1.0 < result.cost < LAYERS - 1  # one prefill, then each candidate's deeper layers on 40 tokens


def test_candidate_layers_and_bad_input(model):
    result = asl.oracle_layer(model, TOK, "some prompt text here", select_tokens=8, layers=[2, 5], window=4,
                              max_new_tokens=3)
    assert [o.layer for o in result.layers] == [2, 5]
    with pytest.raises(ValueError, match="layers must be layers of the model"):
        asl.oracle_layer(model, TOK, "text", layers=[LAYERS])
    with pytest.raises(ValueError, match="select_tokens .* must be larger than window"):
        asl.oracle_layer(model, TOK, "text", select_tokens=8, window=8)
    with pytest.raises(ValueError, match="prompt must be a non-empty string"):
        asl.oracle_layer(model, TOK, "  ")


@pytest.mark.parametrize("seed", [150, 90, 11])
def test_decoding_only_to_the_first_difference_keeps_every_match(model, seed):
    text = random_text(random.Random(seed), 150)
    whole = asl.oracle_layer(model, TOK, text, select_tokens=40, max_new_tokens=12, window=8, kernel=5)
    quick = asl.oracle_layer(model, TOK, text, select_tokens=40, max_new_tokens=12, window=8, kernel=5, partials=False)
    assert [o.matches for o in quick.layers] == [o.matches for o in whole.layers]
    assert quick.oracle_layer == whole.oracle_layer and quick.stable_layer == whole.stable_layer
    assert quick.layers[-1].tokens == whole.layers[-1].tokens  # the deepest candidate decoded wholly
    for q, w in zip(quick.layers[:-1], whole.layers[:-1]):
        if w.matches:
            assert q.tokens == w.tokens and q.partial == w.partial == 1.0
        else:  # stopped at the first token that differs: the full answer's prefix plus that token
            first = next(i for i, (a, b) in enumerate(zip(w.tokens + [None], whole.full_tokens + [None])) if a != b)
            assert q.tokens == w.tokens[:first + 1] and q.partial is None
    assert sum(map(len, (o.tokens for o in quick.layers))) <= sum(map(len, (o.tokens for o in whole.layers)))
