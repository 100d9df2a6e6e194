"""PNG plots of benchmark results (matplotlib, Agg backend; imported lazily so that importing
asl.bench never needs matplotlib or a display).

make_plots(records, summary, out_dir) writes into out_dir/"plots":
  niah_<method>.png             NIAH heat map (length x depth, mean score) per method
  accuracy_vs_budget.png        accuracy (mean over tasks) against KV budget, one panel per length
  selection_layers_<method>.png selection-layer histogram per task, for methods that select
  ratios_<method>.png           per-layer variance-ratio curves, for methods that record ratios
  vs_oracle_<method>.png        per task, the method's selection layer against the oracle's, sample
                                by sample (diagonal: the layer needed), for ASL-like methods when the
                                method `oracle` ran on the same samples
  tradeoff_<task>[_<length>].png accuracy (and partial score) vs TTFT relative to full and vs KV MiB,
                                one point per method setting, families joined, Pareto front dashed;
                                per task and "all", one file per length when there are several
and, from asl.bench.report.forest (written by the report beside these):
  vs_reference[_<length>].png   each method's paired difference from the ASL of its regime, with
                                its interval, filled where the Holm-adjusted test calls it
"""
from __future__ import annotations

import math
import re
import textwrap
from collections import Counter, defaultdict
from pathlib import Path

from asl.atomic import replacing

from . import vs_oracle
from .summary import (ALL_TASKS, FULL_METHOD, NO_LAYER, as_number, first_appearance, layer_key, method_at,
                      method_family, selects, summarize)

DPI = 120


