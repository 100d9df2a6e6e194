"""benchmarks/adaptivity.py on records whose answers are known: each family's held-out figures
follow from the records exactly, the oracle keeps every answer at the least KV, the tuned
setting is the cheapest that reaches the target on the tuning prompts."""
from __future__ import annotations

import json
import pathlib
import sys

import pytest

from asl.calibration.search import PromptMeasure, kv_share

sys.path.insert(0, str(pathlib.Path(__file__).parent.parent / "benchmarks"))
import adaptivity  # noqa: E402

LAYERS, K, N = 8, 100, 1000


def record(first_match: int, held_out: bool, stable_from: int) -> dict:
    """Answers kept from `first_match` on; the top-k set settles (Jaccard 0.9) from `stable_from`."""
    signals = {l: {"depth": l / 7, "jaccard": 0.9 if l >= stable_from else 0.2, "entropy": 0.5} for l in range(LAYERS)}
    ratios = {l: (0.1 if l >= stable_from else 0.9) for l in range(2, LAYERS)}
    return PromptMeasure({l: l >= first_match for l in range(LAYERS - 1)}, {2: ratios}, N, held_out, signals).as_json()


@pytest.fixture
def result(tmp_path):
    # the answer is kept exactly where the ranking settled: an adaptive rule can find it, a fixed layer cannot
    firsts = [2, 2, 5, 5, 3, 3, 6, 6]  # tuning and held-out prompts alike
    measures = [record(f, i % 2 == 1, f) for i, f in enumerate(firsts)]
    data = {"model": "toy", "num_layers": LAYERS, "asl": {"select_tokens": K, "l_min": 2},
            "search": {"taus": [0.05, 0.5, 1.0]}, "prompts": {}, "measures": measures}
    path = tmp_path / "toy.json"
    path.write_text(json.dumps(data))
    return adaptivity.analyse(path, 1.0)


def test_each_family_is_judged_exactly_from_the_records(result):
    fams = result["families"]
    held_firsts = [2, 5, 3, 6]
    for point in fams["fixed layer"]["points"]:
        layer = int(point["setting"].split()[-1])
        assert point["held_out"]["agree"] == sum(layer >= f for f in held_firsts)
        assert point["held_out"]["kv_share"] == pytest.approx(kv_share(layer, N, K, LAYERS))
    oracle = fams["oracle"]["tuned"]["held_out"]
    assert oracle["agreement"] == 1.0
    assert oracle["kv_share"] == pytest.approx(sum(kv_share(f, N, K, LAYERS) for f in held_firsts) / 4)
    assert fams["fixed layer"]["tuned"]["setting"] == "layer 6"  # the cheapest keeping every tuning answer
    for family in ("ASL (tau)", "JaccardStop"):  # they find each prompt's own layer: the oracle's savings
        assert fams[family]["tuned"]["held_out"]["agreement"] == 1.0
        assert fams[family]["verdict"]["oracle_savings_captured"] == pytest.approx(1.0)
        assert fams[family]["verdict"]["vs_tuned_fixed"]["kv_difference"] < 0  # cheaper than the fixed layer


def test_the_table_reads(result):
    text = adaptivity.table(result)
    assert "| JaccardStop | jaccard >= " in text and "| oracle | earliest matching layer | 100% [" in text


def test_transfer_tunes_on_one_task_and_judges_on_another(tmp_path):
    # task "easy" keeps its answers from layer 2, task "hard" from layer 6: a fixed layer tuned on
    # "easy" (layer 2) loses every "hard" answer; ASL, whose ratio settles where the answer does, transfers
    measures = []
    for task, first in (("easy", 2), ("hard", 6)):
        for i in range(4):
            m = record(first, i % 2 == 1, first)
            m["label"] = f"{task}/4096/{i}"
            measures.append(m)
    data = {"model": "toy", "num_layers": LAYERS, "asl": {"select_tokens": K, "l_min": 2},
            "search": {"taus": [0.05, 0.5, 1.0]}, "prompts": {}, "measures": measures}
    (tmp_path / "t.json").write_text(json.dumps(data))
    rows = {(r["family"], r["tuned_on"]): r for r in adaptivity.analyse(tmp_path / "t.json", 1.0)["transfer"]}
    assert rows[("fixed layer", "easy")]["setting"] == "layer 2" and rows[("fixed layer", "easy")]["agreement"] == 0
    assert rows[("ASL (tau)", "easy")]["agreement"] == 1.0 and rows[("ASL (tau)", "hard")]["agreement"] == 1.0
    assert "| fixed layer | easy -> hard | layer 2 | 0% [" in adaptivity.transfer_table(
        adaptivity.analyse(tmp_path / "t.json", 1.0))


def toy_file(tmp_path, name: str, tokens: int, firsts: list[int], select_tokens: int = K) -> pathlib.Path:
    measures = []
    for i, f in enumerate(firsts):
        m = record(f, i % 2 == 1, f)
        m["prompt_tokens"], m["label"] = tokens, f"task{i % 2}/{tokens}/{i}"
        measures.append(m)
    data = {"model": "toy", "num_layers": LAYERS, "asl": {"select_tokens": select_tokens, "l_min": 2},
            "search": {"taus": [0.05, 0.5, 1.0]}, "prompts": {"lengths": [tokens]}, "measures": measures}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


def test_a_mixed_stream_pools_lengths_and_matches_the_fixed_layer_by_absolute_cost(tmp_path):
    """Short prompts that settle early and long ones that settle late: one stream, each prompt's
    KV counted in tokens, so the matched fixed layer is the one of the nearest mean KV."""
    short = toy_file(tmp_path, "short", 500, [2, 2, 3, 3])
    long = toy_file(tmp_path, "long", 4000, [6, 6, 5, 5])
    (stream,) = adaptivity.mixed([short, long], 1.0)
    assert stream["lengths"] == [500, 4000] and stream["n_held_out"] == 4
    rows = {r["family"]: r for r in stream["rows"]}
    held = [(500, 2), (500, 3), (4000, 6), (4000, 5)]  # (tokens, first matching layer) of the held-out prompts
    oracle = rows["oracle"]
    assert oracle["agree"] == 4
    assert oracle["kv_tokens"] == pytest.approx(sum(kv_share(f, n, K, LAYERS) * LAYERS * n for n, f in held) / 4)
    assert oracle["attention_work"] == pytest.approx(
        sum((f + 1) * n * n + (LAYERS - 1 - f) * K * K for n, f in held) / 4)
    matched = oracle["vs_fixed_at_kv_tokens"]
    fixed_kv = {l: sum(kv_share(l, n, K, LAYERS) * LAYERS * n for n, _ in held) / 4 for l in range(LAYERS - 1)}
    assert matched["fixed"] == f"layer {min(fixed_kv, key=lambda l: abs(fixed_kv[l] - oracle['kv_tokens']))}"
    assert matched["fixed_agree"] == sum(int(matched["fixed"].split()[1]) >= f for _, f in held)
    assert "### Mixed workload, toy" in adaptivity.mixed_table(stream)


def test_a_mixed_stream_refuses_files_of_different_settings(tmp_path):
    with pytest.raises(ValueError, match="differ in layers, select_tokens or l_min"):
        adaptivity.mixed([toy_file(tmp_path, "a", 500, [2, 3]), toy_file(tmp_path, "b", 800, [2, 3], select_tokens=50)], 1.0)
