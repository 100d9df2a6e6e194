"""Our policies against golden traces of the original code (tests/golden/*.json, written by
benchmarks/golden_traces.py from SnapKV e216ddc, FastKV b978769 and ASL 9e1ec0c on inputs
rebuilt here from their seeds). A choice must be the original's exactly, except among
entries whose score ties with the top-k cut (within the float tolerance of near_ties.py):
there the tie rule decides, and the original's `torch.topk` order is unspecified."""
import json
import pathlib
import sys

import pytest
import torch

import asl
from asl import ops
from asl.policies import LayerView, PrefillInfo
from near_ties import SCORE_RTOL, near_threshold

GOLDEN = pathlib.Path(__file__).parent / "golden"
sys.path.insert(0, str(GOLDEN.parent.parent / "benchmarks"))
from golden_traces import inputs, layer_scores  # noqa: E402 (the fixture inputs, from their seeds)


def cases(name: str) -> list[dict]:
    return json.loads((GOLDEN / f"{name}.json").read_text())["cases"]


def view_of(q: torch.Tensor, k: torch.Tensor) -> LayerView:
    n = q.shape[2]
    index = torch.arange(n)[None]
    return LayerView(0, q, k, k, index, index, torch.ones(1, n, dtype=torch.bool))


def assert_same_choice(ours: list[int], theirs: list[int], scores: torch.Tensor, count: int) -> None:
    """Same prefix columns, or different only among scores tied (within tolerance) with the cut."""
    ours, theirs = set(ours), set(theirs)
    if ours == theirs:
        return
    cut = scores.sort(descending=True).values[count - 1]
    differing = torch.tensor(sorted(ours ^ theirs))
    assert torch.all((scores[differing] - cut).abs() <= SCORE_RTOL * cut.abs() + 1e-7), (sorted(ours ^ theirs),)
    assert len(ours) == len(theirs)


def rebuilt(case: dict) -> tuple[torch.Tensor, torch.Tensor]:
    x = inputs(case["seed"])
    assert abs(float(x["q"].sum()) - case["q_sum"]) < 1e-3  # the same inputs as the original saw
    return x["q"], x["k"]


@pytest.mark.parametrize("case", cases("snapkv"), ids=lambda c: f"seed{c['seed']}-w{c['window']}-{c['pooling']}")
def test_snapkv_per_query_head_keeps_what_snapkvs_own_code_keeps(case):
    q, k = rebuilt(case)
    policy = asl.SnapKV(budget=case["budget"], window=case["window"], kernel=case["kernel"], pooling=case["pooling"],
                        per="query_head")
    view = view_of(q, k)
    keep = policy.keep(0, view)[0]
    scores = policy.score(view)[0]  # [H, m]: what it chose from
    n, m = q.shape[2], scores.shape[-1]
    for head, (row, theirs) in enumerate(zip(keep.tolist(), case["kept"])):
        assert set(range(n - case["window"], n)) <= set(row)  # the window, as the original's k_cur
        assert_same_choice([c for c in row if c < m], [c for c in theirs if c < m], scores[head],
                           case["budget"] - case["window"])


@pytest.mark.parametrize("case", cases("fastkv"), ids=lambda c: f"seed{c['seed']}-b{c['budget']}-{c['pooling']}")
def test_fastkv_compresses_and_propagates_what_fastkvs_own_code_does(case):
    q, k = rebuilt(case)
    view = view_of(q, k)
    window, n = case["window"], q.shape[2]
    eviction = asl.SnapKV(budget=case["budget"], window=window, kernel=case["kernel"], pooling=case["pooling"])
    per_head = view.window_scores(window, case["kernel"], case["pooling"])[0]  # [G, m], summed per group
    for row, theirs, scores in zip(eviction.keep(0, view)[0].tolist(), case["kept"], per_head):
        assert_same_choice([c for c in row if c < n - window], [c for c in theirs if c < n - window], scores,
                           case["budget"] - window)
    selection = asl.FastKV(layer=0, select_tokens=case["tsp"], window=window, kernel=case["kernel"],
                           pooling=case["pooling"])
    selection.begin(PrefillInfo(1, q.shape[1], k.shape[1], q.shape[3], (n,)))
    propagated = selection.after_layer(0, view).keep[0].tolist()
    assert set(range(n - window, n)) <= set(propagated)
    assert_same_choice([c for c in propagated if c < n - window], [c for c in case["propagated"] if c < n - window],
                       per_head.sum(0), case["tsp"] - window)


class ScoredView(LayerView):
    """A layer whose per-token prefix scores are given (the golden ASL case's)."""

    def __init__(self, layer: int, scores: torch.Tensor, window: int):
        n = scores.shape[-1] + window
        index = torch.arange(n)[None]
        empty = torch.zeros(1, 1, n, 1)
        super().__init__(layer, empty, empty, empty, index, index, torch.ones(1, n, dtype=torch.bool))
        self.given = torch.cat([scores, torch.zeros(window)])[None, : scores.shape[-1]]

    def token_scores(self, window=32, kernel=7, pooling="avg"):
        return self.given


@pytest.mark.parametrize("case", cases("asl"), ids=lambda c: f"seed{c['seed']}-lmin{c['l_min']}-tau{c['tau']}")
def test_asl_selects_at_the_layer_and_tokens_of_the_authors_code(case):
    scores = layer_scores(case["seed"])
    assert abs(float(sum(s.sum() for s in scores)) - case["scores_sum"]) < 1e-3
    window, layers = case["window"], len(scores)
    policy = asl.ASL(tau=case["tau"], l_min=case["l_min"], l_obs=case["l_obs"], select_tokens=case["select_k"],
                     window=window, kernel=7, pooling="avg")
    policy.begin(PrefillInfo(layers, 1, 1, 1, (scores[0].shape[-1] + window,)))
    chosen = None
    for layer in range(layers):
        selection = policy.after_layer(layer, ScoredView(layer, scores[layer], window))
        if selection is not None:
            chosen = (layer, [c for c in selection.keep[0].tolist() if 0 <= c < scores[0].shape[-1]])
            break
    ratios = policy.report()[0]["ratios"]
    theirs = {int(k): v for k, v in case["ratios"].items()}
    for layer, ratio in ratios.items():  # the original sums float32 ranks: close, not equal
        assert ratio == pytest.approx(theirs[layer], rel=1e-4)
    if any(near_threshold(r, case["tau"]) or abs(r - case["tau"]) < 1e-4 for r in theirs.values()):
        pytest.skip("a ratio within float tolerance of tau: either side is right")
    assert chosen == (case["layer"], case["kept"])


@pytest.mark.parametrize("case", cases("gemfilter"), ids=lambda c: f"seed{c['seed']}-k{c['select_tokens']}")
def test_gemfilter_selects_what_the_authors_gemfilter_selects(case):
    from asl import reference

    q, k = rebuilt(case)
    n = q.shape[2]
    policy = asl.GemFilter(layer=0, select_tokens=case["select_tokens"], kernel=case["kernel"])
    policy.begin(PrefillInfo(1, q.shape[1], k.shape[1], q.shape[3], (n,)))
    ours = [c for c in policy.after_layer(0, view_of(q, k)).keep[0].tolist() if c >= 0]
    scores = reference.gemfilter_scores(q[0, :, -1], k[0], case["kernel"])  # [n]: what both rank
    assert_same_choice(ours, case["kept"], scores, case["select_tokens"])
