"""A model placed across devices (a transformers device_map): the prefill and decode loops move
the hidden state, the tokens' records and the RoPE tables where a layer's device changes. A CPU
has one device, so the test makes the loops see a change at every layer ("cpu" and "cpu:0"
compare unequal, and both are the CPU): every move runs, and the answers must not change."""
import torch
import transformers

import asl
from asl.models.decoder import Decoder
from asl.prefill import AliveTokens
from tiny import CharTokenizer, tiny_hf_config

TEXT = "a model split across devices keeps each layer's cache on its own device " * 2


def test_from_transformers_takes_a_model_with_a_device_map_and_answers_the_same(monkeypatch):
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(tiny_hf_config("gemma3_text", eos_token_id=None),
                                                       attn_implementation="sdpa").eval()
    hf.hf_device_map = {"model.embed_tokens": "cpu", **{f"model.layers.{i}": "cpu" for i in range(4)},
                        "model.norm": "cpu", "lm_head": "cpu"}  # what accelerate records of a split
    ours = asl.from_transformers(hf)
    policies = dict(selection=asl.FastKV(layer=2, select_tokens=60, window=4), eviction=asl.SnapKV(budget=40, window=4))
    one = asl.generate(hf, CharTokenizer(), TEXT, max_new_tokens=12, **policies)
    with torch.no_grad():
        expected = hf(torch.tensor([CharTokenizer()(TEXT)["input_ids"]])).logits.float()

    moves = []
    real_to = AliveTokens.to
    monkeypatch.setattr(AliveTokens, "to", lambda self, device: moves.append(device) or real_to(self, device))
    monkeypatch.setattr(Decoder, "layer_device", lambda self, i: torch.device("cpu", 0) if i % 2 else torch.device("cpu"))
    split = asl.generate(hf, CharTokenizer(), TEXT, max_new_tokens=12, **policies)
    assert moves == [torch.device("cpu", 0)] * 2  # into layers 1 and 3 (a tensor moved to "cpu:0" is on "cpu")
    assert split.tokens == one.tokens and split.trace.kv_tokens == one.trace.kv_tokens
    assert split.trace.alive_tokens == one.trace.alive_tokens
    assert (ours(torch.tensor([CharTokenizer()(TEXT)["input_ids"]])) - expected).abs().max() < 1e-4
