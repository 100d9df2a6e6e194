"""asl.bench.report.plots: the accuracy / cost trade-off plots and pareto_front, on synthetic summary rows (no model)."""
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asl.bench.report.plots import _plot_tradeoff, make_plots, pareto_front
from asl.bench.report.summary import method_family

TASKS = ["niah", "qa"]
MIB = 2 ** 20


def _row(task, length, method, budget, acc, rel, kv_mib, partial=None, ci=True, family=True):
    r = {"task": task, "length": length, "method": method, "budget": budget, "n": 20,
         "accuracy": acc, "partial": partial, "ttft_s": 0.5 * rel, "kv_bytes": kv_mib * MIB, "prefill_vs_full": rel}
    if ci:
        r.update(accuracy_lo=max(0.0, acc - 8), accuracy_hi=min(100.0, acc + 6))
        if partial is not None:
            r.update(partial_lo=max(0.0, partial - 5), partial_hi=min(100.0, partial + 5))
    if family:
        r["family"] = method_family(method)
    return r


def make_summary(lengths=(4096,), partial=True, ci=True, family=True, snap_budgets=(128,)):
    """Two tasks plus "all": full, a tau sweep of asl, a layer sweep of fastkv, snapkv."""
    rows = []
    for task in TASKS + ["all"]:
        off = {"niah": 0.0, "qa": -10.0, "all": -5.0}[task]
        for length in lengths:
            s = length / 4096

            def add(method, budget, acc, rel, kv):
                p = max(0.0, min(100.0, acc + 7)) if partial else None
                rows.append(_row(task, length, method, budget, acc + off, rel, kv * s, p, ci, family))

            add("full", None, 92.0, 1.0, 256.0)
            for tau, acc, rel, kv in [(0.3, 60.0, 0.35, 8.0), (0.5, 74.0, 0.5, 14.0), (0.7, 85.0, 0.7, 30.0),
                                      (0.9, 90.0, 0.9, 80.0)]:
                add(f"asl(tau={tau})", None, acc, rel, kv)
            for layer, acc, rel, kv in [(4, 55.0, 0.3, 20.0), (8, 70.0, 0.45, 40.0), (12, 78.0, 0.6, 60.0)]:
                add(f"fastkv(layer={layer})", None, acc, rel, kv)
            for b in snap_budgets:
                add("snapkv", b, 50.0 + 10 * math.log2(b / 64), 1.02, 2.0 * b / 64)
    return rows


def _tradeoff(paths):
    """The trade-off plots among make_plots' outputs (snapkv's budget also gives accuracy_vs_budget.png)."""
    return [p for p in paths if p.name.startswith("tradeoff_")]


def _is_png(p):
    return p.exists() and p.stat().st_size > 5000 and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------
# method_family


@pytest.mark.parametrize("label,family", [
    ("asl", "asl"), ("asl(tau=0.5)", "asl"), ("fastkv(layer=8)", "fastkv"), ("asl+snapkv", "asl+snapkv"),
    ("asl(tau=0.5)+snapkv", "asl+snapkv"), ("fastkv(layer=4)+snapkv", "fastkv+snapkv"), ("full", "full"),
    ("mypkg:Cls(x=1)", "mypkg:Cls"), ("f(a=(1,2))", "f"),
])
def test_family_of(label, family):
    assert method_family(label) == family


# --------------------------------------------------------------------------------------------
# pareto_front


def brute_front(points):
    """The definition: p is on the front unless some q is at least as good on both and strictly better on one."""
    def dominates(q, p):
        return q[0] <= p[0] and q[1] >= p[1] and (q[0] < p[0] or q[1] > p[1])
    return {i for i, p in enumerate(points) if not any(dominates(q, p) for j, q in enumerate(points) if j != i)}


