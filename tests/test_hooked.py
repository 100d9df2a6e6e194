"""Eviction on a transformers model of a family our decoder lacks, through its own forward."""
import random

import pytest
import torch
import transformers

import asl
from tiny import CharTokenizer, random_text, tiny_pair

TOK = CharTokenizer()
TEXT = random_text(random.Random(0), 120)
FAMILIES = {
    "gpt_neox": lambda: transformers.GPTNeoXConfig(num_attention_heads=4, rotary_pct=0.5),
    "falcon": lambda: transformers.FalconConfig(num_attention_heads=4, new_decoder_architecture=True, num_kv_heads=2),
}


def other_family(name: str):
    torch.manual_seed(0)
    cfg = FAMILIES[name]()
    for key, value in dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                           max_position_embeddings=512, eos_token_id=None, bos_token_id=None, pad_token_id=0).items():
        setattr(cfg, key, value)
    return transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()


def transformers_greedy(hf, text: str, n: int) -> list[int]:
    ids = TOK(text)["input_ids"]
    with torch.no_grad():
        return hf.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False)[0, len(ids):].tolist()


@pytest.fixture(scope="module", params=list(FAMILIES))
def hf(request):
    return other_family(request.param)


def test_an_other_family_runs_with_eviction_at_its_budget(hf):
    assert isinstance(asl.from_transformers(hf), asl.HookedModel)
    full = asl.generate(hf, TOK, TEXT, max_new_tokens=10)
    assert full.tokens == transformers_greedy(hf, TEXT, 10)
    assert full.trace.kv_tokens == [len(TEXT)] * 3
    snap = asl.generate(hf, TOK, TEXT, max_new_tokens=10, eviction=asl.SnapKV(budget=32, window=8))
    assert snap.trace.kv_tokens == [32, 32, 32] and len(snap.tokens) == 10
    assert snap.trace.kv_bytes < full.trace.kv_bytes
    covered = asl.generate(hf, TOK, TEXT, max_new_tokens=10, eviction=asl.SnapKV(budget=200, window=8))
    assert covered.tokens == full.tokens  # a budget that covers the prompt keeps the full cache's answer
    assert hf.config._attn_implementation == "sdpa"  # the model is left as it was


@pytest.mark.parametrize("eviction", [asl.SnapKV(budget=40, window=8),
                                      asl.CAM(asl.SnapKV(budget=40, window=8), merge_budget=4, sampled=False)])
def test_the_cut_cache_is_what_our_decoder_keeps(eviction):
    """The same eviction through transformers' forward (a Llama forced down that path) and through
    our decoder: the same kept entries (and merged values), so the same answer."""
    hf, ours = tiny_pair("llama", eos_token_id=None)
    hooked = asl.generate(asl.HookedModel(hf), TOK, TEXT, max_new_tokens=12, eviction=eviction)
    own = asl.generate(ours, TOK, TEXT, max_new_tokens=12, eviction=eviction)
    assert hooked.tokens == own.tokens and hooked.trace.kv_tokens == own.trace.kv_tokens == [40] * 4


def test_what_needs_our_decoder_is_refused_by_name(hf):
    with pytest.raises(ValueError, match="layer-wise selection .* runs only on a family asl's own decoder supports"):
        asl.generate(hf, TOK, TEXT, max_new_tokens=2, selection=asl.FastKV(layer=1, select_tokens=40))
    with pytest.raises(ValueError, match="acts while decoding"):
        asl.generate(hf, TOK, TEXT, max_new_tokens=2, eviction=asl.DecodingEviction(asl.KNorm(window=4), every=4,
                                                                                     budget=40))
    with pytest.raises(ValueError, match="a different number of entries per head"):
        asl.generate(hf, TOK, TEXT, max_new_tokens=2, eviction=asl.AdaKV(asl.SnapKV(budget=32, window=8)))
    assert hf.config._attn_implementation == "sdpa"
