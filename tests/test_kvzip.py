"""The evictions that read the prompt again after its prefill (asl.KVzip, asl.KVgrad,
asl.KVCompose; kvpress's KVzipPress, KVgradPress, KVComposePress): their scores against the same
attention written out in float64 from a plain pass of prompt + replay (KVgrad's gradient by
autograd through transformers), their cuts against their definitions on scores made by hand,
and what a generation keeps."""
from __future__ import annotations

import random

import pytest
import torch
from tiny import CharTokenizer, random_text, tiny_pair

import asl
from asl.policies.kvzip import REPEAT_FIRST, REPEAT_NEXT
from asl.prefill import AliveTokens, full_trunk, prefill

TOK = CharTokenizer()
LAYERS = 4


@pytest.fixture(scope="module")
def model():
    return tiny_pair("llama", num_hidden_layers=LAYERS, max_position_embeddings=512, eos_token_id=None)[1]


def replays(model, ids: list[int], chunk: int):
    """Per chunk [start, end): its replay's ids, written out (no chat template: "\n" closes the
    ask), and a plain pass of prompt + replay recording every layer."""
    for start in range(0, len(ids), chunk):
        end = min(start + chunk, len(ids))
        ask = REPEAT_FIRST if start == 0 else REPEAT_NEXT
        quote = ids[max(start - 8, start - chunk):start] if start else []
        replay = TOK(ask)["input_ids"] + quote + TOK("\n")["input_ids"] + ids[start:end]
        both = torch.tensor([ids + replay])
        with torch.inference_mode():  # (not around the yield: the caller's code would run in it)
            trunk = full_trunk(model, AliveTokens.start(both, torch.ones_like(both, dtype=torch.bool)))
        yield start, end, replay, trunk


@torch.inference_mode()
def reference_scores(model, ids: list[int], chunk: int, n_sink: int) -> torch.Tensor:
    """[L, G, n]: per chunk, a plain pass of prompt + replay (the replay attends to the whole
    prompt and itself, as a continuation would); entry j's score is the most any replay query of
    its KV group gives it, the softmax over the sinks, the chunk and the replay up to the query."""
    c = model.config
    n, group = len(ids), c.num_heads // c.num_kv_heads
    out = torch.zeros(LAYERS, c.num_kv_heads, n, dtype=torch.float64)
    for start, end, replay, trunk in replays(model, ids, chunk):
        sinks = list(range(min(n_sink, start)))
        for i in range(LAYERS):
            q, k = trunk.queries[i][0].double(), trunk.keys[i][0].double()
            for t in range(len(replay)):
                seen = sinks + list(range(start, end)) + list(range(n, n + t + 1))
                for h in range(c.num_heads):
                    g = h // group
                    w = torch.softmax(k[g, seen] @ q[h, n + t] / c.head_dim ** 0.5, -1)[len(sinks):len(sinks) + end - start]
                    out[i, g, start:end] = torch.maximum(out[i, g, start:end], w)
    return out


def test_the_replay_scores_are_the_attention_written_out(model):
    ids = TOK(random_text(random.Random(3), 90))["input_ids"]
    policy = asl.KVzip(ratio=0.5, chunk=40, n_sink=4)
    both = torch.tensor([ids])
    pre = prefill(model, both, torch.ones_like(both, dtype=torch.bool), 0)  # the whole prompt's cache
    from asl.policies.kvzip import replay_texts
    ours = policy.scores(model, pre.cache, 0, ids, 0, replay_texts(TOK))
    expected = reference_scores(model, ids, 40, 4)
    assert torch.allclose(ours.double(), expected, rtol=1e-4, atol=1e-6)
    assert float(expected[:, :, 40:80].min()) > 0  # every chunk was scored


def test_the_cut_is_over_all_layers_and_heads_then_per_layer_over_its_heads():
    """Distinct hand-made scores: the int(L G n ratio) lowest of all go (the sinks first scored
    above all), each layer losing as many of its own lowest, across its heads."""
    gen = torch.Generator().manual_seed(4)
    scores = torch.randperm(3 * 2 * 10, generator=gen).float().view(3, 2, 10)
    policy = asl.KVzip(ratio=0.4, n_sink=2)
    kept = policy._kept(scores.clone())
    flat = [(float(scores[i, g, j]) if j >= 2 else 1e9, i, g, j) for i in range(3) for g in range(2) for j in range(10)]
    dropped = {(i, g, j) for _, i, g, j in sorted(flat)[: int(60 * 0.4)]}
    for i in range(3):
        for g in range(2):
            assert [c for c in kept[i][g].tolist() if c >= 0] == [j for j in range(10) if (i, g, j) not in dropped]
    layerwise = asl.KVzip(ratio=0.4, n_sink=2, layerwise=True)._kept(scores.clone())
    assert [int((k >= 0).sum()) for k in layerwise] == [20 - int(20 * 0.4)] * 3


