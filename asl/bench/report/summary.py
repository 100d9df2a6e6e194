"""Aggregate the benchmark's per-sample records (samples.jsonl) into summary records, and write
them as summary.csv / summary.json (and the paired comparisons of asl.bench.report.stats.compare
as comparisons.csv / comparisons.json). The text table is asl.bench.report.table.

A per-sample record is a dict with (at least) ``task``, ``length``, ``method``, ``budget``,
``score``, ``ttft_s``, ``tpot_s``, ``kv_bytes``, ``peak_mem_bytes``, ``selection_layer`` and
``ratios``, optionally ``partial`` and ``family``; see :func:`summarize` for how each summary
field is computed.
"""
from __future__ import annotations

import csv
import json
import math
import statistics
from collections import Counter
from pathlib import Path

from asl.atomic import write_atomic

from . import vs_oracle
from .stats import ALL_TASKS, COMPARISON_FIELDS, correct, mean_interval

SUMMARY_FIELDS = ["task", "length", "method", "family", "budget", "select_tokens", "n", "accuracy", "accuracy_lo",
                  "accuracy_hi", "partial", "partial_lo", "partial_hi", "ttft_s", "tpot_s", "kv_bytes",
                  "peak_mem_bytes", "prefill_vs_full", "selection_layers", *vs_oracle.FIELDS]

FULL_METHOD = "full"
NO_LAYER = "none"
ASL_FAMILY = "asl"
CONFIDENCE = 0.95
SIGNIFICANT_P = 0.05


# --------------------------------------------------------------------------------------------
# helpers


def as_number(x, infinite: bool = False):
    """A finite float (or an infinite one, with `infinite`), else None (None / NaN / non-numbers)."""
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) or (infinite and not math.isnan(v)) else None


def _median(values):
    vals = [v for v in (as_number(x) for x in values) if v is not None]
    return statistics.median(vals) if vals else None


def mean_of(values):
    vals = [v for v in (as_number(x) for x in values) if v is not None]
    return statistics.fmean(vals) if vals else None


def _budget_key(b):
    """Sort key for budgets: None (full cache) first, then ascending."""
    return (0, 0.0) if b is None else (1, float(b))


def layer_key(k: str):
    return (1, 0) if k == NO_LAYER else (0, int(k)) if k.lstrip("-").isdigit() else (0.5, k)


def sorted_layers(counts: dict) -> dict:
    return {k: counts[k] for k in sorted(counts, key=layer_key)}


def selects(record: dict) -> bool:
    """Whether a record comes from a method that selects tokens at some layer (ASL-like)."""
    return record.get("selection_layer") is not None or bool(record.get("ratios"))


def selecting_methods(records) -> list[str]:
    """Methods (first-appearance order) with at least one record that selected or has ratios."""
    out: list[str] = []
    for r in records:
        m = r.get("method")
        if m not in out and selects(r):
            out.append(m)
    return out


def first_appearance(values) -> list:
    out, seen = [], set()
    for v in values:
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out


def shows_budget(keys) -> bool:
    """Whether rows keyed (method, budget) need their budget to be told apart: several budgets,
    or one method at more than one (a budget sweep)."""
    keys = set(keys)
    return len({b for _, b in keys if b is not None}) > 1 or any(c > 1 for c in Counter(m for m, _ in keys).values())


def method_at(method, budget, show_budget: bool = True) -> str:
    """A row's name: "fastkv@512" (the budget shown, where there is one), else "fastkv"."""
    return f"{method}@{budget}" if show_budget and budget is not None else str(method)


def _common(values):
    """The single value shared by all, else the most common non-None value, else None."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return Counter(vals).most_common(1)[0][0]


def method_family(label) -> str:
    """The method label without its "(...)" arguments: "asl(tau=0.5)+snapkv" -> "asl+snapkv".
    Groups the settings of one method (a tau sweep) so each can be compared to its reference."""
    out, depth = [], 0
    for ch in str(label):
        if ch == "(":
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
        elif not depth:
            out.append(ch)
    return "".join(out).strip() or str(label)


def _pct_pair(lo, hi):
    return (None, None) if lo is None or hi is None else (100.0 * lo, 100.0 * hi)


def accuracy_interval(scores) -> tuple[float | None, float | None]:
    """95% interval of the accuracy (%), the mean score: Wilson's (stats.mean_interval), which
    for 0/1 scores is Wilson on the fully-correct count, and for fractional ones (ruler_all with
    several references) the binomial worst case of a mean in [0, 1]."""
    vals = [v for v in (as_number(x) for x in scores) if v is not None]
    if not vals:
        return None, None
    return _pct_pair(*mean_interval([1.0 if correct(v) else v for v in vals], CONFIDENCE))


def _partials(recs) -> list[float] | None:
    """Every record's partial score, or None when any record lacks one (older records)."""
    vals = [as_number(r.get("partial")) for r in recs]
    return None if not vals or None in vals else vals


