"""LazyLLM (asl.LazyLLM, asl/revival.py) against LazyLLM's algorithm written out token by token
(Fu et al., arXiv 2407.14057, section 3): progressive pruning by the current token's attention,
a new selection at every generation step, pruned tokens resumed from their hidden states and
computed at most once per layer."""
from __future__ import annotations

import math
import random

import pytest
import torch

import asl
from asl.revival import Revival
from tiny import CharTokenizer, random_text, tiny_pair

TOK = CharTokenizer()
LAYERS = 8
CUT_MARGIN, ARGMAX_MARGIN = 1e-7, 1e-4  # attention probabilities, logits: a closer call is a near-tie (near_ties.py)


@pytest.fixture(scope="module")
def model():
    return tiny_pair("qwen2", num_hidden_layers=LAYERS, max_position_embeddings=512, eos_token_id=None)[1]


def prompt(seed: int, n: int) -> str:
    return random_text(random.Random(seed), n)


@torch.no_grad()
def reference(model, ids: list[int], n: int, layers: dict[int, float]):
    """LazyLLM over prompt ids[:n] then the generated ids[n:] (teacher-forced): per step, the
    logits of its current token and, per pruning layer, the positions it keeps; plus whether a
    cut or an argmax was a near-tie. Written per token with explicit softmaxes in float64."""
    c = model.config
    group, scale = c.num_heads // c.num_kv_heads, 1 / math.sqrt(c.head_dim)
    kv = [dict() for _ in range(LAYERS)]  # layer -> {position: (k [G, d], v [G, d])}, each computed once
    hidden: dict[int, tuple[int, torch.Tensor]] = {}  # position -> (the last layer it ran, its output there)
    steps, near = [], False
    for current in range(n - 1, len(ids)):
        news = range(n) if current == n - 1 else [current]
        for p in news:
            h, _ = model.embed(torch.tensor([[ids[p]]]), torch.tensor([[p]]))
            hidden[p] = (-1, h[0, 0])
        selected = list(range(current + 1))
        chosen = {}
        for j, layer in enumerate(model.layers):
            todo = [p for p in selected if p not in kv[j]]
            assert all(hidden[p][0] == j - 1 for p in todo)
            x = torch.stack([hidden[p][1] for p in todo])[None]
            q, k, v = layer.project(x, *model.tables(torch.tensor([todo]), x.dtype))
            for i, p in enumerate(todo):
                kv[j][p] = (k[0, :, i].double(), v[0, :, i].double())
            out = torch.zeros(len(todo), c.num_heads * c.head_dim, dtype=torch.float64)
            for i, p in enumerate(todo):
                seen = [s for s in selected if s <= p]
                for head in range(c.num_heads):
                    keys = torch.stack([kv[j][s][0][head // group] for s in seen])
                    values = torch.stack([kv[j][s][1][head // group] for s in seen])
                    probs = torch.softmax(keys @ q[0, head, i].double() * scale, 0)
                    out[i, head * c.head_dim:(head + 1) * c.head_dim] = probs @ values
            x = layer.finish(x, out.to(x.dtype)[None])
            for i, p in enumerate(todo):
                hidden[p] = (j, x[0, i])
            if j in layers:  # the current token's attention over the selected, averaged over heads
                qc = q[0, :, todo.index(current)].double()
                keys = torch.stack([kv[j][s][0] for s in selected])  # [m, G, d]
                score = torch.stack([torch.softmax(keys[:, head // group] @ qc[head] * scale, 0)
                                     for head in range(c.num_heads)]).mean(0)
                score[selected.index(current)] = float("inf")
                order = sorted(range(len(selected)), key=lambda i: (-float(score[i]), selected[i]))
                k = len(selected) - int((1 - layers[j]) * len(selected))
                if k < len(selected):
                    near |= abs(float(score[order[k - 1]]) - float(score[order[k]])) < CUT_MARGIN
                selected = sorted(selected[i] for i in order[:k])
                chosen[j] = selected
        logits = model.logits(hidden[current][1][None]).double()[0]
        top = logits.topk(2).values
        near |= float(top[0] - top[1]) < ARGMAX_MARGIN
        steps.append((logits, chosen))
    return steps, near


class Recording(Revival):
    """The revival, recording each step's choices at the pruning layers and its logits."""

    log: list = []

    def _one(self, model, b, token, position):
        Recording.log.append({})
        return super()._one(model, b, token, position)

    @staticmethod
    def _select(q_last, keys, held, seen, position, share):
        kept = Revival._select(q_last, keys, held, seen, position, share)
        Recording.log[-1][len(Recording.log[-1])] = kept.tolist()
        return kept


@pytest.mark.parametrize("seed,keep", [(1, 0.7), (2, 0.5), (4, (0.8, 0.6, 0.4))])
def test_lazyllm_equals_the_algorithm_written_out(model, monkeypatch, seed, keep):
    text, new = prompt(seed, 90), 12
    policy = asl.LazyLLM(keep=keep)
    monkeypatch.setattr(asl.generation, "Revival", Recording)
    Recording.log = []
    out = asl.generate(model, TOK, text, max_new_tokens=new, selection=policy)
    layers = dict(zip((1, 3, 5), keep if isinstance(keep, tuple) else (keep,) * 3))
    ids = TOK(text)["input_ids"]
    n = len(ids)
    steps, near = reference(model, ids + out.tokens[:-1], n, layers)
    assert not near, "a near-tie: choose another seed"
    assert [int(logits.argmax()) for logits, _ in steps] == out.tokens  # teacher-forced: every step's own token
    # the prefill: the alive counts of the reference's first step; each decoding step: its choices
    assert out.trace.alive_tokens == [n] * 2 + [len(steps[0][1][1])] * 2 + [len(steps[0][1][3])] * 2 + \
        [len(steps[0][1][5])] * 2
    assert out.trace.kept_indices == steps[0][1][5]
    assert [list(step.values()) for step in Recording.log] == [list(chosen.values()) for _, chosen in steps[1:]]
    revived = out.trace.sequences[0].revived_token_layers
    assert revived > 0  # later steps chose tokens the prefill had pruned


def test_no_token_is_computed_twice_at_a_layer(model, monkeypatch):
    states = []
    real = Revival.__init__
    monkeypatch.setattr(Revival, "__init__", lambda self, *a: (real(self, *a), states.append(self))[0])
    out = asl.generate(model, TOK, prompt(5, 120), max_new_tokens=16, selection=asl.LazyLLM(keep=0.4))
    (state,) = states
    for rows in state.layers[0]:
        held = rows[2].tolist()
        assert len(held) == len(set(held))  # each (token, layer) once
    assert out.trace.sequences[0].peak_kv_tokens == [len(rows[2]) for rows in state.layers[0]]
    assert out.trace.sequences[0].revived_token_layers == \
        sum(len(rows[2]) for rows in state.layers[0]) - sum(out.trace.kv_tokens) - LAYERS * (len(out.tokens) - 1)


def test_keeping_everything_is_the_full_cache(model):
    text = prompt(6, 100)
    full = asl.generate(model, TOK, text, max_new_tokens=16)
    for revive in (True, False):
        out = asl.generate(model, TOK, text, max_new_tokens=16, selection=asl.LazyLLM(keep=1.0, revive=revive))
        assert out.tokens == full.tokens and out.trace.alive_tokens == full.trace.alive_tokens


def test_the_static_form_keeps_the_prefills_choice(model):
    text = prompt(7, 100)
    static = asl.generate(model, TOK, text, max_new_tokens=8, selection=asl.LazyLLM(keep=0.5, revive=False))
    lazy = asl.generate(model, TOK, text, max_new_tokens=8, selection=asl.LazyLLM(keep=0.5))
    assert static.trace.alive_tokens == lazy.trace.alive_tokens  # the same prefill
    assert static.trace.sequences[0].revived_token_layers == 0 < lazy.trace.sequences[0].revived_token_layers
    composed = asl.generate(model, TOK, text, max_new_tokens=8, selection=asl.LazyLLM(keep=0.5, revive=False),
                            eviction=asl.SnapKV(budget=24, window=4))
    assert max(composed.trace.kv_tokens) <= 24


def test_bad_settings_are_refused_before_any_work(model):
    for kwargs, message in [({"keep": 0}, "keep must be a share in"), ({"keep": (0.5, 1.2)}, "keep must be a share"),
                            ({"layers": (3, 1)}, "layers must be None or increasing"),
                            ({"layers": (1, 3), "keep": (0.5,)}, "keep has 1 shares for 2 pruning layers"),
                            ({"revive": "yes"}, "revive must be True or False")]:
        with pytest.raises(ValueError, match=message):
            asl.LazyLLM(**kwargs)
    with pytest.raises(ValueError, match="pruning after the last layer"):
        asl.generate(model, TOK, "hello there", selection=asl.LazyLLM(layers=(2, LAYERS - 1)))
    with pytest.raises(ValueError, match="keep has 2 shares for the 3 pruning layers"):
        asl.generate(model, TOK, "hello there", selection=asl.LazyLLM(keep=(0.5, 0.5)))
    with pytest.raises(ValueError, match=r"revive=True\) decodes with its own step.*no eviction \(SnapKV\)"):
        asl.generate(model, TOK, "hello there", selection=asl.LazyLLM(), eviction=asl.SnapKV())
    with pytest.raises(ValueError, match="no compile"):
        asl.generate(model, TOK, "hello there", selection=asl.LazyLLM(), compile=True)
    with pytest.raises(ValueError, match="give asl.compress revive=False"):
        asl.compress(model, TOK, "some context here", selection=asl.LazyLLM())