def safe_name(label: str) -> str:
    """A filename-safe version of a method label ("mymod:MyPolicy(x=1)" -> "mymod_MyPolicy_x_1")."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(label)).strip("._")
    return s[:80] or "method"


def _safe_names(labels) -> dict:
    out, used = {}, set()
    for lab in labels:
        base = safe_name(lab)
        s, i = base, 2
        while s in used:
            s = f"{base}_{i}"
            i += 1
        used.add(s)
        out[lab] = s
    return out


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(plt, fig, path: Path, tight: bool = True, caveat: str | None = None) -> Path:
    """Write `fig` to `path` (atomically) and close it. `caveat` (an unfinished run's, from
    asl.bench.report.coverage) goes in red above everything else in the figure, which grows to
    hold it: a figure gets pasted without the table that says the run is unfinished."""
    if tight:
        fig.tight_layout()
    if caveat:  # about 13 characters of 9-point text per inch of width
        text = textwrap.fill(caveat, width=max(40, int(13 * fig.get_figwidth())))
        fig.text(0.5, 1.0, text, ha="center", va="bottom", fontsize=9, color="firebrick")
    try:
        with replacing(path) as tmp:
            fig.savefig(tmp, dpi=DPI, **({"bbox_inches": "tight", "pad_inches": 0.15} if caveat else {}))
    finally:
        plt.close(fig)
    return path


def _grid(n: int, max_cols: int = 3):
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def _budget_str(b) -> str:
    return "full" if b is None else str(b)


# --------------------------------------------------------------------------------------------


def _plot_niah(plt, records, out: Path, names, caveat=None) -> list[Path]:
    niah = [r for r in records if r.get("task") == "niah" and r.get("depth") is not None
            and as_number(r.get("score")) is not None]
    if not niah:
        return []
    paths = []
    for method in first_appearance(r["method"] for r in niah):
        recs = [r for r in niah if r["method"] == method]
        budgets = sorted(first_appearance(r.get("budget") for r in recs), key=lambda b: (b is not None, b or 0))
        lengths = sorted(first_appearance(r["length"] for r in recs))
        depths = sorted(first_appearance(round(float(r["depth"]), 2) for r in recs))
        nr, nc = _grid(len(budgets), 2)
        fig, axes = plt.subplots(nr, nc, squeeze=False, layout="constrained",
                                 figsize=(max(4.5, 1.0 + 0.9 * len(lengths)) * nc + 1.0,
                                          max(3.5, 1.2 + 0.45 * len(depths)) * nr))
        im = None
        for ax, budget in zip(axes.flat, budgets):
            cells = defaultdict(list)
            for r in recs:
                if r.get("budget") == budget:
                    cells[(round(float(r["depth"]), 2), r["length"])].append(float(r["score"]))
            grid = [[(sum(cells[(d, L)]) / len(cells[(d, L)])) if cells.get((d, L)) else float("nan")
                     for L in lengths] for d in depths]
            im = ax.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto", origin="upper")
            for i, row in enumerate(grid):
                for j, v in enumerate(row):
                    if not math.isnan(v):
                        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                                color="black" if 0.25 < v < 0.85 else "white")
            ax.set_xticks(range(len(lengths)), [str(L) for L in lengths])
            ax.set_yticks(range(len(depths)), [f"{d:.2f}" for d in depths])
            ax.set_xlabel("context length (tokens)")
            ax.set_ylabel("needle depth (fraction of context)")
            title = f"NIAH: {method}"
            if budget is not None or len(budgets) > 1:
                title += f" (budget {_budget_str(budget)})"
            ax.set_title(title, fontsize=10)
        for ax in list(axes.flat)[len(budgets):]:
            ax.axis("off")
        if im is not None:
            fig.colorbar(im, ax=axes.ravel().tolist(), label="mean score", shrink=0.9)
        paths.append(save_figure(plt, fig, out / f"niah_{names[method]}.png", tight=False, caveat=caveat))
    return paths


MARKERS = "osD^vPX<>"  # nine shapes against ten colours: 90 pairs; the full cache is a star


def _plot_accuracy_vs_budget(plt, summary, out: Path, caveat=None) -> list[Path]:
    rows = [r for r in summary if r.get("task") == ALL_TASKS and as_number(r.get("accuracy")) is not None]
    if not any(r.get("budget") is not None for r in rows):
        return []
    lengths = sorted(first_appearance(r["length"] for r in rows))
    methods = first_appearance(r["method"] for r in rows)
    budgets = sorted({r["budget"] for r in rows if r.get("budget") is not None})
    if len(budgets) < 2:  # one budget is a point per method, not a curve: the trade-off plots show it
        return []
    styles = family_styles(methods)
    nr, nc = _grid(len(lengths), 3)
    fig, axes = plt.subplots(nr, nc, squeeze=False, figsize=(5.2 * nc, 4.0 * nr))
    for ax, length in zip(axes.flat, lengths):
        lrows = [r for r in rows if r["length"] == length]
        for m in methods:
            mrows = [r for r in lrows if r["method"] == m]
            pts = sorted((r["budget"], r["accuracy"]) for r in mrows if r.get("budget") is not None)
            flat = [r["accuracy"] for r in mrows if r.get("budget") is None]
            if pts:  # hollow markers of distinct shapes: methods that coincide stay visible
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=styles[m][1],
                        ms=8, mfc="none", mew=1.6, color=styles[m][0], label=m)
            for acc in flat:
                ax.axhline(acc, color=styles[m][0], ls="--" if m == FULL_METHOD else ":", lw=1.5,
                           label=f"{m} (no budget)" if m != FULL_METHOD else "full cache")
        if len(budgets) > 1:
            ax.set_xscale("log", base=2)
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.minorticks_off()
        ax.set_ylim(-2, 102)
        ax.set_xlabel("KV budget (tokens per head per layer)")
        ax.set_ylabel("accuracy (%, mean over tasks)")
        ax.set_title(f"accuracy vs KV budget, length {length}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(lengths):]:
        ax.axis("off")
    return [save_figure(plt, fig, out / "accuracy_vs_budget.png", caveat=caveat)]


def _plot_selection_layers(plt, records, out: Path, names, caveat=None) -> list[Path]:
    paths = []
    for method in first_appearance(r["method"] for r in records):
        recs = [r for r in records if r["method"] == method]
        if not any(selects(r) for r in recs):
            continue
        tasks = first_appearance(r["task"] for r in recs)
        budgets = sorted(first_appearance(r.get("budget") for r in recs), key=lambda b: (b is not None, b or 0))

        def lab(r):
            return NO_LAYER if r.get("selection_layer") is None else str(int(r["selection_layer"]))

        cats = sorted({lab(r) for r in recs} | {NO_LAYER}, key=layer_key)
        nr, nc = _grid(len(tasks), 3)
        fig, axes = plt.subplots(nr, nc, squeeze=False,
                                 figsize=(max(4.0, 0.45 * len(cats) + 1.5) * nc, 3.4 * nr))
        width = 0.8 / len(budgets)
        for ax, task in zip(axes.flat, tasks):
            for k, b in enumerate(budgets):
                c = Counter(lab(r) for r in recs if r["task"] == task and r.get("budget") == b)
                xs = [i - 0.4 + width * (k + 0.5) for i in range(len(cats))]
                ax.bar(xs, [c.get(cat, 0) for cat in cats], width=width, color=f"C{k % 10}",
                       label=f"budget {_budget_str(b)}" if len(budgets) > 1 else None)
            ax.set_xticks(range(len(cats)), cats, rotation=45 if len(cats) > 12 else 0, fontsize=8)
            ax.set_xlabel("selection layer")
            ax.set_ylabel("samples")
            ax.set_title(f"{method}: {task}", fontsize=10)
            ax.yaxis.get_major_locator().set_params(integer=True)
            if len(budgets) > 1:
                ax.legend(fontsize=7)
        for ax in list(axes.flat)[len(tasks):]:
            ax.axis("off")
        paths.append(save_figure(plt, fig, out / f"selection_layers_{names[method]}.png", caveat=caveat))
    return paths


def _plot_ratios(plt, records, out: Path, names, method_params, caveat=None) -> list[Path]:
    paths = []
    for method in first_appearance(r["method"] for r in records):
        recs = [r for r in records if r["method"] == method and r.get("ratios")]
        if not recs:
            continue
        params = (method_params or {}).get(method) or {}
        tasks = first_appearance(r["task"] for r in recs)
        colors = {t: f"C{i % 10}" for i, t in enumerate(tasks)}
        fig, ax = plt.subplots(figsize=(7.5, 4.5))
        alpha = max(0.15, min(0.8, 8.0 / math.sqrt(len(recs))))
        n_layers = 0
        for r in recs:
            ys = [float("nan") if as_number(v) is None else float(v) for v in r["ratios"]]
            n_layers = max(n_layers, len(ys))
            ax.plot(range(len(ys)), ys, lw=0.8, alpha=alpha, color=colors[r["task"]])
            sl = r.get("selection_layer")
            if sl is not None and 0 <= int(sl) < len(ys) and not math.isnan(ys[int(sl)]):
                ax.plot([int(sl)], [ys[int(sl)]], marker="o", ms=4, color=colors[r["task"]],
                        markeredgecolor="black", markeredgewidth=0.5, ls="none")
        handles = [plt.Line2D([], [], color=colors[t], lw=1.5, label=t) for t in tasks]
        tau = as_number(params.get("tau"))
        if tau is not None:
            ax.axhline(tau, color="black", ls="--", lw=1.2)
            handles.append(plt.Line2D([], [], color="black", ls="--", label=f"tau = {tau:g}"))
        l_min = as_number(params.get("l_min"))
        if l_min is not None:
            ax.axvline(l_min, color="grey", ls=":", lw=1.0)
            handles.append(plt.Line2D([], [], color="grey", ls=":", label=f"l_min = {l_min:g}"))
        handles.append(plt.Line2D([], [], marker="o", color="grey", markeredgecolor="black", ls="none",
                                  label="selection layer"))
        ax.legend(handles=handles, fontsize=8, loc="best")
        ax.set_xlim(-0.5, max(1, n_layers) - 0.5)
        ax.set_xlabel("layer")
        ax.set_ylabel("variance ratio")
        ax.set_title(f"{method}: per-layer ratio ({len(recs)} samples)", fontsize=10)
        ax.grid(alpha=0.3)
        paths.append(save_figure(plt, fig, out / f"ratios_{names[method]}.png", caveat=caveat))
    return paths


_VS_COLORS = {"too early": "C3", "at the layer needed": "C2", "later than needed": "C1"}


def _plot_vs_oracle(plt, records, out: Path, names, caveat=None) -> list[Path]:
    """Per ASL-like method (one that records ratios), a panel per task: its layer against the
    oracle's; a marker's area counts the samples there, its colour says early / exact / late."""
    by_method = defaultdict(list)
    for r, layer, needed in vs_oracle.pairs(records):
        if r.get("ratios"):
            by_method[r["method"]].append((r, layer, needed))
    top = max((o["num_layers"] - 1 for o in vs_oracle.oracle_records(records).values()), default=0)
    paths = []
    for method, matched in by_method.items():
        tasks = first_appearance(r["task"] for r, _, _ in matched)
        nr, nc = _grid(len(tasks), 3)
        fig, axes = plt.subplots(nr, nc, squeeze=False, figsize=(4.2 * nc, 4.0 * nr))
        for ax, task in zip(axes.flat, tasks):
            mine = [t for t in matched if t[0]["task"] == task]
            ax.plot([0, top], [0, top], color="grey", ls="--", lw=1.0, zorder=1)
            for (o, a), count in sorted(Counter((o, a) for _, a, o in mine).items()):
                kind = "too early" if a < o else "at the layer needed" if a == o else "later than needed"
                ax.scatter([o], [a], s=30 * count, color=_VS_COLORS[kind], edgecolor="black", lw=0.5, zorder=3)
            f = vs_oracle.figures(mine)
            ax.set_title(f"{task}: too early {f['oracle_too_early']:.0f}%, late {f['oracle_later']:.0f}%, "
                         f"lost {f['oracle_layers_lost']:.1f}", fontsize=9)
            ax.set_xlim(-0.5, top + 0.5)
            ax.set_ylim(-0.5, top + 0.5)
            ax.set_xlabel("oracle layer (earliest that keeps the full answer)")
            ax.set_ylabel(f"{method}'s selection layer")
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(tasks):]:
            ax.axis("off")
        handles = [plt.Line2D([], [], marker="o", color=c, markeredgecolor="black", ls="none", label=k)
                   for k, c in _VS_COLORS.items()]
        fig.legend(handles=handles, loc="lower center", ncols=3, fontsize=8, frameon=False)
        fig.suptitle(f"{method} vs the oracle ({len(matched)} samples; area = samples)", fontsize=10)
        fig.tight_layout(rect=(0, 0.05, 1, 1))
        paths.append(save_figure(plt, fig, out / f"vs_oracle_{names[method]}.png", tight=False, caveat=caveat))
    return paths


# --------------------------------------------------------------------------------------------
# accuracy / cost trade-off


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points that no other point dominates (x is a cost to minimise, y a value to maximise).

    q dominates p when x_q <= x_p and y_q >= y_p with one of them strict, so exact duplicates do not dominate
    each other and are all kept. The indices come in increasing x, ties by index, which is also the order in
    which the front is drawn. Points with a None or NaN coordinate are ignored.
    """
    valid = []
    for i, (x, y) in enumerate(points):
        x, y = as_number(x, infinite=True), as_number(y, infinite=True)  # the front is well defined with infinities
        if x is not None and y is not None:
            valid.append((x, -y, i))
    valid.sort()
    front: list[int] = []
    best = None  # highest y among points with a strictly lower x
    k = 0
    while k < len(valid):
        j = k
        while j < len(valid) and valid[j][0] == valid[k][0]:
            j += 1
        top = -valid[k][1]  # highest y at this x (sorted by -y)
        if best is None or top > best:
            front += [i for _, ny, i in valid[k:j] if -ny == top]
            best = top
        k = j
    return front