def partial_stats(recs) -> tuple[float | None, float | None, float | None]:
    """(mean, lo, hi) of the records' partial scores in %, Wilson's interval of a mean in [0, 1]
    (stats.mean_interval); Nones without them."""
    vals = _partials(recs)
    if vals is None:
        return None, None, None
    return (100.0 * statistics.fmean(vals), *_pct_pair(*mean_interval(vals, CONFIDENCE)))


# --------------------------------------------------------------------------------------------
# summarize


def summarize(records: list[dict]) -> list[dict]:
    """One summary record per (task, length, method, budget), plus "all" rows per (length, method, budget).

    n: sample count; accuracy: 100 * mean score; ttft_s / tpot_s: medians (tpot over non-None);
    kv_bytes: mean; peak_mem_bytes: median; prefill_vs_full: median TTFT / median TTFT of method
    "full" at the same task and length (None without a "full" row); selection_layers:
    {str(layer) or "none": count} for methods that ever select, {} otherwise.
    family: the most common record "family", else the label without "(...)" (method_family).
    accuracy_lo / accuracy_hi: the 95% interval of accuracy (accuracy_interval: Wilson's with the
    mean score as the proportion; on 0/1 scores, Wilson on the fully-correct count).
    partial / partial_lo / partial_hi: 100 * mean partial score and its interval (the same); None
    unless every record of the group has a ``partial``.

    The "all" rows average the per-task rows of the same (length, method, budget): accuracy,
    partial, ttft_s, tpot_s, kv_bytes and peak_mem_bytes are means of the per-task values, n and
    selection_layers are sums, prefill_vs_full is recomputed from the "all" TTFTs. Their
    intervals are computed over all samples pooled (so with unequal task sizes the pooled
    interval is centred on the pooled mean, not exactly on the mean over tasks).

    oracle_*: where the method `oracle` ran on the same samples, a selecting method's layer
    against the oracle's (asl.bench.report.vs_oracle; pooled over tasks in the "all" rows), and the
    oracle's median search cost in prefills on its own rows; None otherwise.
    """
    records = list(records)
    if not records:
        return []
    task_order = [t for t in first_appearance(r.get("task") for r in records) if t != ALL_TASKS]
    method_order = first_appearance(r.get("method") for r in records)
    selecting = set(selecting_methods(records))

    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r.get("task"), r.get("length"), r.get("method"), r.get("budget")), []).append(r)

    rows: list[dict] = []
    for (task, length, method, budget), recs in groups.items():
        scores = [as_number(r.get("score")) for r in recs]
        acc = mean_of(scores)
        acc_lo, acc_hi = accuracy_interval(scores)
        part, part_lo, part_hi = partial_stats(recs)
        layers: dict[str, int] = {}
        if method in selecting:
            c = Counter(NO_LAYER if r.get("selection_layer") is None else str(int(r["selection_layer"]))
                        for r in recs)
            layers = sorted_layers(dict(c))
        rows.append({
            "task": task,
            "length": length,
            "method": method,
            "family": _common(r.get("family") for r in recs) or method_family(method),
            "budget": budget,
            "select_tokens": _common(r.get("select_tokens") for r in recs),
            "n": len(recs),
            "accuracy": None if acc is None else 100.0 * acc,
            "accuracy_lo": acc_lo,
            "accuracy_hi": acc_hi,
            "partial": part,
            "partial_lo": part_lo,
            "partial_hi": part_hi,
            "ttft_s": _median(r.get("ttft_s") for r in recs),
            "tpot_s": _median(r.get("tpot_s") for r in recs),
            "kv_bytes": mean_of(r.get("kv_bytes") for r in recs),
            "peak_mem_bytes": _median(r.get("peak_mem_bytes") for r in recs),
            "prefill_vs_full": None,
            "selection_layers": layers,
        })

    # "all" rows: mean over tasks per (length, method, budget)
    by_lmb: dict[tuple, list[dict]] = {}
    for row in rows:
        by_lmb.setdefault((row["length"], row["method"], row["budget"]), []).append(row)
    for (length, method, budget), rs in by_lmb.items():
        layers: Counter = Counter()
        for r in rs:
            layers.update(r["selection_layers"])
        pooled = [x for r in rs for x in groups[(r["task"], length, method, budget)]]
        acc_lo, acc_hi = accuracy_interval(x.get("score") for x in pooled)
        _, part_lo, part_hi = partial_stats(pooled)
        parts = [r["partial"] for r in rs]
        rows.append({
            "task": ALL_TASKS,
            "length": length,
            "method": method,
            "family": _common(r["family"] for r in rs),
            "budget": budget,
            "select_tokens": _common(r["select_tokens"] for r in rs),
            "n": sum(r["n"] for r in rs),
            "accuracy": mean_of(r["accuracy"] for r in rs),
            "accuracy_lo": acc_lo,
            "accuracy_hi": acc_hi,
            "partial": None if None in parts else statistics.fmean(parts),
            "partial_lo": part_lo,
            "partial_hi": part_hi,
            "ttft_s": mean_of(r["ttft_s"] for r in rs),
            "tpot_s": mean_of(r["tpot_s"] for r in rs),
            "kv_bytes": mean_of(r["kv_bytes"] for r in rs),
            "peak_mem_bytes": mean_of(r["peak_mem_bytes"] for r in rs),
            "prefill_vs_full": None,
            "selection_layers": sorted_layers(dict(layers)) if method in selecting else {},
        })

    # prefill vs full: against the "full" row at the same task & length (budget None preferred)
    full_ttft: dict[tuple, float] = {}
    for row in sorted((r for r in rows if r["method"] == FULL_METHOD), key=lambda r: _budget_key(r["budget"])):
        full_ttft.setdefault((row["task"], row["length"]), row["ttft_s"])
    for row in rows:
        ref = full_ttft.get((row["task"], row["length"]))
        if ref and row["ttft_s"] is not None:
            row["prefill_vs_full"] = row["ttft_s"] / ref

    task_rank = {t: i for i, t in enumerate(task_order + [ALL_TASKS])}
    method_rank = {m: i for i, m in enumerate(method_order)}

    def key(r):
        length = as_number(r["length"])
        return (task_rank.get(r["task"], len(task_rank)), (0, length) if length is not None else (1, 0.0),
                method_rank.get(r["method"], len(method_rank)), _budget_key(r["budget"]))

    rows.sort(key=key)
    return vs_oracle.annotate(rows, records)


