"""Our decoder against transformers' own forward, for every supported family and RoPE type."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from asl.models.config import ModelConfig
from tiny import PHI3_ROPE, ROPE_VARIANTS, tiny_hf_config, tiny_pair

MODEL_TYPES = ["llama", "mistral", "qwen2", "qwen3", "phi3", "mixtral", "qwen3_moe", "gemma2", "gemma3_text"]


@pytest.fixture(scope="module", params=MODEL_TYPES)
def pair(request):
    return tiny_pair(request.param)


@given(n=st.integers(1, 200), batch=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_logits_match_transformers(pair, n, batch, seed):
    hf, ours = pair
    ids = torch.randint(0, 128, (batch, n), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = hf(ids).logits.float()
    assert (ours(ids) - expected).abs().max().item() < 1e-4


@pytest.mark.parametrize("rope", list(ROPE_VARIANTS))
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_rope_variants_match_transformers(model_type, rope):
    # max positions below the prompt length, so dynamic / yarn / llama3 scaling really acts
    hf, ours = tiny_pair(model_type, rope, max_position_embeddings=100)
    ids = torch.randint(0, 128, (2, 150), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(ids).logits.float()
    assert (ours(ids) - expected).abs().max().item() < 1e-4


@pytest.mark.parametrize("rope", list(PHI3_ROPE))
def test_phi3_longrope_and_partial_rotary_match_transformers(rope):
    """Phi-3's LongRoPE (short factors within its 64 pretraining positions, long past them, and
    the attention factor) and Phi-4-mini's partial rotary (12 of 16 dims turn), within and past 64."""
    hf, ours = tiny_pair("phi3", rope, max_position_embeddings=256)
    default = tiny_pair("phi3", max_position_embeddings=256)[1]
    for n in (40, 150):
        ids = torch.randint(0, 128, (2, n), generator=torch.Generator().manual_seed(n))
        with torch.no_grad():
            expected = hf(ids).logits.float()
        got = ours(ids)
        assert (got - expected).abs().max().item() < 1e-4
        assert (got - default(ids)).abs().max().item() > 1e-4  # the variant acts