def _setting_label(row) -> str:
    return method_at(row.get("method"), row.get("budget"))


def _yerr(row, metric):
    """Asymmetric vertical error (below, above) from <metric>_lo / _hi, or None when absent."""
    y, lo, hi = as_number(row.get(metric)), as_number(row.get(f"{metric}_lo")), as_number(row.get(f"{metric}_hi"))
    if y is None or lo is None or hi is None:
        return None
    return max(0.0, y - lo), max(0.0, hi - y)


# Past this spread of a cost axis (largest / smallest) it is drawn in log scale: a methods run's
# TTFT ratios span 0.6 to 8.6 (second readings of the prompt), and linear, the 0.6-1.2 crowd is one column.
LOG_SPREAD = {"kv_mib": 10.0, "prefill_vs_full": 4.0, "ttft_s": 4.0}


def _tradeoff_panel(plt, ax, rows, metric, xkey, styles, show_labels):
    pts = []  # (x, y, row)
    for r in rows:
        y = as_number(r.get(metric))
        x = as_number(r.get(xkey)) if xkey != "kv_mib" else (
            None if as_number(r.get("kv_bytes")) is None else as_number(r.get("kv_bytes")) / 2 ** 20)
        if x is not None and y is not None:
            pts.append((x, y, r))
    if not pts:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
        ax.set_xticks([])
        ax.set_yticks([])
        return
    fams = defaultdict(list)
    for p in pts:
        fams[p[2]["_family"]].append(p)
    for fam, fp in fams.items():  # sweep line: the settings of one family in parameter order
        if len(fp) > 1 and fam != FULL_METHOD:
            fp = sorted(fp, key=lambda p: parameter_order(p[2]))
            ax.plot([p[0] for p in fp], [p[1] for p in fp], color=styles[fam][0], lw=0.8, alpha=0.6, zorder=2)
    for x, y, r in pts:
        err = _yerr(r, metric)
        full = r["_family"] == FULL_METHOD
        color, marker = styles[r["_family"]]
        ax.plot([x], [y], marker=marker, ms=14 if full else 6, color=color,
                markeredgecolor="black", markeredgewidth=0.6, ls="none", zorder=4.5 if full else 4)
        if err is not None:  # light, so that the markers and the front stay readable
            ax.errorbar([x], [y], yerr=[[err[0]], [err[1]]], fmt="none", ecolor=color,
                        elinewidth=0.8, capsize=2, alpha=0.45, zorder=1.5)
        if full:
            ax.axhline(y, color="black", ls=":", lw=0.8, alpha=0.6, zorder=1)
    xs = [p[0] for p in pts]
    if min(xs) > 0 and max(xs) / min(xs) > LOG_SPREAD[xkey]:  # a few far points would crowd the rest at one edge
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
        ax.set_xscale("log")
        if math.log10(max(xs) / min(xs)) <= 3:  # few decades: 1-2-5 ticks, else only one tick would show
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    if xkey == "prefill_vs_full":
        ax.axvline(1.0, color="black", ls=":", lw=0.8, alpha=0.6, zorder=1)
    lo, hi = ax.get_xlim()
    if show_labels:  # room on the right for the labels of the highest-cost points
        hi = hi * (hi / lo) ** 0.15 if ax.get_xscale() == "log" else hi + 0.15 * (hi - lo)
    # the front as "best score reachable at this cost or less": a staircase carried on to the right edge
    front = pareto_front([(x, y) for x, y, _ in pts])
    if front:
        fx, fy = [pts[i][0] for i in front] + [hi], [pts[i][1] for i in front] + [pts[front[-1]][1]]
        ax.step(fx, fy, where="post", color="black", ls="--", lw=1.3, alpha=0.7, zorder=2.5)
    ax.set_xlim(lo, hi)
    ax.grid(alpha=0.3)
    # coincident settings share one label; the others are placed where they overlap nothing. Too many
    # settings for a label each: the front's are labelled, the best of them being what a reader looks for
    labels: dict[tuple, list[str]] = {}
    for x, y, r in (pts if show_labels else [pts[i] for i in front]):
        labels.setdefault((x, y), []).append(_setting_label(r))
    if labels:
        place_labels(ax, [(x, y, " / ".join(labs)) for (x, y), labs in labels.items()])


