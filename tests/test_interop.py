"""transformers models in and out: shared weights, generate on an HF model, hub ids from the
local cache only, tied checkpoints stored either way."""
import random

import pytest
import safetensors.torch
import torch
import transformers
from tiny import CharTokenizer, attn_implementation, random_text, tiny_hf_config

import asl
from asl.models.interop import SUPPORTED_CLASSES

TOK = CharTokenizer()
FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "phi3", "mixtral", "qwen3_moe", "gemma2", "gemma3_text"]


def hf_model(model_type: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    cfg = tiny_hf_config(model_type, eos_token_id=None, **overrides)
    return transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation=attn_implementation(model_type)).eval()


@pytest.mark.parametrize("model_type", FAMILIES)
def test_from_transformers_shares_every_parameter_and_gives_its_logits(model_type):
    hf = hf_model(model_type)
    ours = asl.from_transformers(hf)
    theirs = dict(hf.named_parameters(remove_duplicate=False))
    mine = dict(ours.named_parameters(remove_duplicate=False))
    assert set(mine) - {"lm_head.weight"} <= set(theirs)
    for name, p in mine.items():
        assert p.data_ptr() == theirs.get(name, theirs["model.embed_tokens.weight"]).data_ptr(), name
    ids = torch.randint(0, 128, (2, 50), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(ids).logits.float()
    torch.testing.assert_close(ours(ids), expected, rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # shared, not copied: an in-place change to theirs is seen by ours
        next(p for n, p in hf.model.layers[0].mlp.named_parameters() if "down_proj" in n).mul_(2)
    assert not torch.allclose(ours(ids), expected, atol=1e-4)


def test_generate_takes_the_transformers_model_and_converts_it_once():
    hf = hf_model("qwen2")
    prompt = random_text(random.Random(2), 60)
    out = asl.generate(hf, TOK, prompt, max_new_tokens=12, selection=asl.FastKV(layer=1, select_tokens=24, window=8))
    again = asl.generate(asl.from_transformers(hf), TOK, prompt, max_new_tokens=12,
                         selection=asl.FastKV(layer=1, select_tokens=24, window=8))
    assert out.tokens == again.tokens and out.trace.selection_layer == 1
    assert asl.from_transformers(hf) is asl.from_transformers(hf)
    ids = torch.tensor([TOK(prompt)["input_ids"]])
    with torch.no_grad():
        greedy = hf.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert asl.generate(hf, TOK, prompt, max_new_tokens=12).tokens == greedy[0, ids.shape[1]:].tolist()


def test_a_model_cast_after_conversion_is_followed():
    hf = hf_model("llama")
    asl.from_transformers(hf)
    hf.to(torch.bfloat16)
    ours = asl.from_transformers(hf)  # rebuilt from the cast weights (the same tensors)
    assert ours.lm_head.weight.dtype == torch.bfloat16 and ours.lm_head.weight is hf.lm_head.weight
    assert len(asl.generate(hf, TOK, "hello there", max_new_tokens=3).tokens) == 3


def test_a_replaced_layer_or_an_in_place_update_is_followed():
    """issue 34: a replaced v_proj left the conversion answering as the old model."""
    hf = hf_model("qwen2")
    prompt = random_text(random.Random(5), 40)
    ids = torch.tensor([TOK(prompt)["input_ids"]])

    def greedy():
        with torch.no_grad():
            return hf.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=None,
                               pad_token_id=0)[0, ids.shape[1]:].tolist()

    before = asl.generate(hf, TOK, prompt, max_new_tokens=8).tokens
    attn = hf.model.layers[1].self_attn
    attn.v_proj = torch.nn.Linear(attn.v_proj.in_features, attn.v_proj.out_features, bias=True)
    with torch.no_grad():
        attn.v_proj.weight.zero_()
        attn.v_proj.bias.fill_(3.0)
        hf.model.layers[0].mlp.down_proj.weight.mul_(-1.0)  # in place: the same tensor, a new version
    ours = asl.from_transformers(hf)
    assert ours.layers[1].self_attn.v_proj.weight is attn.v_proj.weight
    assert asl.generate(hf, TOK, prompt, max_new_tokens=8).tokens == greedy() != before


def test_an_unsupported_model_is_named_with_the_supported_ones():
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(ValueError, match="GPT2LMHeadModel .* is not supported; supported: " + SUPPORTED_CLASSES[0]):
        asl.from_transformers(gpt2)
    bare = transformers.LlamaModel(tiny_hf_config("llama"))
    with pytest.raises(ValueError, match="not the bare model"):
        asl.from_transformers(bare)
    with pytest.raises(ValueError, match="model must be an asl Decoder .* or a transformers model"):
        asl.generate(object(), TOK, "hi")
    with pytest.raises(ValueError, match="use asl.from_transformers"):
        asl.load(hf_model("llama"))


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<eos>": 1, **{chr(c): c - 30 for c in range(32, 127)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")


def hub_snapshot(cache, repo_id: str, hf) -> None:
    """A Hugging Face cache entry as `huggingface-cli download` leaves it."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    entry = cache / ("models--" + repo_id.replace("/", "--"))
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(commit)
    snapshot = entry / "snapshots" / commit
    hf.save_pretrained(snapshot)
    tiny_tokenizer().save_pretrained(snapshot)


def test_a_hub_id_loads_from_the_local_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    hf = hf_model("qwen3")
    hub_snapshot(tmp_path, "someorg/tiny-qwen3", hf)
    model, tokenizer = asl.load("someorg/tiny-qwen3", dtype="float32")
    ids = torch.randint(0, 128, (1, 30), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, rtol=1e-4, atol=1e-4)
    assert tokenizer("ab")["input_ids"] == [ord("a") - 30, ord("b") - 30]


def test_a_hub_id_not_in_the_cache_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match=r"not there in the local Hugging Face cache .*never downloads.*"
                                         r"huggingface-cli download someorg/absent"):
        asl.load("someorg/absent")


@pytest.mark.parametrize("stored", ["as transformers saves it", "lm_head only", "both"])
def test_a_tied_checkpoint_loads_whichever_name_it_stores(tmp_path, stored):
    hf = hf_model("llama", tie_word_embeddings=True)
    hf.save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    state = safetensors.torch.load_file(path)
    embed = state.get("model.embed_tokens.weight", state.get("lm_head.weight"))
    if stored == "lm_head only":
        state.pop("model.embed_tokens.weight", None)
        state["lm_head.weight"] = embed
    elif stored == "both":
        state["model.embed_tokens.weight"], state["lm_head.weight"] = embed.clone(), embed.clone()
    if stored != "as transformers saves it":
        safetensors.torch.save_file(state, str(path), metadata={"format": "pt"})
    model, _ = asl.load(tmp_path, dtype="float32")
    ids = torch.randint(0, 128, (1, 30), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, rtol=1e-4, atol=1e-4)
    assert model.lm_head.weight is model.model.embed_tokens.weight
