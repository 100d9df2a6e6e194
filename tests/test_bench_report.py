"""asl.bench.report.summary / asl.bench.report.plots on synthetic per-sample records (no model)."""
import csv
import json
import re
import statistics
import sys

import pytest

from asl.bench.report.summary import SUMMARY_FIELDS, method_family, summarize, write_comparisons, write_summary
from asl.bench.report.table import LEGEND, LEGEND_MARK, TABLE_W, chosen_reference, format_table, reference_method
from asl.bench.report.stats import COMPARISON_FIELDS, compare, mean_interval, wilson

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
    assert f["family"] == "full"
    assert (f["accuracy_lo"], f["accuracy_hi"]) == pytest.approx(tuple(100 * x for x in wilson(3, 3)))
    assert f["partial"] is None and f["partial_lo"] is None and f["partial_hi"] is None  # records lack it

    k = _row(s, "sum", 4096, "fastkv", 128)
    assert k["accuracy"] == pytest.approx(100 / 3)
    assert _row(s, "sum", 4096, "fastkv", 512)["accuracy"] == pytest.approx(200 / 3)
    assert k["prefill_vs_full"] == pytest.approx(0.5 / 1.1)
    assert k["selection_layers"] == {}
    assert (k["accuracy_lo"], k["accuracy_hi"]) == pytest.approx(tuple(100 * x for x in wilson(1, 3)))

    a = _row(s, "sum", 1024, "asl", 128)
    assert a["accuracy"] == pytest.approx(50.0)
    # fractional: 0.5 three times is not a point
    assert (a["accuracy_lo"], a["accuracy_hi"]) == pytest.approx(tuple(100 * x for x in wilson(1.5, 3)))
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
        # intervals over the 9 pooled samples, not over the 3 task means
        assert (full["accuracy_lo"], full["accuracy_hi"]) == pytest.approx(tuple(100 * x for x in wilson(9, 9)))
        k = _row(s, "all", L, "fastkv", 128)
        assert (k["accuracy_lo"], k["accuracy_hi"]) == pytest.approx(tuple(100 * x for x in wilson(3, 9)))
        assert full["family"] == "full" and full["partial"] is None


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


def test_method_family():
    assert method_family("asl(tau=0.5)+snapkv") == "asl+snapkv"
    assert method_family("asl(tau=(0.3, 0.5))") == "asl"
    assert method_family("mypkg.policies:MyPolicy(overlap=0.8)+snapkv(window=8)") == "mypkg.policies:MyPolicy+snapkv"
    assert method_family("full") == "full"


def test_summarize_partial_family_and_fractional_intervals():
    recs = []
    for i in range(4):
        recs.append(dict(_rec("qa", 100, i, "asl(tau=0.5)", 64, [1.0, 0.5, 0.0, 1.0][i], 0.1), partial=0.25 * i))
        recs.append(dict(_rec("kv", 100, i, "asl(tau=0.5)", 64, float(i < 3), 0.1), partial=1.0))
        recs.append(dict(_rec("kv", 100, i, "mine:X(a=1)", 64, 1.0, 0.1), family="custom"))  # no partial
    s = summarize(recs)
    qa = _row(s, "qa", 100, "asl(tau=0.5)", 64)
    assert qa["family"] == "asl"
    assert qa["accuracy"] == pytest.approx(62.5)
    lo, hi = mean_interval([1.0, 0.5, 0.0, 1.0])  # fractional scores: the interval of the mean score
    assert (qa["accuracy_lo"], qa["accuracy_hi"]) == pytest.approx((100 * lo, 100 * hi))
    assert qa["partial"] == pytest.approx(100 * statistics.fmean([0, 0.25, 0.5, 0.75]))
    lo, hi = mean_interval([0, 0.25, 0.5, 0.75])
    assert (qa["partial_lo"], qa["partial_hi"]) == pytest.approx((100 * lo, 100 * hi))
    kv = _row(s, "kv", 100, "asl(tau=0.5)", 64)
    assert (kv["accuracy_lo"], kv["accuracy_hi"]) == pytest.approx(tuple(100 * x for x in wilson(3, 4)))
    assert (kv["partial"], kv["partial_hi"]) == (100.0, 100.0)  # four of four: not sure of 100
    assert kv["partial_lo"] == pytest.approx(100 * wilson(4, 4)[0]) and kv["partial_lo"] < 60
    allr = _row(s, "all", 100, "asl(tau=0.5)", 64)
    assert allr["partial"] == pytest.approx((qa["partial"] + kv["partial"]) / 2)
    lo, hi = mean_interval([1.0, 0.5, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0])  # pooled, fractional
    assert (allr["accuracy_lo"], allr["accuracy_hi"]) == pytest.approx((100 * lo, 100 * hi))
    lo, hi = mean_interval([0, 0.25, 0.5, 0.75, 1, 1, 1, 1])
    assert (allr["partial_lo"], allr["partial_hi"]) == pytest.approx((100 * lo, 100 * hi))
    mine = _row(s, "kv", 100, "mine:X(a=1)", 64)
    assert mine["family"] == "custom" and _row(s, "all", 100, "mine:X(a=1)", 64)["family"] == "custom"
    assert mine["partial"] is None and mine["partial_lo"] is None
    # a group where only some records have a partial score reports none (old and new records mixed)
    mixed = summarize([dict(recs[0]), {k: v for k, v in recs[3].items() if k != "partial"} | {"task": "qa"}])
    assert _row(mixed, "qa", 100, "asl(tau=0.5)", 64)["partial"] is None


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


