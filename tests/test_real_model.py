"""The bundled smollm2-135m: our decoder against transformers on the same converted weights."""
import pytest
import torch
from transformers import AutoModelForCausalLM

import asl
from asl.bench.tasks.haystack import passkey_prompt, prose_tokens
from asl.models.loading import resolve_checkpoint

pytestmark = pytest.mark.slow  # the real smollm2-135m, a compiled decode among them (make test-fast leaves them out)


@pytest.fixture(scope="module")
def real():
    model, tok = asl.load("smollm2-135m", dtype="float32")  # transformers loads float32
    hf = AutoModelForCausalLM.from_pretrained(resolve_checkpoint("smollm2-135m"), attn_implementation="sdpa").eval()
    return model, tok, hf


def prose_prompt(tok, n_tokens: int) -> str:
    return tok.decode(prose_tokens(tok, n_tokens - 20)) + "\n\nSummarise the text above in one sentence:"


def test_load_ties_embeddings_and_keeps_config(real):
    model, tok, _ = real
    c = model.config
    assert (c.model_type, c.num_layers, c.num_heads, c.num_kv_heads) == ("llama", 30, 9, 3)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert tok.eos_token == "<|im_end|>"


def test_1000_token_prompt_32_greedy_tokens_match_transformers(real):
    model, tok, hf = real
    prompt = prose_prompt(tok, 1000)
    ids = torch.tensor([tok(prompt)["input_ids"]])
    assert 950 <= ids.shape[1] <= 1050
    with torch.no_grad():
        ref_logits = hf(ids).logits[0].float()
        ref = hf.generate(ids, max_new_tokens=32, min_new_tokens=32, do_sample=False)[0, ids.shape[1]:].tolist()
    diff = (model(ids)[0] - ref_logits).abs().max().item()
    print(f"smollm2-135m, {ids.shape[1]} tokens: max |logit diff| vs transformers = {diff:.2e}")
    assert diff < 1e-3
    out = asl.generate(model, tok, prompt, max_new_tokens=32)
    n = len(out.tokens)  # we stop at EOS; transformers was told not to
    assert out.tokens == ref[:n] and (n == 32 or out.tokens[-1] == tok.eos_token_id)


def test_chat_answer(real):
    model, tok, _ = real
    out = asl.generate(model, tok, "What is the capital of France? Answer in one word.", chat=True,
                       max_new_tokens=16, compile=False)
    assert "Paris" in out.text


def test_compiled_decode_matches_eager(real):
    model, tok, _ = real
    prompt = prose_prompt(tok, 300)
    eager = asl.generate(model, tok, prompt, max_new_tokens=12)
    assert asl.generate(model, tok, prompt, max_new_tokens=12, compile=True).tokens == eager.tokens


def test_passkey_2000_tokens_full_cache_finds_the_key(real):
    model, tok, _ = real
    prompt = passkey_prompt(tok, 2000, "68172")
    assert 1900 <= len(tok(prompt)["input_ids"]) <= 2100
    out = asl.generate(model, tok, prompt, max_new_tokens=8)
    assert "68172" in out.text


def test_lazyllm_on_the_real_model(real):
    """LazyLLM keeping every token is the full cache; pruning, its decoding revives tokens the
    prefill dropped, each computed once per layer (what it answers is the bench's to measure)."""
    model, tok, _ = real
    prompt = passkey_prompt(tok, 1000, "40917")
    full = asl.generate(model, tok, prompt, max_new_tokens=8)
    assert asl.generate(model, tok, prompt, max_new_tokens=8, selection=asl.LazyLLM(keep=1.0)).tokens == full.tokens
    lazy = asl.generate(model, tok, prompt, max_new_tokens=8, selection=asl.LazyLLM(keep=0.6))
    seq = lazy.trace.sequences[0]
    assert seq.alive_tokens[-1] < 0.3 * seq.alive_tokens[0] and seq.revived_token_layers > 0
    assert max(seq.peak_kv_tokens) <= seq.alive_tokens[0] + len(lazy.tokens)  # never more than every token once
    assert "40917" in full.text


def test_squeezed_attention_on_the_real_model(real):
    """Squeezed Attention's clusters on real keys: at its default percentile about half of the
    clustered keys are attended, at a higher one fewer; the answer is the bench's to measure."""
    model, tok, _ = real
    prompt = passkey_prompt(tok, 1000, "40917")
    shares = [asl.generate(model, tok, prompt, max_new_tokens=8, eviction=asl.SqueezedAttention(percentile=p))
              .trace.sequences[0].attended_share for p in (0.5, 0.9)]
    assert 0.2 < shares[0] < 0.8 and 0.0 < shares[1] < shares[0], shares