@pytest.mark.parametrize("model_type", ["mixtral", "qwen3_moe"])
def test_moe_checkpoints_with_one_tensor_per_expert_load_as_the_3d_layout(model_type):
    """The hub's Mixtral and Qwen3-MoE files store each expert apart (w1/w3/w2, gate/up/down_proj):
    stacked on load, they give transformers' logits; a Qwen3-MoE dense layer stays an MLP."""
    from asl.models.weights import LEGACY_EXPERTS, decoder_from_state_dict

    hf, ours = tiny_pair(model_type)
    block, gate, up, down = LEGACY_EXPERTS[model_type]
    legacy = {}
    for name, t in hf.state_dict().items():
        if ".mlp.experts.gate_up_proj" in name:
            prefix = name.replace("mlp.experts.gate_up_proj", f"{block}.experts")
            for i, w in enumerate(t):
                g, u = w.chunk(2)
                legacy[f"{prefix}.{i}.{gate}.weight"], legacy[f"{prefix}.{i}.{up}.weight"] = g, u
        elif ".mlp.experts.down_proj" in name:
            prefix = name.replace("mlp.experts.down_proj", f"{block}.experts")
            legacy.update({f"{prefix}.{i}.{down}.weight": w for i, w in enumerate(t)})
        elif ".mlp.gate.weight" in name:
            legacy[name.replace("mlp.gate", f"{block}.gate")] = t
        else:
            legacy[name] = t
    loaded = decoder_from_state_dict(ours.config, legacy, torch.float32, "cpu")
    ids = torch.randint(0, 128, (1, 30), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = hf(ids).logits.float()
    assert (loaded(ids) - expected).abs().max().item() < 1e-4
    assert ours.config.num_experts == 4 and ours.config.experts_per_token == 2
    if model_type == "qwen3_moe":
        assert ours.config.dense_layers == (1,) and not hasattr(ours.layers[1].mlp, "experts")


@pytest.mark.slow  # torch.compile of a decode step
@pytest.mark.parametrize("model_type", ["mixtral", "qwen3_moe"])
def test_a_compiled_moe_decode_step_answers_as_the_eager_one(model_type):
    import asl
    from tiny import CharTokenizer

    _, ours = tiny_pair(model_type, eos_token_id=None)
    text = "the experts route each token " * 3
    eager = asl.generate(ours, CharTokenizer(), text, max_new_tokens=8)
    compiled = asl.generate(ours, CharTokenizer(), text, max_new_tokens=8, compile=True)
    assert compiled.tokens == eager.tokens


def test_rope_variants_differ_from_default():
    ids = torch.randint(0, 128, (1, 150), generator=torch.Generator().manual_seed(2))
    outs = {rope: tiny_pair("llama", rope, max_position_embeddings=100)[1](ids) for rope in ROPE_VARIANTS}
    for rope, out in outs.items():
        if rope != "default":
            assert (out - outs["default"]).abs().max() > 1e-4, rope


def test_padded_batch_rows_match_unpadded():
    hf, ours = tiny_pair("qwen2")
    ids = torch.randint(2, 128, (2, 30), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[0, :12] = 0
    batched = ours(ids, attention_mask=mask)
    alone = ours(ids[:1, 12:])
    assert (batched[0, 12:] - alone[0]).abs().max() < 1e-4
    with torch.no_grad():
        expected = hf(ids, attention_mask=mask).logits.float()
    assert (batched[0, 12:] - expected[0, 12:]).abs().max() < 1e-4


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 0.1), (torch.float16, 0.02)])
def test_half_precision_close_to_transformers(dtype, tol):
    hf, ours = tiny_pair("llama", dtype=dtype)
    ids = torch.randint(0, 128, (1, 64), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = hf(ids).logits.float()
    out = ours(ids)
    assert ours.lm_head.weight.dtype == dtype and ours.rope.inv_freq.dtype == torch.float32
    assert (out - expected).abs().max().item() < tol


def test_unsupported_model_type_lists_supported():
    cfg = tiny_hf_config("llama").to_dict()
    cfg["model_type"] = "gpt2"
    with pytest.raises(ValueError, match="llama, mistral, qwen2, qwen3"):
        ModelConfig.from_hf(cfg)


def test_unsupported_rope_type_is_named():
    cfg = tiny_hf_config("llama").to_dict()
    cfg["rope_parameters"] = {"rope_type": "fourier", "rope_theta": 1e4}
    with pytest.raises(ValueError, match="fourier"):
        ModelConfig.from_hf(cfg)


def test_legacy_rope_scaling_layout():
    cfg = tiny_hf_config("llama").to_dict()
    cfg.pop("rope_parameters")
    cfg["rope_theta"], cfg["rope_scaling"] = 5e5, {"type": "linear", "factor": 4.0}
    rope = ModelConfig.from_hf(cfg).rope
    assert rope["rope_type"] == "linear" and rope["factor"] == 4.0 and rope["rope_theta"] == 5e5


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_chunked_mlp_matches_transformers(model_type, monkeypatch):
    import asl.models.decoder as decoder

    monkeypatch.setattr(decoder, "MLP_CHUNK", 16)  # 150 tokens: 9 full chunks and a partial one
    hf, ours = tiny_pair(model_type)
    ids = torch.randint(0, 128, (2, 150), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        got = ours(ids)
    with torch.no_grad():
        expected = hf(ids).logits.float()
    assert (got - expected).abs().max().item() < 1e-4


@pytest.mark.parametrize("change, message", [
    (lambda c: c.pop("num_hidden_layers"), "the llama config lacks num_hidden_layers"),
    (lambda c: c.pop("vocab_size"), "lacks vocab_size"),
    (lambda c: c.update(num_attention_heads=0), "config num_attention_heads must be a positive integer, got 0"),
    (lambda c: c.update(hidden_size="64"), "config hidden_size must be a positive integer, got '64'"),
])
def test_a_broken_config_names_the_field(change, message):
    """issue 34: these raised KeyError and ZeroDivisionError."""
    cfg = tiny_hf_config("llama").to_dict()
    change(cfg)
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_hf(cfg)