# where a point's label may go, in points from it (right-above first), with its alignment
_OFFSETS = [(6, 4, "left", "bottom"), (6, -4, "left", "top"), (-6, 4, "right", "bottom"), (-6, -4, "right", "top"),
            (0, 9, "center", "bottom"), (0, -9, "center", "top"), (14, 12, "left", "bottom"),
            (14, -12, "left", "top"), (-14, 12, "right", "bottom"), (-14, -12, "right", "top")]


def place_labels(ax, items: list[tuple[float, float, str]]) -> list:
    """Annotate each (x, y, text) at the first offset whose box overlaps no label placed before
    it and no marker; where none is free, at the offset that overlaps least. Returns the annotations."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    to_px = ax.transData.transform
    markers = [_box_around(*to_px((x, y)), 4) for x, y, _ in items]
    placed, out = [], []
    for x, y, text in sorted(items, key=lambda it: (-it[1], it[0])):  # top to bottom
        best = None
        for dx, dy, ha, va in _OFFSETS:
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=7, ha=ha, va=va,
                              color="black", zorder=3.5,
                              bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.6))
            box = ann.get_window_extent(renderer).expanded(1.02, 1.1)
            clash = sum(_overlap(box, other) for other in placed + markers)
            if best is None or clash < best[0]:
                if best is not None:
                    best[1].remove()
                best = (clash, ann, box)
            else:
                ann.remove()
            if clash == 0:
                break
        placed.append(best[2])
        out.append(best[1])
    return out


def _box_around(x: float, y: float, r: float):
    from matplotlib.transforms import Bbox

    return Bbox.from_extents(x - r, y - r, x + r, y + r)


def _overlap(a, b) -> float:
    """The area (pixels) two boxes share."""
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(w, 0.0) * max(h, 0.0)


def parameter_order(row) -> tuple:
    """A sweep's settings in the order of their parameters: budget, then the numbers of the
    method's arguments ("asl(tau=0.3)" before "asl(tau=1.1)"), then the label."""
    numbers = tuple(float(v) for v in re.findall(r"=\s*(-?\d+(?:\.\d+)?(?:e-?\d+)?)", str(row.get("method"))))
    budget = as_number(row.get("budget"))
    return (-1 if budget is None else budget, numbers, str(row.get("method")))


