"""Every script in examples/ runs on the bundled model and does what its docstring says."""
import runpy
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every example on the real model (make test-fast leaves them out)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = sorted(p.stem for p in EXAMPLES.glob("*.py") if not p.stem.startswith("_"))


@pytest.fixture
def run(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))

    def main(name: str, **kwargs):
        if name != "transformers_model":  # float32: equalities such as batch == one by one hold on any CPU
            kwargs.setdefault("dtype", "float32")
        return runpy.run_path(str(EXAMPLES / f"{name}.py"))["main"]("smollm2-135m", **kwargs)

    return main


def test_every_example_is_tested():
    tested = {name.removeprefix("test_") for name in globals() if name.startswith("test_")}
    assert set(SCRIPTS) <= tested, set(SCRIPTS) - tested
    assert len(SCRIPTS) >= 5


def test_custom_selection(run):
    out, full = run("custom_selection", max_new_tokens=3)
    layer, n = out.trace.selection_layer, out.trace.alive_tokens[0]
    assert out.trace.alive_tokens == [n] * (layer + 1) + [96] * (len(out.trace.alive_tokens) - layer - 1)
    assert n - 1 in out.trace.kept_indices and full.trace.alive_tokens == [n] * len(out.trace.alive_tokens)


def test_custom_eviction(run):
    out, full = run("custom_eviction", max_new_tokens=3)
    assert max(out.trace.kv_tokens) == 128 < out.trace.sequences[0].prompt_tokens
    assert out.trace.kv_bytes * out.trace.sequences[0].prompt_tokens == full.trace.kv_bytes * 128


def test_batch(run):
    batch, alone = run("batch", max_new_tokens=3)
    assert batch.tokens == [a.tokens for a in alone]
    assert len({s.prompt_tokens for s in batch.trace.sequences}) == 3


def test_transformers_model(run):
    out, theirs = run("transformers_model", max_new_tokens=3)
    assert out.trace.selection_layer is not None and len(out.tokens) == len(theirs) == 3


def test_compress_once(run, monkeypatch):
    import asl
    from _text import FACTS, context, question

    compressed, answers, aware, reused = run("compress_once", max_new_tokens=3)
    assert max(max(h) for h in compressed.kv_tokens_per_head) == 256 < compressed.context_tokens
    assert len(answers.text) == len(aware) == len(reused.text) == 3
    model, tokenizer = asl.load("smollm2-135m", dtype="float32")  # the reused full cache answers as a fresh prefill
    fresh = asl.generate(model, tokenizer, context(60) + question(next(iter(FACTS))), max_new_tokens=3)
    assert reused.tokens[0] == fresh.tokens