# --------------------------------------------------------------------------------------------
# writing


def _json_safe(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def _csv_value(k: str, v):
    if k == "selection_layers":
        return json.dumps(v or {})
    return "" if v is None else v


def write_rows(rows: list[dict], fields: list[str], out_dir, stem: str) -> None:
    """out_dir/<stem>.csv (None as empty) and out_dir/<stem>.json (a list of records), each
    written to a temp file then os.replace'd, so a reader never sees half a file."""
    import io

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: _csv_value(k, row.get(k)) for k in fields})
    write_atomic(out_dir / f"{stem}.csv", buf.getvalue())
    data = [_json_safe({k: row.get(k) for k in fields}) for row in rows]
    write_atomic(out_dir / f"{stem}.json", json.dumps(data, indent=1) + "\n")


def write_summary(summary: list[dict], out_dir) -> None:
    """Write out_dir/summary.csv (selection_layers as a JSON string, None as empty) and
    out_dir/summary.json (a list of records, SUMMARY_FIELDS). Each file is written atomically."""
    write_rows(summary, SUMMARY_FIELDS, out_dir, "summary")


def write_comparisons(rows: list[dict], out_dir) -> None:
    """Write the paired comparisons (asl.bench.report.stats.compare) to out_dir/comparisons.csv and
    out_dir/comparisons.json (a list of records, COMPARISON_FIELDS), each atomically. Kept apart
    from summary.json, which stays a list of summary rows for existing readers."""
    write_rows(rows, COMPARISON_FIELDS, out_dir, "comparisons")

