"""The custom ops (asl._C, csrc/) against asl.reference, their checks, fake kernels and fallback.

CUDA cases are parametrised on the device and skipped without a GPU. Window scores are
compared with the reference run on the same inputs upcast to float32: the ops upcast
exactly and compute in float32 too, so one tolerance serves every input dtype (only the
order of the float32 sums differs).
"""
from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from asl import ops, reference

CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="needs a CUDA device"))]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
INF = float("inf")
TOL = dict(rtol=1e-5, atol=1e-5)  # window scores, every input dtype (see the module docstring)

requires_ext = pytest.mark.skipif(ops._C is None, reason="asl._C is not built (test_extension_is_built fails)")


def test_extension_is_built():
    assert ops._C is not None, f"asl._C did not import: {ops._IMPORT_ERROR}"
    assert ops.backend("cpu") == "cpp"
    assert ops.backend("cuda") == ("cuda" if ops._has_cuda_kernels() else "torch")


# ---- token_ranks

def make_scores(seed: int, b: int, m: int, kind: str, dtype, device) -> torch.Tensor:
    """Scores with many ties ("ties": a small integer set), distinct floats, or floats with -inf padding."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(-2, 3, (b, m), generator=gen).float() if kind == "ties" else torch.randn(b, m, generator=gen)
    if kind != "floats":
        x[torch.rand(b, m, generator=gen) < 0.2] = -INF
    return x.to(dtype).to(device)


@requires_ext
@pytest.mark.parametrize("device", DEVICES)
@given(b=st.integers(1, 4), m=st.one_of(st.integers(0, 300), st.integers(200, 5000)),
       kind=st.sampled_from(["ties", "floats", "inf"]), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31))
def test_token_ranks_equal_reference(device, b, m, kind, dtype, seed):
    scores = make_scores(seed, b, m, kind, dtype, device)
    got = torch.ops.asl.token_ranks(scores)
    assert got.dtype == torch.int64 and got.device == scores.device
    assert torch.equal(got.cpu(), reference.token_ranks(scores.float().cpu()))


@requires_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("m", [1, 255, 256, 4097])
def test_token_ranks_special_values(device, m):
    """NaN ranks first (torch.sort's order), -0.0 ties with +0.0, -inf last; ties to the lower index."""
    x = torch.zeros(3, m)
    x[0, ::3] = -0.0
    x[1, ::2] = -INF
    x[1, 1::5] = float("nan")
    x[2] = torch.arange(m) % 7 - 3.0
    x[2, ::11] = INF
    got = torch.ops.asl.token_ranks(x.to(device)).cpu()
    assert torch.equal(got, reference.token_ranks(x))


# ---- rank_variance

def make_ranks(seed: int, t: int, b: int, m: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return reference.token_ranks(torch.randint(0, 50, (t, b, m), generator=gen).float())  # ties too


@requires_ext
@pytest.mark.parametrize("device", DEVICES)
@given(t=st.integers(1, 8), b=st.integers(1, 3), m=st.integers(1, 9000), kfrac=st.floats(0, 1),
       seed=st.integers(0, 2**31))
def test_rank_variance_equals_reference(device, t, b, m, kfrac, seed):
    ranks = make_ranks(seed, t, b, m)
    k = 1 + int(kfrac * (m - 1))
    got = torch.ops.asl.rank_variance(ranks.to(device), k)
    assert got.dtype == torch.float64 and got.shape == (b,)
    torch.testing.assert_close(got.cpu(), reference.rank_variance(ranks, k), rtol=1e-9, atol=1e-12)


# ---- window_scores

@st.composite
def window_cases(draw, max_n: int = 1600):
    w = draw(st.integers(1, 40))
    n = draw(st.integers(w + 1, max_n))
    b = draw(st.integers(1, 2))
    pads = [draw(st.one_of(st.just(0), st.integers(0, n), st.integers(max(0, n - w - 3), n))) for _ in range(b)]
    return dict(b=b, g=draw(st.integers(1, 2)), r=draw(st.integers(1, 8)), w=w, n=n, pads=pads,
                d=draw(st.sampled_from([8, 16, 64, 80])), kernel=draw(st.sampled_from([1, 3, 5, 7, 9])),
                pooling=draw(st.sampled_from(["avg", "max"])), sharpness=draw(st.sampled_from([1.0, 4.0])),
                dtype=draw(st.sampled_from(DTYPES)), seed=draw(st.integers(0, 2**31)))


def make_window_inputs(c: dict, device="cpu"):
    """q [B, H, n, d], k [B, G, n, d] in c's dtype, valid [B, n] left-padded per row."""
    gen = torch.Generator().manual_seed(c["seed"])
    b, h, g, n, d = c["b"], c["g"] * c["r"], c["g"], c["n"], c["d"]
    q = (torch.randn(b, h, n, d, generator=gen) * c["sharpness"]).to(c["dtype"])
    k = torch.randn(b, g, n, d, generator=gen).to(c["dtype"])
    valid = torch.ones(b, n, dtype=torch.bool)
    for row, pad in enumerate(c["pads"]):
        valid[row, :pad] = False
    return q.to(device), k.to(device), valid.to(device)


def assert_scores_match(got: torch.Tensor, want: torch.Tensor):
    got = got.cpu()
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert torch.equal(got == -INF, want == -INF)  # identical padding pattern
    finite = torch.isfinite(want)
    assert torch.isfinite(got[finite]).all()
    torch.testing.assert_close(got[finite], want[finite], **TOL)


def reference_scores(q, k, valid, c):
    return reference.window_scores(q.float().cpu(), k.float().cpu(), valid.cpu(), c["w"], c["kernel"], c["pooling"])


@requires_ext
@pytest.mark.parametrize("device", DEVICES)
@given(c=window_cases())
def test_window_scores_equal_reference(device, c):
    q, k, valid = make_window_inputs(c, device)
    got = torch.ops.asl.window_scores(q[:, :, c["n"] - c["w"]:], k, valid, c["kernel"], c["pooling"])
    assert_scores_match(got, reference_scores(q, k, valid, c))


@requires_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_window_scores_long_prompt(device, dtype):
    """Several key chunks, GQA 7:1, a row with fewer real keys than w, non-contiguous keys."""
    c = dict(b=3, g=2, r=7, w=32, n=3000, pads=[0, 1234, 2990], d=64, kernel=7, pooling="avg", sharpness=3.0,
             dtype=dtype, seed=7)
    q, k, valid = make_window_inputs(c, device)
    k_strided = k.transpose(1, 2).contiguous().transpose(1, 2)  # [B, G, n, d] view of a [B, n, G, d] cache
    got = torch.ops.asl.window_scores(q[:, :, -32:], k_strided, valid, 7, "avg")
    assert_scores_match(got, reference_scores(q, k, valid, c))
    assert (got[2] == -INF).all()  # its 10 real keys are all in the window


@requires_ext
@given(c=window_cases(max_n=700))
def test_ops_functions_equal_reference(c):
    """The functions the policies call (full q, any leading dims for the ranks)."""
    q, k, valid = make_window_inputs(c)
    want = reference_scores(q, k, valid, c)
    assert_scores_match(ops.window_scores(q, k, valid, c["w"], c["kernel"], c["pooling"]), want)
    scores = want.sum(1)
    assert torch.equal(ops.token_ranks(scores), reference.token_ranks(scores))
    assert torch.equal(ops.token_ranks(scores[0]), reference.token_ranks(scores[0]))
    assert torch.equal(ops.token_ranks(want), reference.token_ranks(want))


@requires_ext
def test_results_do_not_depend_on_threads_or_inference_mode():
    c = dict(b=2, g=2, r=3, w=16, n=2100, pads=[0, 100], d=16, kernel=7, pooling="max", sharpness=2.0,
             dtype=torch.float32, seed=3)
    q, k, valid = make_window_inputs(c)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.window_scores(q, k, valid, 16, 7, "max")
        torch.set_num_threads(2)
        with torch.inference_mode():
            two = ops.window_scores(q, k, valid, 16, 7, "max")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


# ---- opcheck, torch.compile

def opcheck_cases():
    q, k, valid = make_window_inputs(dict(b=2, g=2, r=2, w=4, n=40, pads=[0, 5], d=8, kernel=3, pooling="avg",
                                          sharpness=1.0, dtype=torch.float32, seed=1))
    q.requires_grad_()  # read as constants: the ops are not differentiable
    scores = make_scores(0, 3, 50, "ties", torch.float32, "cpu").requires_grad_()
    return {
        "token_ranks": (torch.ops.asl.token_ranks.default, (scores,)),
        "rank_variance": (torch.ops.asl.rank_variance.default, (make_ranks(0, 4, 2, 60), 7)),
        "window_scores": (torch.ops.asl.window_scores.default, (q[:, :, -4:], k, valid, 3, "avg")),
    }


@requires_ext
@pytest.mark.parametrize("name", ["token_ranks", "rank_variance", "window_scores"])
def test_opcheck(name):
    """Schema, autograd registration (a fallthrough: not differentiable), fake kernel, AOT dispatch."""
    op, args = opcheck_cases()[name]
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_autograd_registration", "test_faketensor",
                                                "test_aot_dispatch_static", "test_aot_dispatch_dynamic"))


