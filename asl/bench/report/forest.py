"""plots/vs_reference[_<length>].png: every method against the ASL of its regime in one picture.

With dozens of methods, a trade-off plot crowds; the question "which differ from ASL, and by how
much?" is answered by one row per method (over all tasks): its paired difference from its
reference in accuracy and in partial score, in points, with a paired 95% interval (Newcombe's,
for the partial score on each pair's four shares: not a point where the two agree on every sample).
A filled marker is a difference the table calls a win or a loss (Holm-adjusted exact McNemar
p < 0.05, vs_reference); a hollow one is not, whatever its interval looks like. Each row's label
gives its cost against the reference (KV bytes and TTFT, x the reference's), so a gain bought
with more KV or a longer prefill reads as such.
"""
from __future__ import annotations

from pathlib import Path

from .plots import pyplot, safe_name, save_figure
from .stats import ALL_TASKS, correct, paired_proportion_diff, paired_score_diff, partial_of
from .summary import SIGNIFICANT_P, first_appearance
from .vs_reference import row_names

METRICS = {"accuracy": lambda r: float(correct(r.get("score"))), "partial": partial_of}
TITLES = {"accuracy": "fully correct answers: method - reference (points)",
          "partial": "partial score: method - reference (points)"}


def differences(records: list[dict], test: dict, metric: str) -> tuple[float, float, float] | None:
    """The paired mean difference (x100) of `metric` between a test's method and its reference
    over the samples both ran (all tasks: paired by task and id), with its interval (Newcombe's
    for accuracy, the same on the four shares of each pair for the partial score:
    stats.paired_score_diff); None when a record lacks the metric."""
    def runs(method, budget):
        return {(r.get("task"), r.get("id")): r for r in records if r.get("length") == test["length"]
                and r.get("method") == method and r.get("budget") == budget
                and test["task"] in (ALL_TASKS, r.get("task"))}

    mine, ref = runs(test["method"], test["budget"]), runs(test["reference"], test["reference_budget"])
    shared = [k for k in mine if k in ref]
    a = [METRICS[metric](mine[k]) for k in shared]
    b = [METRICS[metric](ref[k]) for k in shared]
    if not shared or None in a or None in b:
        return None
    diff, lo, hi = (paired_proportion_diff if metric == "accuracy" else paired_score_diff)(a, b)
    return 100 * diff, 100 * lo, 100 * hi


def plot_vs_reference(records: list[dict], tests: list[dict], out_dir, caveat: str | None = None) -> list[Path]:
    """One figure per length of the pooled ("all") tests (asl.bench.report.vs_reference); none
    without tests. Rows in the table's order, colour by reference; `caveat` (an unfinished run's)
    heads each figure (plots.save_figure)."""
    pooled = [t for t in tests if t["task"] == ALL_TASKS]
    lengths = first_appearance(t["length"] for t in pooled)
    if not pooled:
        return []
    plt = pyplot()
    out = Path(out_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    colours = {ref: f"C{i % 10}" for i, ref in enumerate(first_appearance((t["reference"], t["reference_budget"])
                                                                         for t in pooled))}
    paths = []
    for length in lengths:
        rows = [t for t in pooled if t["length"] == length]
        data = {m: [differences(records, t, m) for t in rows] for m in METRICS}
        metrics = [m for m in METRICS if any(d is not None for d in data[m])]
        labels = [row_label(t, names) for t, names in zip(rows, row_names(rows))]
        label_width = 0.06 * max(map(len, labels))  # inches of 8-point monospace
        height = 0.26 * len(rows) + 1.9
        fig, axes = plt.subplots(1, len(metrics), sharey=True, squeeze=False,
                                 figsize=(4.5 * len(metrics) + label_width, height))
        for ax, metric in zip(axes[0], metrics):
            _panel(ax, rows, data[metric], colours, filled=metric == "accuracy")
            ax.set_title(TITLES[metric], fontsize=10)
        axes[0][0].set_yticks(range(len(rows)), labels, fontsize=8,
                                 fontfamily="monospace")  # the cost columns line up
        axes[0][0].set_ylim(len(rows) - 0.5, -0.5)
        n = max(t["n"] for t in rows)
        title = (f"each method against the ASL of its regime, all tasks, length {length} (n = {n} paired samples);"
                 " filled: Holm-adjusted McNemar p < 0.05;\nKV and TTFT: the method's cost, x the reference's")
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        stem = "vs_reference" + (f"_{safe_name(length)}" if len(lengths) > 1 else "")
        paths.append(save_figure(plt, fig, out / f"{stem}.png", tight=False, caveat=caveat))
    return paths


def row_label(test: dict, names: tuple[str, str] | None = None) -> str:
    """"snapkv  [vs asl+snapkv]  KV 1.00x  TTFT 1.17x": the method, its reference (`names`, from
    vs_reference.row_names, where a budget sweep needs "snapkv@512"), its cost."""
    cost = "".join(f"  {name} {test[field]:5.2f}x" for name, field in (("KV", "kv_ratio"), ("TTFT", "ttft_ratio"))
                   if test.get(field) is not None)
    method, ref = names or (test["method"], test["reference"])
    return f"{method}  [vs {ref}]{cost}"


def _panel(ax, rows: list[dict], diffs: list, colours: dict, filled: bool) -> None:
    for y, (test, d) in enumerate(zip(rows, diffs)):
        if d is None:
            continue
        diff, lo, hi = d
        colour = colours[(test["reference"], test["reference_budget"])]
        solid = filled and test["holm_p"] < SIGNIFICANT_P
        ax.errorbar([diff], [y], xerr=[[diff - lo], [hi - diff]], fmt="o", ms=5, color=colour, capsize=2, lw=1,
                    markerfacecolor=colour if solid else "white", markeredgecolor=colour)
    ax.axvline(0, color="black", lw=0.8)
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlim(-105, 105)
