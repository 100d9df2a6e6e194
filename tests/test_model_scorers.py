"""The scorers that read the model besides q/k/v (expected attention: RoPE; CriticalKV: the
output projection) and CUR's leverage, on small hand-made layers: each kept set computed here
from the paper's formula, in float64 with plain loops and explicit rotation matrices."""
from __future__ import annotations

import math

import pytest
import torch

import asl
from asl.models.rope import apply_rope
from asl.policies import LayerView
from test_kv_scorers import D, G, H, assert_top, kept

HIDDEN = 12
INV_FREQ = [1.0 / 10000 ** (2 * i / D) for i in range(D // 2)]


def rope(positions: torch.Tensor, dtype: torch.dtype):
    """cos/sin [B, n, D] of plain RoPE (theta 10000), as the model's `rope` gives them."""
    freqs = positions.double()[..., None] * torch.tensor(INV_FREQ, dtype=torch.float64)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def model_layer(n: int, seed: int, pad: int = 0):
    """A layer of n real tokens after `pad` pads: its view (post-RoPE queries, as the prefill
    gives them) and the pre-RoPE queries [H, n, D] the formula starts from."""
    gen = torch.Generator().manual_seed(seed)
    width = pad + n
    pre = torch.randn(1, H, width, D, generator=gen)
    k, v = torch.randn(1, G, width, D, generator=gen), torch.randn(1, G, width, D, generator=gen)
    valid = torch.arange(width)[None] >= pad
    index = (torch.arange(width) - pad).clamp(min=0)[None]
    cos, sin = rope(index, torch.float32)
    out_proj = torch.randn(HIDDEN, H * D, generator=gen)
    view = LayerView(0, apply_rope(pre, cos, sin), k, v, index.clone(), index, valid, rope=rope, out_proj=out_proj)
    return view, pre[0, :, pad:].double()


def rotation(position: int) -> torch.Tensor:
    """RoPE's rotation at one position as a D x D matrix: pairs (i, i + D/2) turn by position * freq_i."""
    r = torch.zeros(D, D, dtype=torch.float64)
    half = D // 2
    for i, f in enumerate(INV_FREQ):
        c, s = math.cos(position * f), math.sin(position * f)
        r[i, i], r[i, i + half], r[i + half, i], r[i + half, i + half] = c, -s, s, c
    return r


def head_inputs(view, pre, g: int, future: int):
    """One KV head's real keys and values (float64), the prompt's length, and RoPE's rotation
    averaged over the `future` positions after it."""
    pad, n = view.width - int(view.alive[0]), pre.shape[1]
    keys, values = view.keys[0, g, pad:].double(), view.values[0, g, pad:].double()
    return keys, values, n, sum(rotation(n + f) for f in range(future)) / future


def expected_by_hand(view, pre, g: int, sink: int, future: int, covariance: bool, vnorm: bool) -> list[float]:
    """One KV head's expected-attention scores over the real entries (the paper's eq., kvpress's code)."""
    keys, values, n, rot = head_inputs(view, pre, g, future)
    per_head = []
    for h in range(g * (H // G), (g + 1) * (H // G)):
        q = pre[h, sink:]
        mean = q.mean(0)
        cov = sum(torch.outer(x - mean, x - mean) for x in q) / q.shape[0]
        mean, cov = rot @ mean, rot @ cov @ rot.T
        logits = [float(keys[j] @ mean) / math.sqrt(D) + (float(keys[j] @ cov @ keys[j]) / D / 2 if covariance else 0)
                  for j in range(sink, n)]
        top = max(logits)
        e = [math.exp(x - top) for x in logits]
        per_head.append([x / sum(e) for x in e])
    scores = [sum(col) / len(per_head) for col in zip(*per_head)]
    if vnorm:
        scores = [s * float(values[sink + j].norm()) for j, s in enumerate(scores)]
    return [max(scores) + 1] * sink + scores


@pytest.mark.parametrize("covariance, vnorm, pad", [(True, True, 0), (False, True, 3), (True, False, 2)])
def test_expected_attention_follows_the_gaussian_query_formula(covariance, vnorm, pad):
    view, pre = model_layer(28, 1, pad)
    policy = asl.ExpectedAttention(budget=12, window=2, n_sink=3, n_future_positions=9,
                                   use_covariance=covariance, use_vnorm=vnorm)
    for g, ours in enumerate(kept(policy, view)):
        scores = expected_by_hand(view, pre, g, 3, 9, covariance, vnorm)
        assert_top(ours, scores[:26], 10, 2)


def test_expected_attention_undoes_rope_to_read_the_queries():
    view, pre = model_layer(10, 2)
    assert torch.allclose(view.prerope_queries()[0].double(), pre, atol=1e-5)


def test_a_scorer_that_needs_the_model_says_so_on_a_bare_view():
    view, _ = model_layer(10, 3)
    bare = LayerView(0, view.queries, view.keys, view.values, view.positions, view.index, view.valid)
    with pytest.raises(ValueError, match="ExpectedAttention reads the model's rope"):
        asl.ExpectedAttention(budget=4, window=1).keep(0, bare)
    with pytest.raises(ValueError, match="CriticalKV reads the model's out_proj"):
        asl.CriticalKV(asl.KNorm(budget=4, window=1)).keep(0, bare)


def cur_by_hand(values: torch.Tensor, keys: torch.Tensor, sink: int, block: int) -> list[float]:
    """kv_product leverage of one head with local normalisation (kvpress's CURPress.score)."""
    n = keys.shape[0]

    def local(x):
        out = []
        for start in range(0, n, block):
            part = x[start:start + block]
            out += [v / sum(part) for v in part]
        return out

    k2 = local([float(k.double().square().sum()) for k in keys])
    v2 = local([float(v.double().square().sum()) for v in values])
    product = [a * b for a, b in zip(k2, v2)]
    return [1.0] * sink + [p / sum(product) for p in product][sink:]


@pytest.mark.parametrize("pad", [0, 4])
def test_cur_keeps_the_highest_key_and_value_leverage(pad):
    view, _ = model_layer(37, 4, pad)  # blocks of 8 that do not divide 37
    policy = asl.CUR(budget=15, window=3, num_sinks=2, local_window_size=8)
    for g, ours in enumerate(kept(policy, view)):
        scores = cur_by_hand(view.values[0, g, pad:], view.keys[0, g, pad:], 2, 8)
        assert_top(ours, scores[:34], 12, 3)


@pytest.mark.parametrize("ratio", [None, 0.5])
def test_criticalkv_keeps_the_scorer_first_then_weights_by_the_projected_value(ratio):
    n, window, budget, fsr = 30, 2, 14, 0.5
    view, _ = model_layer(n, 5, pad=1)
    inner = asl.CUR(budget=budget, window=window, num_sinks=0, leverage_type="key", use_local_approximation=False,
                    ratio=ratio)
    policy = asl.CriticalKV(inner, first_stage_ratio=fsr)
    count = (budget - window) if ratio is None else int(n * (1 - ratio)) - window
    first = int((budget - window) * fsr) if ratio is None else max(1, int((1 - ratio) * n * fsr))
    wo = view.out_proj.double().T.reshape(H, D, HIDDEN)
    for g, ours in enumerate(kept(policy, view)):
        keys, values = view.keys[0, g, 1:].double(), view.values[0, g, 1:].double()
        base = [float(k.square().sum()) for k in keys]
        base = [b / sum(base) for b in base][: n - window]
        weight = [sum(float((values[j] @ wo[h]).abs().sum()) for h in range(g * (H // G), (g + 1) * (H // G))) / (H // G)
                  for j in range(n - window)]
        stage_one = set(sorted(range(n - window), key=lambda j: -base[j])[:first])
        scores = [1e300 if j in stage_one else (base[j] + 1e-4) * weight[j] for j in range(n - window)]
        assert_top(ours, scores, count, window)


@pytest.mark.parametrize("make, match", [
    (lambda: asl.ExpectedAttention(n_future_positions=0), "n_future_positions must be an integer >= 1"),
    (lambda: asl.ExpectedAttention(epsilon=-1), "epsilon must be a number >= 0"),
    (lambda: asl.CUR(leverage_type="both"), "leverage_type must be one of"),
    (lambda: asl.CUR(local_window_size=0), "local_window_size must be an integer >= 1"),
    (lambda: asl.CriticalKV(asl.KNorm(), first_stage_ratio=2), r"first_stage_ratio must be a number in \[0, 1\]"),
    (lambda: asl.CriticalKV(asl.AdaKV(asl.KNorm())), "CriticalKV wraps a scorer eviction"),
])
def test_bad_parameters_are_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_criticalkv_takes_its_scorers_budget_and_composes_under_an_allocator():
    inner = asl.SnapKV(budget=64, window=8)
    critical = asl.CriticalKV(inner)
    assert (critical.budget, critical.window, critical.ratio) == (64, 8, None)
    assert asl.AdaKV(critical).budget == 64


def test_finch_scores_by_the_questions_normalised_attention():
    from asl.policies import PrefillInfo
    from test_kv_scorers import causal_attention, layer

    n, w = 26, 5
    view = layer(n, 16)
    p = causal_attention(view)
    policy = asl.Finch(budget=12).per_call()
    policy.begin(PrefillInfo(1, H, G, D, (n,), question_tokens=(w,)))
    assert policy.window == w and asl.Finch().window is None  # set on the call's copy only
    for g, ours in enumerate(kept(policy, view)):
        group = range(g * (H // G), (g + 1) * (H // G))
        scores = [sum(p[h][n - w + i][j] * (n - w + i) for h in group for i in range(w)) for j in range(n - w)]
        assert_top(ours, scores, 12 - w, w)
    with pytest.raises(ValueError, match="Finch\\(window=None\\) scores by the question"):
        asl.Finch().per_call().begin(PrefillInfo(1, H, G, D, (n,)))


@pytest.mark.parametrize("pad", [0, 3])
def test_finch_by_chunks_keeps_each_chunks_share_and_the_question(pad):
    from test_kv_scorers import causal_attention, layer

    n, w, chunk, ratio = 47, 5, 12, 0.5  # chunks of 12, 12, 12 and 11, the last holding the question
    view = layer(n, 17, pad)
    real = LayerView(0, *(x[:, :, pad:] for x in (view.queries, view.keys, view.values)),
                     *(x[:, pad:] for x in (view.positions, view.index, view.valid)))
    p = causal_attention(real)  # by the definition, over the real tokens
    policy = asl.Finch(ratio=ratio, window=w, chunk_length=chunk)
    for g, ours in enumerate(kept(policy, view)):
        group = range(g * (H // G), (g + 1) * (H // G))
        scores = [sum(p[h][n - w + i][j] * (n - w + i) for h in group for i in range(w)) for j in range(n - w)]
        scores += [max(scores) * 2 + 1] * w  # the question above every entry
        for start in range(0, n, chunk):
            part = scores[start:start + chunk]
            count = max(1, int(len(part) * (1 - ratio)))
            inside = [c - start for c in ours if start <= c < start + chunk]
            cut = sorted(part, reverse=True)[count - 1]
            assert len(inside) == count
            assert {j for j, x in enumerate(part) if x > cut * (1 + 1e-6)} <= set(inside) <= \
                {j for j, x in enumerate(part) if x >= cut * (1 - 1e-6)}
        assert set(range(n - w, n)) <= set(ours)


def test_finch_takes_the_question_hint_as_its_window_and_rerotates():
    from tiny import CharTokenizer, tiny_pair

    model, tok = tiny_pair("qwen2", num_hidden_layers=3, eos_token_id=None)[1], CharTokenizer()
    context, question = "the quick brown fox jumps over the lazy dog " * 4, "what jumps?"
    compressed = asl.compress(model, tok, context, eviction=asl.Finch(budget=40), question_hint=question)
    q = len(tok(question, add_special_tokens=False)["input_ids"])
    assert compressed.next_position == 40 - q  # re-rotated: the context's kept entries, the hint's dropped
    assert compressed.kv_tokens_per_head == [[40 - q] * model.config.num_kv_heads] * model.config.num_layers
    with pytest.raises(ValueError, match="question_hint"):
        asl.compress(model, tok, context, eviction=asl.Finch(budget=40))


def test_prerope_queries_and_expected_attention_on_a_partial_rotary_model():
    from tiny import tiny_pair

    _, model = tiny_pair("phi3", "partial", num_hidden_layers=2)
    rope = model.rope
    gen = torch.Generator().manual_seed(17)
    pre = torch.randn(1, 4, 10, 16, generator=gen)
    positions = torch.arange(10)[None]
    cos, sin = rope(positions, torch.float32)
    view = LayerView(0, apply_rope(pre, cos, sin), torch.randn(1, 2, 10, 16, generator=gen),
                     torch.randn(1, 2, 10, 16, generator=gen), positions, positions,
                     torch.ones(1, 10, dtype=torch.bool), rope=rope)
    assert cos.shape[-1] == 12
    torch.testing.assert_close(view.prerope_queries(), pre, atol=1e-5, rtol=1e-5)
    from asl.policies.expected_attention import mean_rotation

    rot = mean_rotation(rope, torch.tensor([10]), 3, 16)[0]
    assert torch.equal(rot[12:, 12:], torch.eye(4)) and torch.equal(rot[:12, 12:], torch.zeros(12, 4))
    cos3, sin3 = rope(torch.arange(10, 13)[None], torch.float32)
    x = torch.randn(16, generator=gen)
    turned = sum(apply_rope(x.view(1, 1, 1, 16), cos3[:, f:f + 1], sin3[:, f:f + 1]).flatten() for f in range(3)) / 3
    torch.testing.assert_close(rot @ x, turned, atol=1e-5, rtol=1e-5)  # the average of the three rotations


# -- Compactor's scorers (kvpress's LeverageScorePress, NonCausalAttnPress, CompactorPress) --------------

def assert_top_within(ours: list[int], scores: list[float], count: int, tol: float = 1e-4) -> None:
    """`ours` holds the `count` best scores, up to scores within `tol` of the cut (z-scores: float32
    Cholesky and softmax sums differ from float64 by far less)."""
    assert len(ours) == count
    cut = sorted(scores, reverse=True)[count - 1]
    assert {j for j, s in enumerate(scores) if s > cut + tol} <= set(ours) <= {j for j, s in enumerate(scores)
                                                                               if s >= cut - tol}


def zscore(rows: list[list[float]]) -> list[list[float]]:
    flat = [x for row in rows for x in row]
    mean = sum(flat) / len(flat)
    std = math.sqrt(sum((x - mean) ** 2 for x in flat) / (len(flat) - 1))
    return [[(x - mean) / std for x in row] for row in rows]


def leverage_by_hand(view, cols: range, sketch) -> list[list[float]]:
    """Per KV head, diag(X (X^T X + 0.01 I)^-1 X^T) of the centred pre-RoPE keys (sketched), z-scored."""
    pad = view.width - int(view.alive[0])
    out = []
    for g in range(G):
        keys = torch.stack([rotation(j).T @ view.keys[0, g, pad + j].double() for j in cols])  # RoPE undone
        x = keys - keys.mean(0)
        if sketch is not None:
            x = x @ sketch[g].double()
        gram = x.T @ x + 0.01 * torch.eye(x.shape[1], dtype=torch.float64)
        out.append([float(x[i] @ torch.linalg.solve(gram, x[i])) for i in range(len(cols))])
    return zscore(out)


def non_causal_by_hand(view, cols: range, chunk: int) -> list[list[float]]:
    """Per KV head: each key's softmax weight from every query of its chunk (padding as kvpress pads
    it), averaged over the group's query heads, times its value's norm, 3-averaged, z-scored."""
    pad, n = view.width - int(view.alive[0]), len(cols)
    total = math.ceil(n / chunk) * chunk
    out = []
    for g in range(G):
        per_head = []
        for h in range(g * (H // G), (g + 1) * (H // G)):
            q = [view.queries[0, h, pad + cols.start + j].double() if j < n else None for j in range(total)]
            got = [0.0] * total
            for c0 in range(0, total, chunk):
                for i in range(c0, c0 + chunk):
                    logits = []
                    for j in range(c0, c0 + chunk):
                        if i >= n:
                            logits.append(0.0)
                        elif j >= n:
                            logits.append(-1e-9)
                        else:
                            logits.append(float(q[i] @ view.keys[0, g, pad + cols.start + j].double()))
                    top = max(logits)
                    e = [math.exp(x - top) for x in logits]
                    for j, w in zip(range(c0, c0 + chunk), e):
                        got[j] += w / sum(e)
            per_head.append(got[:n])
        mean = [sum(col) / len(per_head) for col in zip(*per_head)]
        weighted = [m * float(view.values[0, g, pad + cols.start + j].double().norm()) for j, m in enumerate(mean)]
        padded = [0.0] + weighted + [0.0]
        out.append([(padded[j] + padded[j + 1] + padded[j + 2]) / 3 for j in range(n)])
    return zscore(out)


@pytest.mark.parametrize("pad", [0, 4])
@pytest.mark.parametrize("sketched", [False, True])
def test_leverage_keeps_the_keys_of_highest_leverage(pad, sketched):
    n, budget = 37, 15
    view, _ = model_layer(n, 11, pad)
    policy = asl.Leverage(budget=budget, window=0, sketch_dimension=5 if sketched else None, seed=3)
    scores = leverage_by_hand(view, range(n), policy.sketch(view) if sketched else None)
    for g, ours in enumerate(kept(policy, view)):
        assert_top_within(ours, scores[g], budget)


@pytest.mark.parametrize("pad", [0, 4])
def test_non_causal_attention_sums_each_chunks_attention(pad):
    n, budget, chunk = 37, 15, 8  # the last chunk: 5 tokens and 3 of padding
    view, _ = model_layer(n, 12, pad)
    policy = asl.NonCausalAttention(budget=budget, window=0, chunk_size=chunk)
    scores = non_causal_by_hand(view, range(n), chunk)
    for g, ours in enumerate(kept(policy, view)):
        assert_top_within(ours, scores[g], budget)


def test_compactor_blends_the_two_between_its_sinks():
    n, budget, start, end, blend = 40, 16, 3, 2, 0.5
    view, _ = model_layer(n, 13)
    policy = asl.Compactor(budget=budget, window=0, sink_size_start=start, sink_size_end=end, chunk_size=8,
                           sketch_dimension=None, blending=blend)
    inner = range(start, n - end)
    lev, att = leverage_by_hand(view, inner, None), non_causal_by_hand(view, inner, 8)
    for g, ours in enumerate(kept(policy, view)):
        mixed = [blend * a + b for a, b in zip(lev[g], att[g])]
        top = max(mixed)
        assert set(range(start)) | set(range(n - end, n)) <= set(ours)  # the sinks score the most
        assert_top_within(ours, [top] * start + mixed + [top] * end, budget)
    assert asl.Compactor(ratio=0.6).keep(0, view) is not None  # blending from the ratio, as kvpress's


def test_the_sketch_repeats_and_differs_by_seed_and_layer():
    view, _ = model_layer(20, 14)
    a, b = asl.Leverage(sketch_dimension=4, seed=1), asl.Leverage(sketch_dimension=4, seed=2)
    assert torch.equal(a.sketch(view), a.sketch(view)) and not torch.equal(a.sketch(view), b.sketch(view))


def capkv_by_hand(view, pre, g: int, sink: int, future: int, tau: float, eps: float) -> list[float]:
    """One KV head's CAPKV scores over the real entries (kvpress's CapPress, written out)."""
    keys, values, n, rot = head_inputs(view, pre, g, future)
    per_head = []
    for h in range(g * (H // G), (g + 1) * (H // G)):
        anchor = rot @ pre[h, sink:].mean(0)
        cos = [float(keys[j] @ anchor / (keys[j].norm() * anchor.norm())) for j in range(sink, n)]
        w = [math.exp(tau * (c - max(cos))) for c in cos]
        a = torch.eye(D, dtype=torch.float64) + sum((wj + eps) * torch.outer(values[sink + j], values[sink + j])
                                                    for j, wj in enumerate(w))
        inv = torch.linalg.inv(a)
        per_head.append([wj * float(values[sink + j] @ inv @ values[sink + j]) for j, wj in enumerate(w)])
    scores = [sum(col) / len(per_head) for col in zip(*per_head)]
    return [max(scores) + 1] * sink + scores


@pytest.mark.parametrize("pad", [0, 3])
def test_capkv_keeps_the_weighted_value_leverage(pad):
    view, pre = model_layer(28, 4, pad)
    policy = asl.CapKV(budget=12, window=2, n_sink=3, n_future_positions=9, tau=5.0)
    for g, ours in enumerate(kept(policy, view)):
        scores = capkv_by_hand(view, pre, g, 3, 9, 5.0, 1e-6)
        assert_top(ours, scores[:26], 10, 2)