@requires_ext
def test_ops_are_not_differentiable():
    """Inputs that require grad are read as constants; the outputs carry no autograd history."""
    q = torch.randn(1, 4, 20, 8, requires_grad=True)
    k = torch.randn(1, 2, 20, 8, requires_grad=True)
    scores = ops.window_scores(q, k, torch.ones(1, 20, dtype=torch.bool), 4, 3, "avg")
    assert not scores.requires_grad and scores.grad_fn is None
    assert not torch.ops.asl.token_ranks(torch.randn(2, 9, requires_grad=True)).requires_grad


@requires_ext
def test_compiles_without_graph_breaks():
    c = dict(b=2, g=2, r=3, w=8, n=300, pads=[0, 20], d=16, kernel=5, pooling="avg", sharpness=1.0,
             dtype=torch.float32, seed=5)
    q, k, valid = make_window_inputs(c)

    def scores_and_ratio(q, k, valid):
        scores = ops.window_scores(q, k, valid, 8, 5, "avg")  # [B, G, m]
        ranks = ops.token_ranks(scores)  # per KV head
        return scores, ranks, ops.rank_variance(ranks, 10)

    torch._dynamo.reset()
    compiled = torch.compile(scores_and_ratio, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(q, k, valid), scores_and_ratio(q, k, valid)):
        assert torch.equal(got, want)