def test_a_generation_keeps_the_share_and_the_sinks(model):
    text = random_text(random.Random(5), 150)
    out = asl.generate(model, TOK, text, max_new_tokens=3, eviction=asl.KVzip(ratio=0.5, chunk=64))
    full = asl.generate(model, TOK, text, max_new_tokens=3)
    assert out.trace.kv_bytes * 2 == full.trace.kv_bytes  # int(4 layers x 2 heads x 150 x 0.5) entries went
    assert len(set(out.trace.kv_tokens)) > 1  # the layers keep different counts
    ids = torch.tensor([TOK(text)["input_ids"]])
    pre = prefill(model, ids, torch.ones_like(ids, dtype=torch.bool), 0, eviction=asl.KVzip(ratio=0.9, chunk=64),
                  tokenizer=TOK)
    for layer in pre.cache.layers:  # the sinks stay, even where nine tenths go
        assert layer.index[0, :, :4].tolist() == [[0, 1, 2, 3]] * model.config.num_kv_heads


def test_refusals_name_what_is_wrong(model):
    ids = torch.tensor([TOK("some context")["input_ids"]])
    with pytest.raises(ValueError, match="needs the tokenizer"):
        prefill(model, ids, torch.ones_like(ids, dtype=torch.bool), 0, eviction=asl.KVzip())
    with pytest.raises(ValueError, match="give it no selection"):
        asl.generate(model, TOK, "some context", max_new_tokens=1, selection=asl.FastKV(layer=1, select_tokens=16, window=4),
                     eviction=asl.KVzip())
    with pytest.raises(ValueError, match="ratio must be a number in"):
        asl.KVzip(ratio=0)
    with pytest.raises(ValueError, match="past the model's 512"):
        asl.generate(model, TOK, random_text(random.Random(1), 300), max_new_tokens=1, eviction=asl.KVzip(chunk=300))


def test_kvgrad_weights_the_replay_by_what_an_entry_writes_and_how_much_that_matters():
    """KVgrad written out: A from the same plain pass as KVzip's reference, ||v W_O|| from the
    output projection's slice of each query head, and ||dPhi/da_p|| by autograd through
    transformers' own model in float64 (its hidden states at the replay, Phi = sum ||h_p||^2)."""
    import copy

    hf, ours = tiny_pair("llama", num_hidden_layers=LAYERS, max_position_embeddings=512, eos_token_id=None)
    hf = copy.deepcopy(hf).double()
    c = ours.config
    group = c.num_heads // c.num_kv_heads
    ids = TOK(random_text(random.Random(6), 70))["input_ids"]
    n, chunk = len(ids), 40
    both = torch.tensor([ids])
    pre = prefill(ours, both, torch.ones_like(both, dtype=torch.bool), 0)
    from asl.policies.kvzip import replay_texts
    got = asl.KVgrad(ratio=0.5, chunk=chunk).scores(ours, pre.cache, 0, ids, 0, replay_texts(TOK))
    expected = torch.zeros(LAYERS, c.num_kv_heads, n, dtype=torch.float64)
    for start, end, replay, trunk in replays(ours, ids, chunk):
        full = torch.tensor([ids + replay])
        written, last = {}, {}
        def keep(i):
            def hook(module, args, out):  # returns None: the output stays
                out.retain_grad()
                written[i] = out
            return hook

        def keep_last(module, args, out):
            last["h"] = out[0] if isinstance(out, tuple) else out

        hooks = [layer.self_attn.o_proj.register_forward_hook(keep(i)) for i, layer in enumerate(hf.model.layers)]
        hooks.append(hf.model.layers[-1].register_forward_hook(keep_last))
        embeds = hf.model.embed_tokens(full).detach().requires_grad_(True)
        hf.model(inputs_embeds=embeds)
        last["h"][0, n:].square().sum().backward()
        for hook in hooks:
            hook.remove()
        sinks = list(range(min(4, start)))
        for i in range(LAYERS):
            q, k = trunk.queries[i][0].double(), trunk.keys[i][0].double()
            values = trunk.values[i][0].double()
            w_o = hf.model.layers[i].self_attn.o_proj.weight.detach().view(c.hidden_size, c.num_heads, c.head_dim)
            sensitivity = written[i].grad[0, n:].norm(dim=-1)
            for t in range(len(replay)):
                seen = sinks + list(range(start, end)) + list(range(n, n + t + 1))
                for h in range(c.num_heads):
                    g = h // group
                    a = torch.softmax(k[g, seen] @ q[h, n + t] / c.head_dim ** 0.5, -1)[len(sinks):len(sinks) + end - start]
                    norm = (values[g, start:end] @ w_o[:, h].T).norm(dim=-1)
                    expected[i, g, start:end] = torch.maximum(expected[i, g, start:end], a * norm * sensitivity[t])
    assert torch.allclose(got.double(), expected, rtol=2e-3, atol=1e-7)
    assert not torch.allclose(got, asl.KVzip(ratio=0.5, chunk=chunk).scores(ours, pre.cache, 0, ids, 0, replay_texts(TOK)))