def test_write_comparisons(tmp_path):
    rows = compare(make_records())
    assert rows
    write_comparisons(rows, tmp_path / "out")
    with open(tmp_path / "out" / "comparisons.csv", newline="") as f:
        got = list(csv.DictReader(f))
    assert list(got[0].keys()) == COMPARISON_FIELDS and len(got) == len(rows)
    for r, ref in zip(got, rows):
        assert (r["method_a"], r["method_b"], r["task"]) == (ref["method_a"], ref["method_b"], ref["task"])
        assert float(r["mcnemar_p"]) == pytest.approx(ref["mcnemar_p"])
        assert (r["budget_a"] == "") == (ref["budget_a"] is None)
        assert r["partial_a"] == ""  # these records have no partial score
    data = json.loads((tmp_path / "out" / "comparisons.json").read_text())
    assert data == json.loads(json.dumps(rows))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["comparisons.csv", "comparisons.json"]


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
    # accuracy cells now carry their interval, so the table wraps its task columns at TABLE_W (was: <= 120)
    assert max(len(line) for line in table.splitlines()[1:]) <= TABLE_W
    assert "mymod:MyVeryLongPolicyName(x=1, y=2)@128" in table  # 40 characters: not cut
    assert LEGEND in table and LEGEND_MARK not in table  # no comparisons given: no markers
    assert format_table([])  # no crash


CELL = re.compile(r"(\d+) \[(\d+),(\d+)\](\*?)")


def _cells(table: str, label: str) -> list[tuple]:
    """The (acc, lo, hi, marker) cells of the first line starting with `label `."""
    line = next(ln for ln in table.splitlines() if ln.startswith(label + " "))
    return CELL.findall(line[len(label):])


def _cell_text(k, n, mark=""):
    lo, hi = wilson(k, n)
    return (f"{100 * k / n:.0f}", f"{100 * lo:.0f}", f"{100 * hi:.0f}", mark)


LONG = "mypkg.policies:MyPolicy(overlap=0.8)+snapkv"
LONG_CUT = "mypkg.policies:MyPo~(overlap=0.8)+snapkv"  # 43 > 40 characters: the middle is cut, the tail kept