# ---- bad input

def _bad_calls():
    q, k, valid = torch.randn(1, 4, 3, 8), torch.randn(1, 2, 10, 8), torch.ones(1, 10, dtype=torch.bool)
    ranks = make_ranks(0, 3, 1, 20)
    ws = torch.ops.asl.window_scores
    return [
        ("scores 1-D", lambda: torch.ops.asl.token_ranks(torch.randn(5)), "must be 2-D"),
        ("scores int", lambda: torch.ops.asl.token_ranks(torch.ones(2, 5, dtype=torch.int64)), "float32, float16"),
        ("scores double", lambda: torch.ops.asl.token_ranks(torch.randn(2, 5, dtype=torch.float64)), "float32"),
        ("ranks 2-D", lambda: torch.ops.asl.rank_variance(ranks[0], 3), "must be 3-D"),
        ("ranks float", lambda: torch.ops.asl.rank_variance(ranks.float(), 3), "must be int64"),
        ("no layers", lambda: torch.ops.asl.rank_variance(ranks[:0], 3), "at least one layer"),
        ("k < 1", lambda: torch.ops.asl.rank_variance(ranks, 0), r"k must be in \[1, m\]"),
        ("k > m", lambda: torch.ops.asl.rank_variance(ranks, 21), r"k must be in \[1, m\] = \[1, 20\]"),
        ("q 3-D", lambda: ws(q[0], k, valid, 3, "avg"), "q_window must be 4-D"),
        ("keys 3-D", lambda: ws(q, k[0], valid, 3, "avg"), "keys must be 4-D"),
        ("q int", lambda: ws(q.long(), k.long(), valid, 3, "avg"), "q_window must be float32"),
        ("dtypes differ", lambda: ws(q, k.half(), valid, 3, "avg"), "keys must have q_window's dtype"),
        ("mask not bool", lambda: ws(q, k, valid.float(), 3, "avg"), "key_mask must be bool"),
        ("mask shape", lambda: ws(q, k, valid[:, :9], 3, "avg"), r"key_mask must be \[B, n\]"),
        ("batch", lambda: ws(q, torch.cat([k, k]), valid, 3, "avg"), "keys batch"),
        ("head dim", lambda: ws(q, k[..., :4], valid, 3, "avg"), "head dim"),
        ("H % G", lambda: ws(q[:, :3], k, valid, 3, "avg"), "multiple of the KV heads"),
        ("n <= w", lambda: ws(torch.randn(1, 4, 10, 8), k, valid, 3, "avg"), "1 <= w < n"),
        ("kernel even", lambda: ws(q, k, valid, 4, "avg"), "positive odd"),
        ("kernel 0", lambda: ws(q, k, valid, 0, "avg"), "positive odd"),
        ("pooling", lambda: ws(q, k, valid, 3, "sum"), 'pooling must be "avg" or "max"'),
        ("devices", lambda: ws(q.to("meta"), k, valid, 3, "avg"), "same device"),
        ("window", lambda: ops.window_scores(torch.randn(1, 4, 10, 8), k, valid, 10), "1 <= window < n"),
    ]