def test_kvcompose_scores_are_the_second_readings_attention_written_out(model):
    """A plain pass of prompt + prompt: per layer and query head the most any query of the second
    copy gives each entry (softmax over all it sees), the group averaged, the heads' mean added."""
    c = model.config
    group = c.num_heads // c.num_kv_heads
    ids = TOK(random_text(random.Random(7), 60))["input_ids"]
    n = len(ids)
    both = torch.tensor([ids])
    pre = prefill(model, both, torch.ones_like(both, dtype=torch.bool), 0)
    got = asl.KVCompose(ratio=0.5).scores(model, pre.cache, 0, both, 0)
    twice = torch.tensor([ids + ids])
    with torch.inference_mode():
        trunk = full_trunk(model, AliveTokens.start(twice, torch.ones_like(twice, dtype=torch.bool)))
    expected = torch.zeros(LAYERS, c.num_kv_heads, n, dtype=torch.float64)
    for i in range(LAYERS):
        q, k = trunk.queries[i][0].double(), trunk.keys[i][0].double()
        for h in range(c.num_heads):
            most = torch.zeros(n, dtype=torch.float64)
            for t in range(n):
                weights = torch.softmax(k[h // group, : n + t + 1] @ q[h, n + t] / c.head_dim ** 0.5, -1)
                most = torch.maximum(most, weights[:n])
            expected[i, h // group] += most / group
        expected[i] += expected[i].mean(0, keepdim=True)
    assert torch.allclose(got.double(), expected, rtol=1e-4, atol=1e-7)


def test_kvcompose_sizes_layers_by_composite_tokens():
    """Hand-made distinct scores: composite token r of a layer is the mean over its heads of each
    head's r-th best; layer 0's is the most of all layers' at r; the int(L n (1 - ratio)) best
    composites of all layers say how many each layer keeps, every head its own best that many."""
    gen = torch.Generator().manual_seed(9)
    scores = torch.rand(3, 2, 10, generator=gen, dtype=torch.float64).float()
    kept = asl.KVCompose(ratio=0.6).kept(scores.clone())
    ranked = [[sorted(scores[i, g].tolist(), reverse=True) for g in range(2)] for i in range(3)]
    composite = [[sum(ranked[i][g][r] for g in range(2)) / 2 for r in range(10)] for i in range(3)]
    composite[0] = [max(composite[i][r] for i in range(3)) for r in range(10)]
    best = sorted(((composite[i][r], -i, -r) for i in range(3) for r in range(10)), reverse=True)[: int(30 * 0.4)]
    counts = [max(1, sum(1 for _, layer, _ in best if -layer == i)) for i in range(3)]
    for i in range(3):
        for g in range(2):
            top = sorted(range(10), key=lambda j: -float(scores[i, g, j]))[: counts[i]]
            assert [c for c in kept[i][g].tolist() if c >= 0] == sorted(top)
    loose = asl.KVCompose(ratio=0.6, structured=False).kept(scores.clone())
    heads = sorted(((ranked[i][g][r], i, g) for i in range(3) for g in range(2) for r in range(10)),
                   reverse=True)[: int(60 * 0.4)]
    for i in range(3):
        for g in range(2):
            assert int((loose[i][g] >= 0).sum()) == sum(1 for _, li, hg in heads if (li, hg) == (i, g))