@pytest.mark.parametrize("points,expected", [
    ([], []),
    ([(1.0, 1.0)], [0]),
    ([(1.0, 5.0), (2.0, 4.0)], [0]),                      # cheaper and better dominates
    ([(2.0, 4.0), (1.0, 3.0), (3.0, 6.0)], [1, 0, 2]),    # a staircase, returned by increasing cost
    ([(1.0, 3.0), (1.0, 5.0)], [1]),                      # same cost: the better one only
    ([(1.0, 5.0), (2.0, 5.0)], [0]),                      # same value: the cheaper one only
    ([(1.0, 5.0), (1.0, 5.0), (0.5, 1.0)], [2, 0, 1]),    # exact duplicates both stay, by index
    ([(1.0, float("nan")), (None, 3.0), (2.0, 1.0)], [2]),  # unusable points are ignored
    ([(0.0, -math.inf), (1.0, 0.0)], [0, 1]),
])
def test_pareto_front_hand_cases(points, expected):
    assert pareto_front(points) == expected


coords = st.floats(min_value=-5, max_value=5, allow_nan=False) | st.sampled_from([0.0, 1.0, 2.0])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(coords, coords), max_size=30))
def test_pareto_front_matches_brute_force(points):
    front = pareto_front(points)
    assert set(front) == brute_front(points)
    assert len(front) == len(set(front))
    # increasing cost (ties by index) and, along the front, strictly increasing value between distinct costs
    assert front == sorted(front, key=lambda i: (points[i][0], i))
    for a, b in zip(front, front[1:]):
        if points[a][0] < points[b][0]:
            assert points[a][1] < points[b][1]
        else:
            assert points[a] == points[b]
    assert pareto_front(list(reversed(points))) == sorted(
        (len(points) - 1 - i for i in front), key=lambda i: (points[len(points) - 1 - i][0], i))


# --------------------------------------------------------------------------------------------
# the plots


def test_tradeoff_plots_written(tmp_path):
    paths = _tradeoff(make_plots([], make_summary(), tmp_path))
    names = sorted(p.name for p in paths)
    assert names == ["tradeoff_all.png", "tradeoff_niah.png", "tradeoff_qa.png"]
    for p in paths:
        assert p.parent == tmp_path / "plots"
        assert _is_png(p), p
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == names  # no temp files (one budget: no budget curve)


def test_tradeoff_one_file_per_length(tmp_path):
    paths = _tradeoff(make_plots([], make_summary(lengths=(1024, 4096)), tmp_path))
    assert sorted(p.name for p in paths) == sorted(
        f"tradeoff_{t}_{L}.png" for t in TASKS + ["all"] for L in (1024, 4096))
    assert all(_is_png(p) for p in paths)


@pytest.mark.parametrize("kw", [dict(partial=False), dict(ci=False), dict(family=False),
                                dict(partial=False, ci=False, family=False),
                                dict(snap_budgets=(64, 128, 256, 512, 1024, 2048))])  # > 12 points: legend only
def test_tradeoff_missing_fields_and_many_points(tmp_path, kw):
    paths = _tradeoff(make_plots([], make_summary(**kw), tmp_path))
    assert sorted(p.name for p in paths) == ["tradeoff_all.png", "tradeoff_niah.png", "tradeoff_qa.png"]
    assert all(_is_png(p) for p in paths)


def test_tradeoff_partial_row_only_when_present(tmp_path):
    from asl.bench.report.plots import pyplot

    plt = pyplot()
    seen = []
    orig = plt.subplots

    def spy(*a, **k):
        seen.append(a[:2])
        return orig(*a, **k)

    plt.subplots = spy
    try:
        _plot_tradeoff(plt, make_summary(partial=True), tmp_path)
        _plot_tradeoff(plt, make_summary(partial=False), tmp_path)
    finally:
        plt.subplots = orig
    assert seen == [(2, 2)] * 3 + [(1, 2)] * 3


def test_tradeoff_degenerate_rows(tmp_path):
    # new keys all absent / None, no full row (x falls back to TTFT seconds), one point, zero KV bytes
    rows = [{"task": "qa", "length": 512, "method": "asl(tau=0.5)", "budget": None, "accuracy": 40.0,
             "ttft_s": 0.2, "kv_bytes": 0.0, "prefill_vs_full": None, "partial": None, "accuracy_lo": None},
            {"task": "qa", "length": 512, "method": "fastkv", "budget": None, "accuracy": 30.0, "ttft_s": None,
             "kv_bytes": 0.0},
            {"task": "qa", "length": 512, "method": "snapkv", "budget": 64, "accuracy": None, "ttft_s": None,
             "kv_bytes": None}]
    paths = make_plots([], rows, tmp_path)
    assert [p.name for p in paths] == ["tradeoff_qa.png"] and _is_png(paths[0])
    # a single setting is no trade-off; nothing to put on either axis: no file
    assert make_plots([], rows[:1], tmp_path / "b") == []
    assert make_plots([], [dict(r, ttft_s=None, kv_bytes=None) for r in rows], tmp_path / "c") == []