@requires_ext
@pytest.mark.parametrize("case", range(len(_bad_calls())), ids=[c[0] for c in _bad_calls()])
def test_bad_input_raises(case):
    _, call, match = _bad_calls()[case]
    with pytest.raises((RuntimeError, ValueError), match=match):
        call()


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@requires_ext
def test_cuda_rejects_mixed_devices():
    q, k, valid = torch.randn(1, 4, 3, 8, device="cuda"), torch.randn(1, 2, 10, 8), torch.ones(1, 10, dtype=torch.bool)
    with pytest.raises(RuntimeError, match="same device"):
        torch.ops.asl.window_scores(q, k, valid, 3, "avg")
    with pytest.raises(RuntimeError, match="same device"):
        torch.ops.asl.window_scores(q, k.cuda(), valid, 3, "avg")


# ---- the fallback

def fallback_checks() -> None:
    """Run in a process where asl._C cannot be imported (test_fallback_without_extension)."""
    from asl import ops_fallback

    assert ops._C is None and ops.backend() == "torch" and ops.backend("cpu") == "torch"
    ops_fallback.CHUNK = 64  # the chunked two-pass path
    c = dict(b=2, g=2, r=4, w=8, n=500, pads=[0, 300], d=16, kernel=7, pooling="avg", sharpness=2.0,
             dtype=torch.float32, seed=11)
    q, k, valid = make_window_inputs(c)
    with pytest.warns(RuntimeWarning, match=r"asl._C is not importable.*halted.*pip install --no-build-isolation -e \."):
        got = ops.window_scores(q, k, valid, 8, 7, "avg")
    assert_scores_match(got, reference_scores(q, k, valid, c))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        scores = got.sum(1)
        assert torch.equal(ops.token_ranks(scores), reference.token_ranks(scores))
        ties = make_scores(4, 3, 300, "ties", torch.float32, "cpu")
        assert torch.equal(ops.token_ranks(ties), reference.token_ranks(ties))
        ranks = make_ranks(3, 4, 2, 100)
        torch.testing.assert_close(ops.rank_variance(ranks, 9), reference.rank_variance(ranks, 9), rtol=1e-9,
                                   atol=0)
        for name, call, match in _bad_calls():  # the same table, the same messages as csrc/checks.h
            with pytest.raises((RuntimeError, ValueError), match=match):
                call()
        for op, args in opcheck_cases().values():  # registered through torch.library, fake kernels included
            torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))


def test_fallback_without_extension():
    """Without asl._C the pure-torch kernels are the ops' kernels: same results, same errors."""
    code = ("import sys; sys.modules['asl._C'] = None; sys.path.insert(0, 'tests'); "
            "import test_ops; test_ops.fallback_checks(); print('ok')")
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def test_the_schemas_have_one_source():
    """asl.ops.SCHEMAS is what csrc/register.cpp defines and what torch.ops.asl holds."""
    import re
    from pathlib import Path

    source = (Path(__file__).resolve().parent.parent / "csrc" / "register.cpp").read_text()
    defined = dict(re.match(r"(\w+)(\(.*)", d).groups() for d in re.findall(r'm\.def\("([^"]+)"\)', source))
    assert defined == ops.SCHEMAS
    for name, schema in ops.SCHEMAS.items():
        assert str(getattr(torch.ops.asl, name).default._schema) == f"asl::{name}{schema}"
