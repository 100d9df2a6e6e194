"""What transformers users bring (issue 34 item 8), on the bundled smollm2-135m against
transformers' own generate on the same weights: the generate keywords and GenerationConfig,
streamers, `with asl.apply(model):`, `asl.export`, and `compress(chat=True)`."""
import io
import threading
from contextlib import redirect_stdout

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, TextIteratorStreamer, TextStreamer

import asl
from asl.generation_settings import DecodeSettings, resolve
from asl.models.loading import resolve_checkpoint

pytestmark = pytest.mark.slow  # the real smollm2-135m in transformers and in asl

CHAT = "What is the capital of France? Answer in one word."
PROSE = "The history of the printing press begins"


@pytest.fixture(scope="module")
def real():
    folder = resolve_checkpoint("smollm2-135m")
    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa").eval()
    tok = AutoTokenizer.from_pretrained(folder)
    return hf, tok


def hf_new_tokens(hf, tok, prompt: str, chat: bool = False, **kwargs) -> list[int]:
    """transformers' greedy answer, cut after its first EOS (asl stops there; transformers pads)."""
    if chat:
        prompt = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=not chat)
    with torch.no_grad():
        out = hf.generate(**ids, do_sample=False, **kwargs)[0, ids["input_ids"].shape[1]:].tolist()
    eos = kwargs.get("eos_token_id", tok.eos_token_id)
    eos = set(eos) if isinstance(eos, list) else {eos}
    cut = next((i + 1 for i, t in enumerate(out) if t in eos), len(out))
    return out[:cut]


@pytest.mark.parametrize("kwargs", [
    dict(max_new_tokens=30, repetition_penalty=1.3),
    dict(max_new_tokens=30, repetition_penalty=0.8),
    dict(max_new_tokens=12, min_new_tokens=12, chat=True),
    dict(max_new_tokens=20, eos_token_id=[30, 2]),  # "." ends the answer
], ids=["penalty>1", "penalty<1", "min_new_tokens", "eos_token_id"])
def test_generate_keywords_give_transformers_greedy_tokens(real, kwargs):
    hf, tok = real
    chat = kwargs.pop("chat", False)
    prompt = CHAT if chat else PROSE
    ours = asl.generate(hf, tok, prompt, chat=chat, **kwargs).tokens
    assert ours == hf_new_tokens(hf, tok, prompt, chat=chat, **kwargs)
    plain = asl.generate(hf, tok, prompt, chat=chat, max_new_tokens=kwargs["max_new_tokens"]).tokens
    assert ours != plain  # each keyword changes this answer: the test would see it ignored


def test_a_generation_config_is_honoured_and_a_keyword_overrides_it(real):
    hf, tok = real
    config = GenerationConfig(max_new_tokens=30, repetition_penalty=1.3, do_sample=False)
    assert asl.generate(hf, tok, PROSE, generation_config=config).tokens == \
        hf_new_tokens(hf, tok, PROSE, max_new_tokens=30, repetition_penalty=1.3)
    assert len(asl.generate(hf, tok, PROSE, generation_config=config, max_new_tokens=5).tokens) == 5
    sampled = GenerationConfig(do_sample=True, temperature=0.8, top_k=20, max_new_tokens=10)
    a = asl.generate(hf, tok, PROSE, generation_config=sampled, seed=3).tokens
    assert a == asl.generate(hf, tok, PROSE, temperature=0.8, top_k=20, max_new_tokens=10, seed=3).tokens
    assert asl.generate(hf, tok, PROSE, generation_config=sampled, do_sample=False).tokens == \
        hf_new_tokens(hf, tok, PROSE, max_new_tokens=10)


def test_resolve_follows_transformers_and_refuses_what_it_cannot_honour():
    assert resolve() == DecodeSettings()
    assert resolve(GenerationConfig(do_sample=True)).temperature == 1.0  # transformers' sampling defaults
    assert resolve(GenerationConfig(do_sample=True)).top_k == 50
    assert resolve(GenerationConfig(do_sample=True, temperature=0.7), temperature=0.0).temperature == 0.0
    assert resolve(GenerationConfig(temperature=0.7)).temperature == 0.0  # do_sample False: greedy
    with pytest.raises(ValueError, match="num_beams=4"):
        resolve(GenerationConfig(num_beams=4))
    with pytest.raises(ValueError, match="max_length=50.*max_new_tokens"):
        resolve(GenerationConfig(max_length=50))
    assert resolve(GenerationConfig(max_length=50), max_new_tokens=7).max_new_tokens == 7
    with pytest.raises(ValueError, match="repetition_penalty must be a number > 0"):
        resolve(repetition_penalty=0)
    with pytest.raises(ValueError, match=r"min_new_tokens \(9\) must not exceed max_new_tokens \(8\)"):
        resolve(max_new_tokens=8, min_new_tokens=9)
    with pytest.raises(ValueError, match="eos_token_id must be a token id"):
        resolve(eos_token_id="</s>")
    with pytest.raises(ValueError, match="generation_config must be a transformers GenerationConfig"):
        resolve({"max_new_tokens": 3})


