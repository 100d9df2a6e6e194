"""Aggregate the benchmark's per-sample records (samples.jsonl) into summary records, write them
as summary.csv / summary.json, and format them as a readable text table.

A per-sample record is a dict with (at least) ``task``, ``length``, ``method``, ``budget``,
``score``, ``ttft_s``, ``tpot_s``, ``kv_bytes``, ``peak_mem_bytes``, ``selection_layer`` and
``ratios``; see :func:`summarize` for how each summary field is computed.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import statistics
import tempfile
from collections import Counter
from pathlib import Path

SUMMARY_FIELDS = ["task", "length", "method", "budget", "select_tokens", "n", "accuracy", "ttft_s", "tpot_s",
                  "kv_bytes", "peak_mem_bytes", "prefill_vs_full", "selection_layers"]

ALL_TASKS = "all"
FULL_METHOD = "full"
NO_LAYER = "none"


# --------------------------------------------------------------------------------------------
# helpers


def _num(x):
    """A finite float, or None (for None / NaN / non-numbers)."""
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _median(values):
    vals = [v for v in (_num(x) for x in values) if v is not None]
    return statistics.median(vals) if vals else None


def _mean(values):
    vals = [v for v in (_num(x) for x in values) if v is not None]
    return statistics.fmean(vals) if vals else None


def _budget_key(b):
    """Sort key for budgets: None (full cache) first, then ascending."""
    return (0, 0.0) if b is None else (1, float(b))


def _layer_key(k: str):
    return (1, 0) if k == NO_LAYER else (0, int(k)) if k.lstrip("-").isdigit() else (0.5, k)


def _sorted_layers(counts: dict) -> dict:
    return {k: counts[k] for k in sorted(counts, key=_layer_key)}


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


def _first_appearance(values) -> list:
    out, seen = [], set()
    for v in values:
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out


def _common(values):
    """The single value shared by all, else the most common non-None value, else None."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return Counter(vals).most_common(1)[0][0]


# --------------------------------------------------------------------------------------------
# summarize


