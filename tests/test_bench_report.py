"""asl.bench.report / asl.bench.plots on synthetic per-sample records (no model)."""
import csv
import json
import statistics
import sys

import pytest

from asl.bench.report import SUMMARY_FIELDS, format_table, summarize, write_summary

TASKS = ["niah", "qa_long_task_name", "sum"]
LENGTHS = [1024, 4096]
DEPTHS = [0.0, 0.5, 1.0]
N_LAYERS = 12


def _rec(task, length, index, method, budget, score, ttft, tpot=0.01, selection_layer=None, ratios=()):
    return {
        "id": f"{task}/{length}/{index}", "task": task, "length": length, "index": index,
        "depth": DEPTHS[index % len(DEPTHS)] if task == "niah" else None,
        "method": method, "budget": budget, "select_tokens": 256 if method == "asl" else None,
        "prompt_tokens": length, "answers": ["x"], "prediction": "x" if score else "y",
        "score": score, "ttft_s": ttft, "tpot_s": tpot, "new_tokens": 4,
        "kv_tokens": [budget or length] * N_LAYERS,
        "kv_bytes": (budget or length) * 1000 + index, "peak_mem_bytes": 10_000 + index,
        "selection_layer": selection_layer, "ratios": list(ratios), "policy_s": 0.001,
    }


def make_records():
    recs = []
    for t_i, task in enumerate(TASKS):
        for length in LENGTHS:
            for i in range(3):
                base = length / 1000 * (1 + t_i)          # full ttft
                recs.append(_rec(task, length, i, "full", None, 1.0, base * (1 + 0.1 * i),
                                 tpot=None if i == 2 else 0.02))
                for budget in (128, 512):
                    recs.append(_rec(task, length, i, "fastkv", budget, float(i < (1 if budget == 128 else 2)),
                                     base * 0.5, tpot=0.01))
                    sel = None if (i == 2 and task == "sum") else (3 if i == 0 else 8)
                    ratios = [0.9 - 0.05 * k for k in range(N_LAYERS)]
                    ratios[0] = None
                    recs.append(_rec(task, length, i, "asl", budget, 1.0 if budget == 512 else 0.5,
                                     base * 0.25 + i, selection_layer=sel, ratios=ratios))
    return recs


def _row(summary, task, length, method, budget):
    rows = [r for r in summary if (r["task"], r["length"], r["method"], r["budget"]) == (task, length, method, budget)]
    assert len(rows) == 1, (task, length, method, budget, rows)
    return rows[0]


def test_summarize_counts_order_and_values():
    recs = make_records()
    s = summarize(recs)
    assert all(set(r) == set(SUMMARY_FIELDS) for r in s)
    # 3 tasks + "all", x 2 lengths x (full + 2 fastkv + 2 asl)
    assert len(s) == 4 * 2 * 5
    keys = [(r["task"], r["length"], r["method"], r["budget"]) for r in s]
    expect = [(t, L, m, b) for t in TASKS + ["all"] for L in LENGTHS
              for m, b in [("full", None), ("fastkv", 128), ("fastkv", 512), ("asl", 128), ("asl", 512)]]
    assert keys == expect
    assert all(r["n"] == 3 for r in s if r["task"] != "all")
    assert all(r["n"] == 9 for r in s if r["task"] == "all")

    f = _row(s, "sum", 4096, "full", None)
    base = 4.096 * 3
    assert f["accuracy"] == pytest.approx(100.0)
    assert f["ttft_s"] == pytest.approx(base * 1.1)                  # median of base*(1, 1.1, 1.2)
    assert f["tpot_s"] == pytest.approx(0.02)                         # None ignored
    assert f["prefill_vs_full"] == pytest.approx(1.0)
    assert f["kv_bytes"] == pytest.approx(4096 * 1000 + 1)            # mean of +0,+1,+2
    assert f["peak_mem_bytes"] == pytest.approx(10_001)
    assert f["selection_layers"] == {}
    assert f["select_tokens"] is None

    k = _row(s, "sum", 4096, "fastkv", 128)
    assert k["accuracy"] == pytest.approx(100 / 3)
    assert _row(s, "sum", 4096, "fastkv", 512)["accuracy"] == pytest.approx(200 / 3)
    assert k["prefill_vs_full"] == pytest.approx(0.5 / 1.1)
    assert k["selection_layers"] == {}

    a = _row(s, "sum", 1024, "asl", 128)
    assert a["accuracy"] == pytest.approx(50.0)
    assert a["ttft_s"] == pytest.approx(1.024 * 3 * 0.25 + 1)
    assert a["select_tokens"] == 256
    assert a["selection_layers"] == {"3": 1, "8": 1, "none": 1}
    assert list(a["selection_layers"]) == ["3", "8", "none"]
    assert _row(s, "niah", 1024, "asl", 512)["selection_layers"] == {"3": 1, "8": 2}