def test_labels_are_placed_where_they_overlap_nothing():
    from asl.bench.report.plots import _overlap, pyplot, place_labels

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    items = [(1.0 + 0.02 * i, 50 + 0.4 * i, f"asl(tau=0.{i})@512") for i in range(6)]  # a tight cluster
    ax.plot([x for x, _, _ in items], [y for _, y, _ in items], "o")
    ax.set_xlim(0, 3)
    ax.set_ylim(0, 100)
    anns = place_labels(ax, items)
    boxes = [a.get_window_extent(fig.canvas.get_renderer()) for a in anns]
    assert len(anns) == 6 and all(_overlap(a, b) == 0 for i, a in enumerate(boxes) for b in boxes[i + 1:])
    plt.close(fig)


def test_a_sweep_is_joined_in_parameter_order():
    from asl.bench.report.plots import parameter_order

    rows = [{"method": "asl(tau=1.1)", "budget": 512}, {"method": "asl(tau=0.3)", "budget": 512},
            {"method": "asl(tau=0.45)", "budget": 512}, {"method": "asl", "budget": 256}]
    assert [r["method"] for r in sorted(rows, key=parameter_order)] == ["asl", "asl(tau=0.3)", "asl(tau=0.45)",
                                                                        "asl(tau=1.1)"]


def test_accuracy_vs_budget_needs_two_budgets(tmp_path):
    one = make_plots([], make_summary(snap_budgets=(128,)), tmp_path / "one")
    two = make_plots([], make_summary(snap_budgets=(128, 256)), tmp_path / "two")
    assert "accuracy_vs_budget.png" not in [p.name for p in one]
    assert "accuracy_vs_budget.png" in [p.name for p in two]


def test_every_family_has_its_own_colour_and_marker():
    from asl.bench.report.plots import family_styles

    styles = family_styles(["full"] + [f"method{i}" for i in range(47)])  # a methods run has 47
    assert styles["full"] == ("black", "*")
    assert len(set(styles.values())) == 48


def test_many_settings_label_the_front_only():
    from asl.bench.report.plots import pyplot, _tradeoff_panel, family_styles, pareto_front

    plt = pyplot()
    rows = [dict(r, _family=method_family(r["method"])) for r in make_summary(snap_budgets=(64, 128, 256, 512, 1024))
            if r["task"] == "qa"]
    fig, ax = plt.subplots()
    _tradeoff_panel(plt, ax, rows, "accuracy", "kv_mib", family_styles(r["_family"] for r in rows), show_labels=False)
    front = pareto_front([(r["kv_bytes"], r["accuracy"]) for r in rows])
    assert 1 < len(front) < len(rows)
    labelled = sorted(t.get_text() for t in ax.texts)
    assert labelled == sorted(f"{rows[i]['method']}" + (f"@{rows[i]['budget']}" if rows[i]["budget"] else "")
                              for i in front)
    plt.close(fig)


def test_a_cost_axis_spread_over_a_few_fold_is_drawn_in_log_scale():
    """TTFT ratios of 0.3-1.02 stay linear; one method reading the prompt twice (8.6x) turns the
    axis to log, so the crowd near 1 is not squeezed into one column."""
    from asl.bench.report.plots import pyplot, _tradeoff_panel, family_styles

    plt = pyplot()
    rows = [dict(r, _family=method_family(r["method"])) for r in make_summary() if r["task"] == "qa"]
    slow = dict(rows[-1], method="kvgrad", _family="kvgrad", prefill_vs_full=8.6)
    scales = []
    for panel_rows in (rows, rows + [slow]):
        fig, ax = plt.subplots()
        styles = family_styles(r["_family"] for r in panel_rows)
        _tradeoff_panel(plt, ax, panel_rows, "accuracy", "prefill_vs_full", styles, show_labels=True)
        scales.append(ax.get_xscale())
        plt.close(fig)
    assert scales == ["linear", "log"]