def family_styles(families) -> dict:
    """Each family's (colour, marker), both cycling (ten colours, nine shapes), so that up to 90
    families differ (a methods run has over forty) and neighbours differ in both, which keeps
    coinciding hollow markers visible. The full cache is a black star."""
    styles, k = {}, 0
    for fam in families:
        if fam == FULL_METHOD:
            styles[fam] = ("black", "*")
        else:
            styles[fam] = (f"C{k % 10}", MARKERS[k % len(MARKERS)])
            k += 1
    return styles


_XLABELS = {"prefill_vs_full": "TTFT relative to full cache (ratio of medians)", "ttft_s": "TTFT (s, median)",
            "kv_mib": "KV cache (MiB)"}
_YLABELS = {"accuracy": "accuracy (%)", "partial": "partial score (%)"}


def _plot_tradeoff(plt, summary, out: Path, caveat=None) -> list[Path]:
    """Accuracy (and partial score) against prefill time and KV memory: a method is only better than another
    if it wins on the trade-off, so every setting is a point and the Pareto front is drawn."""
    rows = [dict(r, _family=r.get("family") or method_family(r.get("method"))) for r in summary
            if r.get("method") is not None and any(as_number(r.get(m)) is not None for m in ("accuracy", "partial"))]
    if not rows:
        return []
    families = first_appearance(r["_family"] for r in rows)
    styles = family_styles(families)
    tasks = first_appearance(r.get("task") for r in rows)
    tasks = [t for t in tasks if t != ALL_TASKS] + [t for t in tasks if t == ALL_TASKS]
    task_names = _safe_names(tasks)
    paths = []
    for task in tasks:
        trows = [r for r in rows if r.get("task") == task]
        lengths = sorted(first_appearance(r.get("length") for r in trows),
                         key=lambda v: (0, as_number(v)) if as_number(v) is not None else (1, str(v)))
        for length in lengths:
            lrows = [r for r in trows if r.get("length") == length]
            xkey = "prefill_vs_full" if any(as_number(r.get("prefill_vs_full")) is not None for r in lrows) else "ttft_s"
            has_x = any(as_number(r.get(xkey)) is not None or as_number(r.get("kv_bytes")) is not None for r in lrows)
            metrics = [m for m in ("accuracy", "partial") if any(as_number(r.get(m)) is not None for r in lrows)]
            settings = {(r.get("method"), r.get("budget")) for r in lrows}
            if not has_x or not metrics or len(settings) < 2:  # one point is no trade-off
                continue
            xkeys = [xkey, "kv_mib"]  # both columns always, "no data" where one is missing
            show_labels = len(settings) <= 12
            fig, axes = plt.subplots(len(metrics), 2, squeeze=False, layout="constrained",
                                     figsize=(12.0, 4.6 * len(metrics) + 0.8))
            for i, metric in enumerate(metrics):
                for j, xk in enumerate(xkeys):
                    ax = axes[i][j]
                    _tradeoff_panel(plt, ax, lrows, metric, xk, styles, show_labels)
                    ax.set_xlabel(_XLABELS[xk])
                    ax.set_ylabel(_YLABELS[metric])
                    ax.set_title(f"{_YLABELS[metric].split(' (')[0]} vs {_XLABELS[xk].split(' (')[0]}", fontsize=10)
            fams = [f for f in families if any(r["_family"] == f for r in lrows)]
            handles = [plt.Line2D([], [], marker=styles[f][1], ms=10 if f == FULL_METHOD else 6,
                                  color=styles[f][0], markeredgecolor="black", markeredgewidth=0.6,
                                  lw=0.8 if f != FULL_METHOD else 0, label="full cache" if f == FULL_METHOD else f)
                       for f in fams]
            handles.append(plt.Line2D([], [], color="black", alpha=0.7, ls="--", lw=1.3, label="Pareto front"))
            fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), fontsize=8,
                       frameon=False)
            n = max((as_number(r.get("n")) or 0) for r in lrows)
            fig.suptitle(f"{task}, length {length}: score vs cost"
                         + (f" (up to {int(n)} samples per point)" if n else "")
                         + ("; higher and further left is better"), fontsize=11)
            stem = f"tradeoff_{task_names[task]}" + (f"_{safe_name(length)}" if len(lengths) > 1 else "")
            paths.append(save_figure(plt, fig, out / f"{stem}.png", tight=False, caveat=caveat))
    return paths