def test_summarize_all_rows():
    s = summarize(make_records())
    for L in LENGTHS:
        for m, b in [("full", None), ("fastkv", 128), ("asl", 512)]:
            per = [_row(s, t, L, m, b) for t in TASKS]
            a = _row(s, "all", L, m, b)
            assert a["accuracy"] == pytest.approx(statistics.fmean(r["accuracy"] for r in per))
            assert a["ttft_s"] == pytest.approx(statistics.fmean(r["ttft_s"] for r in per))
        full = _row(s, "all", L, "full", None)
        asl = _row(s, "all", L, "asl", 128)
        assert asl["prefill_vs_full"] == pytest.approx(asl["ttft_s"] / full["ttft_s"])
        assert asl["selection_layers"] == {"3": 3, "8": 5, "none": 1}
        assert _row(s, "all", L, "fastkv", 512)["selection_layers"] == {}


def test_summarize_without_full_and_empty():
    recs = [r for r in make_records() if r["method"] != "full"]
    s = summarize(recs)
    assert all(r["prefill_vs_full"] is None for r in s)
    assert summarize([]) == []
    # a selecting method whose records in one group never selected still reports "none"
    recs = [_rec("t", 100, 0, "asl", 64, 1.0, 0.1, selection_layer=None, ratios=[0.5]),
            _rec("t", 100, 1, "asl", 64, 0.0, 0.3, selection_layer=None, ratios=[0.5])]
    (row, allrow) = summarize(recs)
    assert row["selection_layers"] == {"none": 2}
    assert row["accuracy"] == pytest.approx(50.0) and row["ttft_s"] == pytest.approx(0.2)
    assert allrow["task"] == "all"


def test_write_summary(tmp_path):
    s = summarize(make_records())
    write_summary(s, tmp_path / "out")
    with open(tmp_path / "out" / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0].keys()) == SUMMARY_FIELDS
    assert len(rows) == len(s)
    for r, ref in zip(rows, s):
        assert r["method"] == ref["method"] and r["task"] == ref["task"]
        assert json.loads(r["selection_layers"]) == ref["selection_layers"]
        assert float(r["accuracy"]) == pytest.approx(ref["accuracy"])
        assert (r["budget"] == "") == (ref["budget"] is None)
    data = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert data == json.loads(json.dumps(s))
    assert all(list(d.keys()) == SUMMARY_FIELDS for d in data)
    assert not [p for p in (tmp_path / "out").iterdir() if p.name not in ("summary.csv", "summary.json")]
    write_summary(s[:3], tmp_path / "out")  # overwrite
    assert len(json.loads((tmp_path / "out" / "summary.json").read_text())) == 3


def test_format_table():
    recs = make_records()
    recs += [dict(r, method="mymod:MyVeryLongPolicyName(x=1, y=2)") for r in recs if r["method"] == "fastkv"]
    recs += [dict(r, task=t) for t in ("retrieval_kv", "multifieldqa_en") for r in recs if r["task"] == "sum"]
    s = summarize(recs)
    table = format_table(s)
    print(table)
    for m in ("full", "fastkv", "asl", "mymod:"):
        assert m in table
    for t in ("niah", "sum", "all"):
        assert t in table
    # long task names are abbreviated in the header, with a legend
    for t in ("qa_long_task_name", "retrieval_kv", "multifieldqa_en"):
        assert t in table.splitlines()[0]
    assert "length 1024" in table and "length 4096" in table
    assert "3:1 8:1 none:1" in format_table(summarize([r for r in make_records() if r["task"] == "sum"]))
    assert max(len(line) for line in table.splitlines()[1:]) <= 120
    assert format_table([])  # no crash


def _is_png(p):
    return p.exists() and p.stat().st_size > 1000 and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_make_plots(tmp_path):
    from asl.bench.plots import make_plots

    recs = make_records()
    recs += [dict(r, method="mymod:MyPolicy(x=1)") for r in recs if r["method"] == "fastkv"]
    s = summarize(recs)
    paths = make_plots(recs, s, tmp_path, method_params={"asl": {"tau": 0.7, "l_min": 2}})
    names = sorted(p.name for p in paths)
    assert names == sorted([
        "niah_full.png", "niah_fastkv.png", "niah_asl.png", "niah_mymod_MyPolicy_x_1.png",
        "accuracy_vs_budget.png", "selection_layers_asl.png", "ratios_asl.png"])
    for p in paths:
        assert p.parent == tmp_path / "plots"
        assert _is_png(p), p
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == names  # no temp files left

    # no niah records: no heat map; single budget, no ratios: still the budget plot
    recs2 = [r for r in make_records() if r["task"] != "niah" and r["budget"] in (None, 128)]
    recs2 = [dict(r, ratios=[]) for r in recs2]
    paths2 = make_plots(recs2, summarize(recs2), tmp_path / "b")
    names2 = sorted(p.name for p in paths2)
    assert names2 == ["accuracy_vs_budget.png", "selection_layers_asl.png"]
    assert all(_is_png(p) for p in paths2)

    # only the full cache: nothing budget-related, nothing selection-related
    recs3 = [r for r in make_records() if r["method"] == "full" and r["task"] != "niah"]
    assert make_plots(recs3, summarize(recs3), tmp_path / "c") == []


def test_import_does_not_load_matplotlib():
    import subprocess

    code = ("import sys, asl.bench, asl.bench.report, asl.bench.plots; "
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported eagerly'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