def marker_records(n=20):
    """kv / qa at length 100, budget 64. Per method: how many of the n samples (ids 0..k-1) are right."""
    right = {"full": (n, n), "asl": (n, n // 2), "fastkv": (n // 2, n // 2), "asl(tau=0.5)": (n, n),
             "asl+snapkv": (n, n), LONG: (n // 2, n)}
    recs = []
    for method, (kv, qa) in right.items():
        budget = None if method == "full" else 64
        for task, k in (("kv", kv), ("qa", qa)):
            for i in range(n):
                r = _rec(task, 100, i, method, budget, float(i < k), 0.1)
                recs.append(dict(r, partial=1.0 if i < k else 0.5, family=method_family(method)))
    return recs


def test_reference_method():
    keys = [("full", None), ("asl", 64), ("asl(tau=0.5)", 64), ("fastkv", 64), ("asl+snapkv", 64),
            (LONG, 64), ("asl", 128), ("fastkv", 128)]
    fam = {k: method_family(k[0]) for k in keys}
    assert reference_method(("fastkv", 64), keys, fam) == ("asl", 64)
    assert reference_method(("fastkv", 128), keys, fam) == ("asl", 128)    # same budget
    assert reference_method(("asl(tau=0.5)", 64), keys, fam) == ("asl", 64)  # the sweep's plain setting
    assert reference_method(("asl", 64), keys, fam) is None                 # itself
    assert reference_method((LONG, 64), keys, fam) == ("asl+snapkv", 64)   # its regime
    assert reference_method(("full", None), keys, fam) is None              # two ASL budgets: ambiguous
    assert reference_method(("full", None), keys[:6], fam) == ("asl", 64)  # one budget: that one
    sweep = [("asl(tau=0.3)", 64), ("asl(tau=0.5)", 64), ("fastkv", 64)]
    assert reference_method(("fastkv", 64), sweep, {k: "asl" for k in sweep[:2]}) is None  # no plain "asl"
    assert reference_method(("fastkv", 64), sweep[1:], {sweep[1]: "asl"}) == ("asl(tau=0.5)", 64)  # the only one
    # a method at the budget: ASL with its eviction, else ASL+SnapKV, and an eviction alone lacking both, ASL alone
    budget = [("asl", 64), ("asl+snapkv", 64), ("asl+knorm", 64), ("knorm", 64), ("tova", 64), ("adakv(snapkv)", 64),
              ("fastkv+streaming", 64), ("snapkv(budget=128)+knorm", 64), ("mypkg:Mine", 64)]
    fam = {k: method_family(k[0]) for k in budget} | {("adakv(snapkv)", 64): "adakv(snapkv)"}
    assert reference_method(("knorm", 64), budget, fam) == ("asl+knorm", 64)
    assert reference_method(("tova", 64), budget, fam) == ("asl+snapkv", 64)
    assert reference_method(("adakv(snapkv)", 64), budget, fam) == ("asl+snapkv", 64)
    assert reference_method(("fastkv+streaming", 64), budget, fam) == ("asl+snapkv", 64)
    assert reference_method(("snapkv(budget=128)+knorm", 64), budget, fam) == ("asl+knorm", 64)
    assert reference_method(("mypkg:Mine", 64), budget, fam) == ("asl", 64)  # a custom class is not imported
    assert reference_method(("asl+knorm", 64), budget, fam) is None
    assert reference_method(("tova", 64), [("asl", 64), ("tova", 64)], fam) == ("asl", 64)
    assert reference_method(("fastkv+streaming", 64), [("asl", 64), ("fastkv+streaming", 64)], fam) is None


def test_format_table_intervals_markers_and_partial():
    recs = marker_records()
    s, c = summarize(recs), compare(recs)
    table = format_table(s, c)
    print(table)
    assert "length 100 (budget 64, n=20 per task)" in table
    assert LEGEND in table and LEGEND_MARK in table
    # asl: the reference, never marked
    assert _cells(table, "asl") == [_cell_text(20, 20), _cell_text(10, 20), _cell_text(30, 40)]
    # fastkv loses 10 kv samples to asl (p = 2 / 2**10) and ties it on qa
    assert _cells(table, "fastkv") == [_cell_text(10, 20, "*"), _cell_text(10, 20), _cell_text(20, 40, "*")]
    # the full cache is tested against asl at the block's only budget
    assert _cells(table, "full") == [_cell_text(20, 20), _cell_text(20, 20, "*"), _cell_text(40, 40, "*")]
    # a sweep setting against plain asl; a +snapkv method against asl+snapkv, not asl
    assert _cells(table, "asl(tau=0.5)") == [_cell_text(20, 20), _cell_text(20, 20, "*"), _cell_text(40, 40, "*")]
    assert _cells(table, LONG_CUT) == [_cell_text(10, 20, "*"), _cell_text(20, 20), _cell_text(30, 40, "*")]
    assert f"{LONG_CUT} = {LONG}" in table.splitlines()
    assert _cells(table, "asl+snapkv") == [_cell_text(20, 20), _cell_text(20, 20), _cell_text(40, 40)]
    # partial block: per-task means in %
    part = table[table.index("partial (%)"):]
    assert re.search(r"^fastkv +75 +75 +75$", part, re.MULTILINE), part
    assert re.search(r"^asl +100 +75 +88$", part, re.MULTILINE), part
    # too few samples for any marker
    small = marker_records(n=4)
    assert "*" not in format_table(summarize(small), compare(small)).replace(LEGEND_MARK, "")


def test_format_table_against_a_chosen_reference():
    recs = marker_records()
    table = format_table(summarize(recs), compare(recs), reference="full")
    assert LEGEND_MARK.replace("the ASL method of its regime", "full") in table
    assert _cells(table, "full") == [_cell_text(20, 20), _cell_text(20, 20), _cell_text(40, 40)]  # the reference
    # asl loses 10 qa samples to the full cache; fastkv 10 of each; asl+snapkv none
    assert _cells(table, "asl") == [_cell_text(20, 20), _cell_text(10, 20, "*"), _cell_text(30, 40, "*")]
    assert _cells(table, "fastkv") == [_cell_text(10, 20, "*"), _cell_text(10, 20, "*"), _cell_text(20, 40, "*")]
    assert _cells(table, "asl+snapkv") == [_cell_text(20, 20), _cell_text(20, 20), _cell_text(40, 40)]
    assert chosen_reference(("asl", 128), [("full", None), ("asl", 64), ("asl", 128)], "asl") is None
    assert chosen_reference(("snapkv", 128), [("asl", 64), ("asl", 128), ("snapkv", 128)], "asl") == ("asl", 128)


def test_format_table_long_labels_stay_distinct():
    mid_a, mid_b = "m:" + "p" * 25 + "A" + "q" * 25, "m:" + "p" * 25 + "B" + "q" * 25  # differ where cut
    methods = (LONG, LONG.replace("0.8", "0.9"), mid_a, mid_b)
    recs = [_rec("kv", 100, i, m, bud, 1.0, 0.1) for i in range(2) for m in methods for bud in (64, 128)]
    lines = format_table(summarize(recs)).splitlines()
    print("\n".join(lines))
    rows = [ln.split()[0] for ln in lines if ln.startswith(("mypkg", "m:")) and " = " not in ln]
    assert len(rows) == 8 == len(set(rows)) and all(len(r) <= 40 for r in rows)
    assert all(r.endswith(("@64", "@128")) for r in rows)  # the budget is never cut
    assert "mypkg.policies:MyP~verlap=0.8)+snapkv@64" in rows
    # every cut label is listed with the full one under the table
    legend = dict(ln.split(" = ") for ln in lines if " = " in ln)
    assert sorted(legend) == sorted(rows)
    assert sorted(legend.values()) == sorted(f"{m}@{b}" for m in methods for b in (64, 128))


def test_format_table_wraps_many_tasks():
    tasks = [f"niah_multikey_{i}" for i in range(1, 4)] + ["qa_1", "qa_2", "vt", "cwe", "fwe", "niah_single_1",
                                                           "niah_single_2", "niah_single_3", "multivalue", "mq"]
    recs = [_rec(t, 4096, i, m, 64, float(i % 2), 0.1) for t in tasks for i in range(4)
            for m in ("asl", LONG, "fastkv")]
    table = format_table(summarize(recs), compare(recs))
    print(table)
    assert max(len(line) for line in table.splitlines()[1:]) <= TABLE_W
    for m in ("asl", LONG_CUT, "fastkv"):
        rows = [ln for ln in table.splitlines() if ln.startswith(m + " ")]
        assert len(rows) >= 2  # the same rows in each sub-table
        assert sum(len(CELL.findall(ln)) for ln in rows) == len(tasks) + 1
    assert table.count("TTFT s") == 1  # costs once, after "all"


def _is_png(p):
    return p.exists() and p.stat().st_size > 1000 and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_make_plots(tmp_path):
    from asl.bench.report.plots import make_plots

    recs = make_records()
    recs += [dict(r, method="mymod:MyPolicy(x=1)") for r in recs if r["method"] == "fastkv"]
    s = summarize(recs)
    paths = make_plots(recs, s, tmp_path, method_params={"asl": {"tau": 0.7, "l_min": 2}})
    names = sorted(p.name for p in paths)
    assert names == sorted([
        "niah_full.png", "niah_fastkv.png", "niah_asl.png", "niah_mymod_MyPolicy_x_1.png",
        "accuracy_vs_budget.png", "selection_layers_asl.png", "ratios_asl.png",
        *[f"tradeoff_{t}_{n}.png" for t in ("niah", "qa_long_task_name", "sum", "all") for n in (1024, 4096)]])
    for p in paths:
        assert p.parent == tmp_path / "plots"
        assert _is_png(p), p
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == names  # no temp files left

    # no niah records: no heat map; single budget: no budget curve (a point per method); no ratios
    recs2 = [r for r in make_records() if r["task"] != "niah" and r["budget"] in (None, 128)]
    recs2 = [dict(r, ratios=[]) for r in recs2]
    paths2 = make_plots(recs2, summarize(recs2), tmp_path / "b")
    names2 = sorted(p.name for p in paths2)
    assert names2 == sorted(["selection_layers_asl.png",
                             *[f"tradeoff_{t}_{n}.png" for t in ("qa_long_task_name", "sum", "all") for n in (1024, 4096)]])
    assert all(_is_png(p) for p in paths2)

    # only the full cache: nothing budget-related, nothing selection-related
    recs3 = [r for r in make_records() if r["method"] == "full" and r["task"] != "niah"]
    assert make_plots(recs3, summarize(recs3), tmp_path / "c") == []


def test_import_does_not_load_matplotlib():
    import subprocess

    code = ("import sys, asl.bench, asl.bench.report.summary, asl.bench.report.plots; "
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported eagerly'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_rows_align_numbers_right_and_refuse_a_ragged_row():
    from asl.bench.report import rows

    text = rows.text(["method", "acc %", "KV"], [["asl", "87.5", "1,024"], ["fastkv(layer=8)", "100.0", "-"]])
    assert text.splitlines() == ["method           acc %     KV",
                                 "asl               87.5  1,024",
                                 "fastkv(layer=8)  100.0      -"]
    md = rows.markdown(["method", "acc %"], [["asl", "87.5"]]).splitlines()
    assert md == ["| method | acc % |", "|---|---:|", "| asl | 87.5 |"]
    assert rows.share(13, 15, 0.62, 0.96) == "87% [62, 96] of 15"
    with pytest.raises(ValueError, match="2 cells for 3 columns"):
        rows.text(["a", "b", "c"], [["1", "2"]])


def test_many_methods_against_asl_are_holm_adjusted(tmp_path, capsys):
    """Ten methods that each lose 6 of 20 samples to ASL (p = 0.031 alone) are not wins once
    twelve methods are tested in the column ("+": Holm's p = 0.34); one that loses 12 (p = 0.0005)
    still is ("*"). The report writes the tests with both p to vs_reference.csv / .json."""
    from asl.bench.report import report
    from asl.bench.report.vs_reference import FIELDS, reference_tests

    wrong = {"asl": 0, "full": 0, "bad": 12, **{f"m{i}": 6 for i in range(10)}}
    recs = [_rec("kv", 100, i, m, None if m == "full" else 64, float(i >= k), 0.1)
            for m, k in wrong.items() for i in range(20)]
    s, c = summarize(recs), compare(recs)
    tests = {r["method"]: r for r in reference_tests(s, c) if r["task"] == "kv"}
    assert sorted(tests) == sorted(set(wrong) - {"asl"}) and {r["tests"] for r in tests.values()} == {12}
    assert (tests["bad"]["method_only"], tests["bad"]["reference_only"]) == (0, 12)
    assert tests["bad"]["holm_p"] == pytest.approx(12 * 2 / 2**12)
    assert tests["m3"]["mcnemar_p"] == pytest.approx(2 / 2**6) and tests["m3"]["holm_p"] == pytest.approx(11 * 2 / 2**6)
    table = format_table(s, c)
    assert _cells(table, "bad")[0][3] == "*" and _cells(table, "full")[0][3] == ""
    assert re.search(r"^m3 +\d+ \[\d+,\d+\]\+", table, re.MULTILINE), table
    report(recs, tmp_path, {}, plots=False)
    with open(tmp_path / "vs_reference.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == FIELDS and {r["method"] for r in rows if r["task"] == "kv"} == set(tests)
    assert json.loads((tmp_path / "vs_reference.json").read_text()) == json.loads(json.dumps(reference_tests(s, c)))


def test_the_forest_plot_draws_each_paired_difference(tmp_path):
    """vs_reference.png: per length, each method's paired difference from its reference, in
    points; ten samples where fastkv is right on 4 and ASL on all: -60 points, inside its interval."""
    from asl.bench.report.forest import differences, plot_vs_reference
    from asl.bench.report.vs_reference import reference_tests

    recs = [dict(_rec(t, length, i, m, 64, float(m == "asl" or i < 2), 0.1), partial=1.0 if m == "asl" else 0.5)
            for length in (100, 200) for t in ("kv", "qa") for i in range(5) for m in ("asl", "fastkv")]
    tests = reference_tests(summarize(recs), compare(recs))
    pooled = next(t for t in tests if t["task"] == "all" and t["length"] == 100)
    diff, lo, hi = differences(recs, pooled, "accuracy")
    assert diff == pytest.approx(-60) and lo <= diff <= hi
    assert differences(recs, pooled, "partial")[0] == pytest.approx(-50)
    assert differences([{k: v for k, v in r.items() if k != "partial"} for r in recs], pooled, "partial") is None
    per_task = next(t for t in tests if t["task"] == "kv" and t["length"] == 100)
    assert differences(recs, per_task, "accuracy")[0] == pytest.approx(-60)
    paths = plot_vs_reference(recs, tests, tmp_path)
    assert sorted(p.name for p in paths) == ["vs_reference_100.png", "vs_reference_200.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)
    assert plot_vs_reference(recs, [], tmp_path / "none") == [] and not (tmp_path / "none").exists()


def test_every_figure_of_an_unfinished_run_says_so_above_it(tmp_path, monkeypatch):
    """A figure is pasted without its table: an unfinished run's caveat goes above each figure
    the report draws (forest plot included), the figure growing to hold it; a finished run's
    figures carry none. Here asl ran on 5 samples of a planned 6, fastkv on 4."""
    import struct

    from asl.bench.report import forest, plots, report
    from asl.bench.report.coverage import coverage

    texts, save = {}, plots.save_figure

    def spy(plt, fig, path, *a, **k):
        out = save(plt, fig, path, *a, **k)
        texts[path.name] = (" ".join(t.get_text() for t in fig.texts), struct.unpack(">II", path.read_bytes()[16:24]))
        return out

    monkeypatch.setattr(plots, "save_figure", spy)
    monkeypatch.setattr(forest, "save_figure", spy)
    recs = [_rec("kv", 100, i, m, 64, float(m == "asl" or i < 2), 0.1 + 0.1 * (m == "asl")) for i in range(5)
            for m in ("asl", "fastkv") if (i, m) != (4, "fastkv")]
    settings = {"policies": {"asl @ 64": [], "fastkv @ 64": []}, "tasks": ["kv"], "lengths": [100], "samples": 6}
    report(recs, tmp_path / "part", {}, plots=True, coverage=coverage(recs, settings))
    part = dict(texts)
    texts.clear()
    whole = [r for r in recs if r["index"] < 4]
    report(whole, tmp_path / "whole", {}, plots=True, coverage=coverage(whole, dict(settings, samples=4)))
    assert part.keys() == texts.keys() == {"tradeoff_kv.png", "tradeoff_all.png", "vs_reference.png"}
    for name, (text, size) in part.items():
        assert "unfinished run: 9 of the 12 planned runs, 4 of 6 samples whole" in text.replace("\n", " "), name
        assert "unfinished" not in texts[name][0], name
    assert part["vs_reference.png"][1][1] > texts["vs_reference.png"][1][1]  # taller by the caveat's lines


def test_each_test_against_the_reference_carries_its_cost():
    """A method that matches ASL with more KV or a longer prefill is not at ASL's budget: each
    vs_reference row gives the method's KV bytes and TTFT over its reference's, per task and
    pooled, and the forest plot's row label shows them (here the full cache: 100 tokens of KV
    against ASL's 64, a TTFT of 0.5 s against 0.2 s)."""
    from asl.bench.report.forest import row_label
    from asl.bench.report.vs_reference import reference_tests

    recs = [_rec(t, 100, i, m, budget, 1.0, ttft) for t in ("kv", "qa") for i in range(4)
            for m, budget, ttft in (("asl", 64, 0.2), ("full", None, 0.5))]
    tests = reference_tests(summarize(recs), compare(recs))
    assert {(t["task"], t["method"], t["reference"]) for t in tests} == {
        (k, "full", "asl") for k in ("kv", "qa", "all")}
    for t in tests:
        assert t["kv_ratio"] == pytest.approx((100_000 + 1.5) / (64_000 + 1.5))
        assert t["ttft_ratio"] == pytest.approx(2.5)
    assert row_label(tests[-1]) == "full  [vs asl]  KV  1.56x  TTFT  2.50x"
    no_ttft = [dict(r, ttft_s=None) if r["method"] == "full" else r for r in recs]
    pooled = reference_tests(summarize(no_ttft), compare(no_ttft))[-1]
    assert pooled["ttft_ratio"] is None and row_label(pooled) == "full  [vs asl]  KV  1.56x"


def test_the_report_writes_the_tests_against_the_reference_as_a_markdown_table(tmp_path):
    """vs_reference.md: per length, the references' rows first, then each method pooled over the
    tasks with its accuracy and interval, cost against its reference and the paired test, `*`
    where the Holm-adjusted p is below 0.05 (here fastkv loses 12 of 20 samples to ASL)."""
    from asl.bench.report import report

    recs = [_rec(t, 100, i, m, budget, float(m != "fastkv" or i >= 6), ttft) for t in ("kv", "qa") for i in range(10)
            for m, budget, ttft in (("asl", 64, 0.2), ("fastkv", 64, 0.1), ("full", None, 0.4))]
    report(recs, tmp_path, {}, plots=False)
    lines = (tmp_path / "vs_reference.md").read_text().splitlines()
    assert lines[0].startswith("**length 100** (2 methods against their reference")
    assert lines[2].startswith("| method | against | n | accuracy % [95%] |")
    assert lines[4] == "| **asl** | (reference) | 20 | 100.0 [84, 100] | - | 1.00 | 1.00 |  |  |  |"
    fastkv = next(line for line in lines if line.startswith("| fastkv |"))
    lo, hi = (round(100 * x) for x in wilson(8, 20))
    # Holm over the two methods: 2 x 2 / 2**12
    assert fastkv == f"| fastkv | asl | 20 | 40.0 [{lo}, {hi}] | - | 1.00 | 0.50 | 0 / 12 | 5e-4 | 1e-3 * |"
    assert next(line for line in lines if line.startswith("| full |")).endswith("| 1.56 | 2.00 | 0 / 0 | 1 | 1 |")


def test_the_report_of_an_unfinished_run_says_how_much_of_its_plan_it_holds(tmp_path, capsys):
    """A folder read while its run appends (or after it stopped) holds part of its plan, some
    methods a sample ahead of others: the report says how much, above the table and at the head
    of vs_reference.md, so a preview is not pasted as the result. Planned: 2 tasks x 3 samples x
    2 methods; done: 2 whole samples per task, one method of a third, and two records outside the
    plan (a sample not planned, a method not planned), which do not count."""
    from asl.bench.report import report
    from asl.bench.report.coverage import coverage

    settings = {"policies": {"full @ None": [], "asl @ 64": []}, "tasks": ["kv", "qa"], "lengths": [100], "samples": 3}
    whole = [_rec(t, 100, i, m, b, 1.0, 0.1) for t in ("kv", "qa") for i in range(2) for m, b in (("full", None),
                                                                                                  ("asl", 64))]
    recs = [*whole, _rec("kv", 100, 2, "full", None, 1.0, 0.1), _rec("kv", 100, 7, "asl", 64, 1.0, 0.1),
            _rec("kv", 100, 2, "fastkv", 64, 1.0, 0.1)]  # a method not planned: kv/2 is not whole
    cov = coverage(recs, settings)
    assert cov == {"planned": 12, "done": 9, "samples_planned": 6, "samples_whole": 4}
    report(recs, tmp_path, {}, plots=False, coverage=cov)
    caveat = "unfinished run: 9 of the 12 planned runs, 4 of 6 samples whole; every figure here is a preview"
    assert caveat in capsys.readouterr().out
    assert (tmp_path / "vs_reference.md").read_text().startswith(f"> **{caveat}")
    assert json.loads((tmp_path / "coverage.json").read_text()) == dict(cov, finished=False)
    done = coverage(whole, dict(settings, samples=2))
    assert done == {"planned": 8, "done": 8, "samples_planned": 4, "samples_whole": 4}
    report(whole, tmp_path, {}, plots=False, coverage=done)
    assert "unfinished" not in capsys.readouterr().out
    assert (tmp_path / "vs_reference.md").read_text().startswith("**length 100**")
    assert json.loads((tmp_path / "coverage.json").read_text()) == dict(done, finished=True)


def test_a_budget_sweep_names_each_row_with_its_budget_in_vs_reference_and_the_forest_plot(tmp_path, monkeypatch):
    """Two budgets: each method and its reference appear twice, told apart only by the budget
    ("fastkv@32 against asl@32"), in vs_reference.md and the forest plot's labels as in the text
    table. A report that then has no test (one budget of asl, fastkv at another) removes the
    earlier vs_reference.md rather than leave its figures beside the new, empty csv."""
    from asl.bench.report import forest, report
    from asl.bench.report.vs_reference import reference_tests

    recs = [_rec(t, 100, i, m, b, float(m == "asl" or i < 2 + (b == 64)), 0.1) for t in ("kv", "qa") for i in range(4)
            for m, b in (("asl", 64), ("asl", 32), ("fastkv", 64), ("fastkv", 32))]
    report(recs, tmp_path, {}, plots=False)
    rows = [line.split(" | ")[:2] for line in (tmp_path / "vs_reference.md").read_text().splitlines()
            if line.startswith("| ") and "---" not in line][1:]
    assert sorted(rows) == [["| **asl@32**", "(reference)"], ["| **asl@64**", "(reference)"],
                            ["| fastkv@32", "asl@32"], ["| fastkv@64", "asl@64"]]
    tests = reference_tests(summarize(recs), compare(recs))
    labels, save = [], forest.save_figure
    monkeypatch.setattr(forest, "save_figure", lambda plt, fig, *a, **k: labels.extend(
        t.get_text() for t in fig.axes[0].get_yticklabels()) or save(plt, fig, *a, **k))
    forest.plot_vs_reference(recs, tests, tmp_path)
    assert sorted(label.split("  KV")[0] for label in labels) == ["fastkv@32  [vs asl@32]", "fastkv@64  [vs asl@64]"]
    assert forest.row_label(tests[0]).startswith("fastkv  [vs asl]")  # one budget: no need to say it
    one = [r for r in recs if (r["method"], r["budget"]) in (("asl", 64), ("fastkv", 32))]
    report(one, tmp_path, {}, plots=False)
    assert not (tmp_path / "vs_reference.md").exists()
    assert json.loads((tmp_path / "vs_reference.json").read_text()) == []
