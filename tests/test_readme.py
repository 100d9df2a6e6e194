"""The README's "Write your own policy" example runs as written, and does what it says."""
import random
import re
from pathlib import Path

import pytest

import asl
from test_real_model import prose_prompt
from tiny import CharTokenizer, random_text, tiny_pair

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_class(name: str, preamble: str = ""):
    """The class `name` defined by a python block of the README's "Write your own policy" section,
    with the block's line count."""
    section = README.read_text().split("## Write your own policy", 1)[1].split("\n## ", 1)[0]
    source = next(b for b in re.findall(r"```python\n(.*?)```", section, re.S) if f"class {name}(" in b)
    namespace = {}
    exec(compile(preamble + source, str(README), "exec"), namespace)
    return namespace[name], len(source.strip().splitlines())


@pytest.fixture(scope="module")
def StableTopK():
    policy, lines = readme_class("StableTopK")
    assert lines <= 35  # one small subclass
    return policy


def test_readme_scorer_in_eight_lines_keeps_the_lowest_norm_keys():
    from test_policies import Recorder

    KeyNorm, lines = readme_class("KeyNorm", "from dataclasses import dataclass\nimport asl\n")
    assert lines <= 8
    _, model = tiny_pair("llama", num_hidden_layers=3, eos_token_id=None)
    n, budget, window = 100, 30, 6
    rec = Recorder(inner=KeyNorm(budget=budget, window=window))
    out = asl.generate(model, CharTokenizer(), random_text(random.Random(3), n), max_new_tokens=2, eviction=rec)
    assert out.trace.kv_tokens == [budget] * 3
    for seen in rec.seen:  # by hand: per KV head, the budget - window smallest key norms, then the window
        norms = seen["k"][0, :, : n - window].float().norm(dim=-1)
        for head, kept in enumerate(seen["keep"][0].tolist()):
            lowest = sorted(range(n - window), key=lambda j: (norms[head, j].item(), j))[: budget - window]
            assert kept == sorted(lowest) + list(range(n - window, n))


def test_readme_policy_on_the_real_model(StableTopK):
    model, tok = asl.load("smollm2-135m", dtype="float32")
    out = asl.generate(model, tok, prose_prompt(tok, 300), max_new_tokens=4,
                       selection=StableTopK(select_tokens=64, window=8))
    layer, n = out.trace.selection_layer, out.trace.alive_tokens[0]
    assert layer is not None and 0 < layer < model.config.num_layers - 1
    assert out.trace.alive_tokens == [n] * (layer + 1) + [64] * (model.config.num_layers - layer - 1)
    assert set(range(n - 8, n)) <= set(out.trace.kept_indices)


def test_readme_policy_in_a_batch(StableTopK):
    _, model = tiny_pair("llama", num_hidden_layers=8, eos_token_id=None)
    texts = [random_text(random.Random(0), 120), random_text(random.Random(1), 90)]
    policy = StableTopK(select_tokens=48, window=4, overlap=0.6)
    out = asl.generate(model, CharTokenizer(), texts, max_new_tokens=4, selection=policy)
    assert all(s.selection_layer is not None for s in out.trace.sequences)
    assert [s.alive_tokens[-1] for s in out.trace.sequences] == [48, 48]


def test_readme_policy_leaves_a_short_prompt_of_a_batch_whole(StableTopK):
    # A 37-token prompt has fewer real tokens than the policy keeps: in a batch it must not
    # select padding, and the batch must equal its sequences one by one.
    _, model = tiny_pair("llama", num_hidden_layers=8, eos_token_id=None)
    texts = [random_text(random.Random(0), 120), random_text(random.Random(1), 37)]
    batch = asl.generate(model, CharTokenizer(), texts, max_new_tokens=4, selection=StableTopK(48, 4, 0.6))
    alone = [asl.generate(model, CharTokenizer(), t, max_new_tokens=4, selection=StableTopK(48, 4, 0.6)) for t in texts]
    assert batch.tokens == [a.tokens for a in alone]
    long, short = batch.trace.sequences
    assert long.alive_tokens[-1] == 48
    assert short.alive_tokens == alone[1].trace.alive_tokens and short.kept_indices == list(range(short.prompt_tokens))