def summarize(records: list[dict]) -> list[dict]:
    """One summary record per (task, length, method, budget), plus "all" rows per (length, method, budget).

    n: sample count; accuracy: 100 * mean score; ttft_s / tpot_s: medians (tpot over non-None);
    kv_bytes: mean; peak_mem_bytes: median; prefill_vs_full: median TTFT / median TTFT of method
    "full" at the same task and length (None without a "full" row); selection_layers:
    {str(layer) or "none": count} for methods that ever select, {} otherwise.

    The "all" rows average the per-task rows of the same (length, method, budget): accuracy,
    ttft_s, tpot_s, kv_bytes and peak_mem_bytes are means of the per-task values, n and
    selection_layers are sums, prefill_vs_full is recomputed from the "all" TTFTs.
    """
    records = list(records)
    if not records:
        return []
    task_order = [t for t in _first_appearance(r.get("task") for r in records) if t != ALL_TASKS]
    method_order = _first_appearance(r.get("method") for r in records)
    selecting = set(selecting_methods(records))

    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r.get("task"), r.get("length"), r.get("method"), r.get("budget")), []).append(r)

    rows: list[dict] = []
    for (task, length, method, budget), recs in groups.items():
        scores = [_num(r.get("score")) for r in recs]
        acc = _mean(scores)
        layers: dict[str, int] = {}
        if method in selecting:
            c = Counter(NO_LAYER if r.get("selection_layer") is None else str(int(r["selection_layer"]))
                        for r in recs)
            layers = _sorted_layers(dict(c))
        rows.append({
            "task": task,
            "length": length,
            "method": method,
            "budget": budget,
            "select_tokens": _common(r.get("select_tokens") for r in recs),
            "n": len(recs),
            "accuracy": None if acc is None else 100.0 * acc,
            "ttft_s": _median(r.get("ttft_s") for r in recs),
            "tpot_s": _median(r.get("tpot_s") for r in recs),
            "kv_bytes": _mean(r.get("kv_bytes") for r in recs),
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
        rows.append({
            "task": ALL_TASKS,
            "length": length,
            "method": method,
            "budget": budget,
            "select_tokens": _common(r["select_tokens"] for r in rs),
            "n": sum(r["n"] for r in rs),
            "accuracy": _mean(r["accuracy"] for r in rs),
            "ttft_s": _mean(r["ttft_s"] for r in rs),
            "tpot_s": _mean(r["tpot_s"] for r in rs),
            "kv_bytes": _mean(r["kv_bytes"] for r in rs),
            "peak_mem_bytes": _mean(r["peak_mem_bytes"] for r in rs),
            "prefill_vs_full": None,
            "selection_layers": _sorted_layers(dict(layers)) if method in selecting else {},
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
        length = _num(r["length"])
        return (task_rank.get(r["task"], len(task_rank)), (0, length) if length is not None else (1, 0.0),
                method_rank.get(r["method"], len(method_rank)), _budget_key(r["budget"]))

    rows.sort(key=key)
    return rows


# --------------------------------------------------------------------------------------------
# writing


def _atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _json_safe(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def write_summary(summary: list[dict], out_dir) -> None:
    """Write out_dir/summary.csv (selection_layers as a JSON string, None as empty) and
    out_dir/summary.json (a list of records). Each file is written to a temp file, then os.replace'd."""
    import io

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in summary:
        out = {}
        for k in SUMMARY_FIELDS:
            v = row.get(k)
            if k == "selection_layers":
                out[k] = json.dumps(v or {})
            elif v is None:
                out[k] = ""
            else:
                out[k] = v
        w.writerow(out)
    _atomic_write_text(out_dir / "summary.csv", buf.getvalue())
    data = [_json_safe({k: row.get(k) for k in SUMMARY_FIELDS}) for row in summary]
    _atomic_write_text(out_dir / "summary.json", json.dumps(data, indent=1) + "\n")


# --------------------------------------------------------------------------------------------
# text table

TASK_W = 7      # max characters of a task column header
LABEL_W = 22    # max characters of the method label
LAYERS_W = 26   # max characters of the ASL layers column


def _clip(s: str, w: int) -> str:
    return s if len(s) <= w else s[: w - 1] + "~"


def abbreviate_tasks(tasks, width: int = TASK_W) -> dict[str, str]:
    """Short, unique column headers for task names ("passage_retrieval" -> "pas_ret")."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for t in tasks:
        name = str(t)
        known = re.fullmatch(r"niah_(single|multikey|multivalue|multiquery)_?(\d?)", name)
        if len(name) <= width:
            ab = name
        elif known:  # niah_multikey_3 -> nh_mk3, niah_single_1 -> nh_s1, niah_multivalue -> nh_mv
            kind = {"single": "s", "multikey": "mk", "multivalue": "mv", "multiquery": "mq"}[known[1]]
            ab = f"nh_{kind}{known[2]}"
        else:
            parts = [p for p in re.split(r"[_\-.\s/]+", name) if p]
            if len(parts) >= 2 and width >= 3:
                p0, p1 = parts[0], parts[1]
                avail = width - 1
                n1 = min(len(p1), avail // 2)
                n0 = min(len(p0), avail - n1)
                n1 = min(len(p1), avail - n0)
                ab = f"{p0[:n0]}_{p1[:n1]}"
            else:
                ab = name[:width]
        base, i = ab, 2
        while ab in used:
            suffix = str(i)
            ab = base[: width - len(suffix)] + suffix
            i += 1
        used.add(ab)
        out[t] = ab
    return out


def _fmt(v, spec: str, none: str = "-") -> str:
    v = _num(v)
    return none if v is None else format(v, spec)


def format_layers(layers: dict | None) -> str:
    """Compact selection-layer counts: "10:3 21:2 none:1"."""
    if not layers:
        return "-"
    return " ".join(f"{k}:{v}" for k, v in _sorted_layers(layers).items())


def format_table(summary: list[dict]) -> str:
    """A fixed-width table: one block per length; rows = method (and budget when a block has
    several); columns = each task's accuracy (%), "all", median TTFT (s), TPOT (ms), KV MiB,
    TTFT relative to the full cache, and the selection layers (ASL-like methods)."""
    if not summary:
        return "(no results)"
    tasks = [t for t in _first_appearance(r["task"] for r in summary) if t != ALL_TASKS]
    abbr = abbreviate_tasks(tasks)
    lengths = sorted(_first_appearance(r["length"] for r in summary),
                     key=lambda x: (0, x) if _num(x) is not None else (1, 0))
    lines: list[str] = []
    abbreviated = {t: a for t, a in abbr.items() if a != str(t)}
    if abbreviated:
        lines.append("tasks: " + ", ".join(f"{a}={t}" for t, a in abbreviated.items()))
    for length in lengths:
        block = [r for r in summary if r["length"] == length]
        keys = _first_appearance((r["method"], r["budget"]) for r in block)
        budgets = {b for _, b in keys if b is not None}
        per_method_budgets = Counter(m for m, _ in keys)
        show_budget = len(budgets) > 1 or any(c > 1 for c in per_method_budgets.values())
        labels = {}
        for m, b in keys:
            lab = str(m)
            if show_budget and b is not None:
                lab = f"{_clip(lab, LABEL_W - len(str(b)) - 1)}@{b}"
            labels[(m, b)] = _clip(lab, LABEL_W)
        lw = max([6] + [len(s) for s in labels.values()])
        block_tasks = [t for t in tasks if any(r["task"] == t for r in block)]
        tw = [max(5, len(abbr[t])) for t in block_tasks]
        header = f"{'method':<{lw}} " + " ".join(f"{abbr[t]:>{w}}" for t, w in zip(block_tasks, tw))
        header += f" {'all':>5} {'TTFT s':>7} {'TPOT ms':>7} {'KV MiB':>7} {'vsFull':>6}  ASL layers"
        title = f"length {length}"
        if not show_budget and budgets:
            title += f" (budget {next(iter(budgets))})"
        lines.append("")
        lines.append(f"== {title} " + "=" * max(3, min(len(header), 100) - len(title) - 4))
        lines.append(header)
        lines.append("-" * len(header))
        cell = {(r["task"], r["method"], r["budget"]): r for r in block}
        for m, b in keys:
            allr = cell.get((ALL_TASKS, m, b))
            if allr is None:  # no "all" row (summary built elsewhere): fall back to the task rows
                rs = [cell[(t, m, b)] for t in block_tasks if (t, m, b) in cell]
                allr = {"accuracy": _mean(r["accuracy"] for r in rs), "ttft_s": _mean(r["ttft_s"] for r in rs),
                        "tpot_s": _mean(r["tpot_s"] for r in rs), "kv_bytes": _mean(r["kv_bytes"] for r in rs),
                        "prefill_vs_full": None, "selection_layers": {}}
            accs = []
            for t, w in zip(block_tasks, tw):
                r = cell.get((t, m, b))
                accs.append(f"{_fmt(r and r['accuracy'], '.1f'):>{w}}")
            tpot = _num(allr.get("tpot_s"))
            kv = _num(allr.get("kv_bytes"))
            line = (f"{labels[(m, b)]:<{lw}} " + " ".join(accs)
                    + f" {_fmt(allr.get('accuracy'), '.1f'):>5}"
                    + f" {_fmt(allr.get('ttft_s'), '.3f'):>7}"
                    + f" {_fmt(None if tpot is None else tpot * 1e3, '.1f'):>7}"
                    + f" {_fmt(None if kv is None else kv / 2**20, '.1f'):>7}"
                    + f" {_fmt(allr.get('prefill_vs_full'), '.2f'):>6}"
                    + f"  {_clip(format_layers(allr.get('selection_layers')), LAYERS_W)}")
            lines.append(line.rstrip())
    return "\n".join(lines).lstrip("\n")