def test_streamers_receive_the_answer_as_it_is_made(real):
    hf, tok = real
    printer = TextStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    printed = io.StringIO()
    with redirect_stdout(printed):
        out = asl.generate(hf, tok, PROSE, max_new_tokens=15, streamer=printer)
    assert printed.getvalue().strip() == out.text.strip()

    queue = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    result = {}
    worker = threading.Thread(target=lambda: result.update(out=asl.generate(hf, tok, PROSE, max_new_tokens=15,
                                                                            streamer=queue)))
    worker.start()
    pieces = list(queue)  # ends when generate calls end()
    worker.join()
    assert len(pieces) > 1 and "".join(pieces).strip() == result["out"].text.strip()
    with pytest.raises(ValueError, match="streamer works with one prompt"):
        asl.generate(hf, tok, [PROSE, CHAT], streamer=printer)


def test_apply_runs_the_policies_inside_transformers_generate(real):
    hf, tok = real
    tok.padding_side = "left"
    batch = tok([PROSE, "Once upon a time, in a small village by the sea,"], return_tensors="pt", padding=True)
    with torch.no_grad():
        reference = hf.generate(**batch, max_new_tokens=10, do_sample=False)
    with asl.apply(hf) as run:
        full = hf.generate(**batch, max_new_tokens=10, do_sample=False)
    assert torch.equal(full, reference) and len(run.traces) == 1
    assert "generate" not in vars(hf)  # restored

    fastkv = asl.FastKV(layer=6, select_tokens=4, window=2)
    with asl.apply(hf, selection=fastkv) as run:
        pruned = hf.generate(**batch, max_new_tokens=10, do_sample=False)
    expected = asl.generate(hf, tok, [PROSE, "Once upon a time, in a small village by the sea,"], max_new_tokens=10,
                            selection=fastkv)
    width = batch["input_ids"].shape[1]
    for row, tokens in enumerate(expected.tokens):
        assert pruned[row, width:width + len(tokens)].tolist() == tokens
    assert run.trace.sequences[0].alive_tokens[7] == 4  # the layers after 6 ran on the 4 selected tokens
    assert not torch.equal(pruned, reference)


def test_apply_refuses_what_it_cannot_do_and_always_restores(real):
    hf, tok = real
    ids = tok(PROSE, return_tensors="pt")
    with asl.apply(hf):
        with pytest.raises(ValueError, match="does not support num_beams"):
            hf.generate(**ids, max_new_tokens=4, num_beams=2)
        with pytest.raises(ValueError, match="already replaced"):
            with asl.apply(hf):
                pass
    with pytest.raises(RuntimeError, match="boom"):
        with asl.apply(hf):
            raise RuntimeError("boom")
    assert "generate" not in vars(hf)
    with pytest.raises(ValueError, match="left padding"):
        with asl.apply(hf):
            hf.generate(input_ids=ids["input_ids"], attention_mask=torch.tensor([[1] * 3 + [0] * 4]),
                        max_new_tokens=2)
    with pytest.raises(ValueError, match="asl.apply takes a transformers model"):
        with asl.apply(asl.load("smollm2-135m", dtype="float32")[0]):
            pass


def test_export_writes_a_folder_transformers_loads(real, tmp_path):
    hf, tok = real
    asl.export("smollm2-135m", tmp_path / "bundled")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "bundled").eval()
    assert hf_new_tokens(again, AutoTokenizer.from_pretrained(tmp_path / "bundled"), PROSE, max_new_tokens=8) == \
        hf_new_tokens(hf, tok, PROSE, max_new_tokens=8)

    decoder, tokenizer = asl.load("smollm2-135m", dtype="float32")
    with torch.no_grad():
        decoder.layers[3].mlp.down_proj.weight.mul_(0.5)  # a user's edit travels with the export
    asl.export(decoder, tmp_path / "edited", tokenizer=tokenizer)
    edited = AutoModelForCausalLM.from_pretrained(tmp_path / "edited").eval()
    ids = torch.tensor([tokenizer(PROSE)["input_ids"]])
    with torch.no_grad():
        assert (edited(ids).logits[0] - decoder(ids)[0]).abs().max() < 1e-3
        assert (hf(ids).logits[0] - decoder(ids)[0]).abs().max() > 1e-2

    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="busy exists and is not empty"):
        asl.export("smollm2-135m", tmp_path / "busy")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundled", "busy", "edited"]  # nothing half-written


def test_compress_with_chat_answers_as_the_whole_chat_prompt(real):
    hf, tok = real
    context = "Paris is the capital of France. Berlin is the capital of Germany."
    question = " Which city is the capital of Germany? Answer in one word."
    whole = asl.generate(hf, tok, context + question, chat=True, max_new_tokens=12)
    compressed = asl.compress(hf, tok, context, chat=True)
    assert asl.generate(hf, tok, question, cache=compressed, chat=True, max_new_tokens=12).tokens == whole.tokens
    with pytest.raises(ValueError, match="pass chat=True"):
        asl.generate(hf, tok, question, cache=compressed)
    with pytest.raises(ValueError, match="compressed without its chat template"):
        asl.generate(hf, tok, question, cache=asl.compress(hf, tok, context), chat=True)