def make_plots(records: list[dict], summary: list[dict], out_dir,
               method_params: dict[str, dict] | None = None, caveat: str | None = None) -> list[Path]:
    """Write the plots into out_dir/"plots" and return their paths; a plot whose data is absent is skipped.

    method_params maps a method label to its parameters (e.g. {"asl": {"tau": 0.7, "l_min": 8}});
    tau (and l_min) are drawn on that method's ratio curves when given. `caveat` (an unfinished
    run's) heads every figure (save_figure).
    """
    records = list(records or [])
    if summary is None:
        summary = summarize(records)
    if not records and not summary:
        return []
    plt = pyplot()
    out = Path(out_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    names = _safe_names(first_appearance([r.get("method") for r in records] + [r.get("method") for r in summary]))
    paths: list[Path] = []
    paths += _plot_niah(plt, records, out, names, caveat=caveat)
    paths += _plot_accuracy_vs_budget(plt, summary, out, caveat=caveat)
    paths += _plot_selection_layers(plt, records, out, names, caveat=caveat)
    paths += _plot_ratios(plt, records, out, names, method_params, caveat=caveat)
    paths += _plot_vs_oracle(plt, records, out, names, caveat=caveat)
    paths += _plot_tradeoff(plt, summary, out, caveat=caveat)
    return paths
