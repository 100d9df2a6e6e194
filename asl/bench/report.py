"""Aggregate the benchmark's per-sample records (samples.jsonl) into summary records, write them
as summary.csv / summary.json (and the paired comparisons of asl.bench.stats.compare as
comparisons.csv / comparisons.json), and format them as a readable text table.

A per-sample record is a dict with (at least) ``task``, ``length``, ``method``, ``budget``,
``score``, ``ttft_s``, ``tpot_s``, ``kv_bytes``, ``peak_mem_bytes``, ``selection_layer`` and
``ratios``, optionally ``partial`` and ``family``; see :func:`summarize` for how each summary
field is computed.
"""
from __future__ import annotations

import csv
import json
import math
import re
import statistics
from collections import Counter
from pathlib import Path

from asl.atomic import write_atomic

from . import vs_oracle
from .stats import ALL_TASKS, COMPARISON_FIELDS, bootstrap_mean_ci, correct, wilson

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


def _mean(values):
    vals = [v for v in (as_number(x) for x in values) if v is not None]
    return statistics.fmean(vals) if vals else None


def _budget_key(b):
    """Sort key for budgets: None (full cache) first, then ascending."""
    return (0, 0.0) if b is None else (1, float(b))


def layer_key(k: str):
    return (1, 0) if k == NO_LAYER else (0, int(k)) if k.lstrip("-").isdigit() else (0.5, k)


def _sorted_layers(counts: dict) -> dict:
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
    """95% interval of the accuracy (%): Wilson on the fully-correct count when every score is 0
    or 1, else (fractional scores, e.g. ruler_all with several references) the bootstrap interval
    of the mean score, which is what the accuracy is."""
    vals = [v for v in (as_number(x) for x in scores) if v is not None]
    if not vals:
        return None, None
    if all(correct(v) or v <= 1e-9 for v in vals):
        return _pct_pair(*wilson(sum(correct(v) for v in vals), len(vals), CONFIDENCE))
    return _pct_pair(*bootstrap_mean_ci(vals, CONFIDENCE))


def _partials(recs) -> list[float] | None:
    """Every record's partial score, or None when any record lacks one (older records)."""
    vals = [as_number(r.get("partial")) for r in recs]
    return None if not vals or None in vals else vals


def partial_stats(recs) -> tuple[float | None, float | None, float | None]:
    """(mean, lo, hi) of the records' partial scores in %, bootstrap interval; Nones without them."""
    vals = _partials(recs)
    if vals is None:
        return None, None, None
    return (100.0 * statistics.fmean(vals), *_pct_pair(*bootstrap_mean_ci(vals, CONFIDENCE)))


# --------------------------------------------------------------------------------------------
# summarize


def summarize(records: list[dict]) -> list[dict]:
    """One summary record per (task, length, method, budget), plus "all" rows per (length, method, budget).

    n: sample count; accuracy: 100 * mean score; ttft_s / tpot_s: medians (tpot over non-None);
    kv_bytes: mean; peak_mem_bytes: median; prefill_vs_full: median TTFT / median TTFT of method
    "full" at the same task and length (None without a "full" row); selection_layers:
    {str(layer) or "none": count} for methods that ever select, {} otherwise.
    family: the most common record "family", else the label without "(...)" (method_family).
    accuracy_lo / accuracy_hi: the 95% interval of accuracy (accuracy_interval: Wilson on the
    fully-correct count when scores are 0/1, bootstrap of the mean score when fractional).
    partial / partial_lo / partial_hi: 100 * mean partial score and its bootstrap interval; None
    unless every record of the group has a ``partial``.

    The "all" rows average the per-task rows of the same (length, method, budget): accuracy,
    partial, ttft_s, tpot_s, kv_bytes and peak_mem_bytes are means of the per-task values, n and
    selection_layers are sums, prefill_vs_full is recomputed from the "all" TTFTs. Their
    intervals are computed over all samples pooled (so with unequal task sizes the pooled
    interval is centred on the pooled mean, not exactly on the mean over tasks).

    oracle_*: where the method `oracle` ran on the same samples, a selecting method's layer
    against the oracle's (asl.bench.vs_oracle; pooled over tasks in the "all" rows), and the
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
        acc = _mean(scores)
        acc_lo, acc_hi = accuracy_interval(scores)
        part, part_lo, part_hi = partial_stats(recs)
        layers: dict[str, int] = {}
        if method in selecting:
            c = Counter(NO_LAYER if r.get("selection_layer") is None else str(int(r["selection_layer"]))
                        for r in recs)
            layers = _sorted_layers(dict(c))
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
            "accuracy": _mean(r["accuracy"] for r in rs),
            "accuracy_lo": acc_lo,
            "accuracy_hi": acc_hi,
            "partial": None if None in parts else statistics.fmean(parts),
            "partial_lo": part_lo,
            "partial_hi": part_hi,
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


def _write_rows(rows: list[dict], fields: list[str], out_dir, stem: str) -> None:
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
    _write_rows(summary, SUMMARY_FIELDS, out_dir, "summary")


def write_comparisons(rows: list[dict], out_dir) -> None:
    """Write the paired comparisons (asl.bench.stats.compare) to out_dir/comparisons.csv and
    out_dir/comparisons.json (a list of records, COMPARISON_FIELDS), each atomically. Kept apart
    from summary.json, which stays a list of summary rows for existing readers."""
    _write_rows(rows, COMPARISON_FIELDS, out_dir, "comparisons")


# --------------------------------------------------------------------------------------------
# text table

TASK_W = 7      # max characters of a task column header
LABEL_W = 40    # max characters of the method label (custom policies + eviction are long)
LAYERS_W = 26   # max characters of the ASL layers column
TABLE_W = 160   # wrap the task columns into several sub-tables beyond this width


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


def _fmt(v, fmt: str, none: str = "-") -> str:
    v = as_number(v)
    return none if v is None else format(v, fmt)


def format_layers(layers: dict | None) -> str:
    """Compact selection-layer counts: "10:3 21:2 none:1"."""
    if not layers:
        return "-"
    return " ".join(f"{k}:{v}" for k, v in _sorted_layers(layers).items())


def reference_method(key: tuple, keys, families: dict) -> tuple | None:
    """The ASL method a row is tested against: the same regime, i.e. "asl+<eviction>" for a
    family ending in "+<eviction>", else "asl", at the same budget. Among several settings of it
    (a tau sweep) the one labelled exactly so, else none. A budget-free row (the full cache) uses
    the ASL method of the only budget present, if there is one. None for the reference itself."""
    method, budget = key
    fam = families.get(key) or method_family(method)
    target = f"{ASL_FAMILY}+{fam.rsplit('+', 1)[1]}" if "+" in fam else ASL_FAMILY
    cands = [k for k in keys if (families.get(k) or method_family(k[0])) == target]
    same = [k for k in cands if k[1] == budget]
    if not same and budget is None and len({k[1] for k in cands}) == 1:
        same = cands
    if len(same) > 1:
        same = [k for k in same if k[0] == target]
    ref = same[0] if len(same) == 1 else None
    return None if ref == key else ref


def chosen_reference(key: tuple, keys, label: str) -> tuple | None:
    """The row of method `label` a row is tested against (--reference): the same budget, else
    its only budget (the full cache has none). None for the reference itself."""
    cands = [k for k in keys if k[0] == label]
    same = [k for k in cands if k[1] == key[1]] or (cands if len(cands) == 1 else [])
    ref = same[0] if len(same) == 1 else None
    return None if ref == key else ref


def _pvalues(comparisons) -> dict[tuple, float]:
    """(task, length, method key, method key) -> McNemar p, both orders."""
    out: dict[tuple, float] = {}
    for c in comparisons or ():
        p = as_number(c.get("mcnemar_p"))
        if p is None:
            continue
        a, b = (c.get("method_a"), c.get("budget_a")), (c.get("method_b"), c.get("budget_b"))
        out[(c.get("task"), c.get("length"), a, b)] = out[(c.get("task"), c.get("length"), b, a)] = p
    return out


def _acc_text(row) -> str:
    """Accuracy and its interval as integers (% points), "40 [22,61]"; "-" without a value."""
    acc = as_number(row and row.get("accuracy"))
    if acc is None:
        return "-"
    lo, hi = as_number(row.get("accuracy_lo")), as_number(row.get("accuracy_hi"))
    return f"{acc:.0f}" if lo is None or hi is None else f"{acc:.0f} [{lo:.0f},{hi:.0f}]"


def _mid_clip(s: str, w: int) -> str:
    """Cut the middle, keeping the name's head and its tail (the "+<eviction>" and last arguments)."""
    if len(s) <= w:
        return s
    head = (w - 1) // 2
    return s[:head] + "~" + s[len(s) - (w - 1 - head):]


def _block_labels(keys, show_budget: bool) -> tuple[dict[tuple, str], dict[str, str]]:
    """Row labels ("label@budget" when a block has several budgets) of at most LABEL_W characters,
    unique within the block, and {cut label: full label} for those that had to be cut."""
    labels, cut = {}, {}
    for m, b in keys:
        tail = f"@{b}" if show_budget and b is not None else ""
        full = lab = f"{m}{tail}"
        i = 1
        while len(lab) > LABEL_W or lab in labels.values():
            mark = "" if i == 1 else str(i)
            lab = _mid_clip(str(m), LABEL_W - len(tail) - len(mark)) + mark + tail
            i += 1
        labels[(m, b)] = lab
        if lab != full:
            cut[lab] = full
    return labels, cut


def _all_row(cell: dict, key: tuple, block_tasks) -> dict:
    """The "all" row of a method, or (summary built elsewhere) means of its task rows."""
    m, b = key
    allr = cell.get((ALL_TASKS, m, b))
    if allr is not None:
        return allr
    rs = [cell[(t, m, b)] for t in block_tasks if (t, m, b) in cell]
    return {k: _mean(r.get(k) for r in rs) for k in ("accuracy", "partial", "ttft_s", "tpot_s", "kv_bytes")}


def _cost_cells(allr: dict) -> str:
    tpot, kv = as_number(allr.get("tpot_s")), as_number(allr.get("kv_bytes"))
    return (f" {_fmt(allr.get('ttft_s'), '.3f'):>7}"
            + f" {_fmt(None if tpot is None else tpot * 1e3, '.1f'):>7}"
            + f" {_fmt(None if kv is None else kv / 2**20, '.1f'):>7}"
            + f" {_fmt(allr.get('prefill_vs_full'), '.2f'):>6}"
            + f"  {_clip(format_layers(allr.get('selection_layers')), LAYERS_W)}")


def _chunks(widths: list[int], lw: int, tail_w: int, limit: int) -> list[list[int]]:
    """Column indexes per sub-table so each line fits in limit; the tail follows the last column."""
    chunks, cur, used = [], [], lw
    for i, w in enumerate(widths):
        need = 1 + w + (tail_w if i == len(widths) - 1 else 0)
        if cur and used + need > limit:
            chunks.append(cur)
            cur, used = [], lw
        cur.append(i)
        used += need
    return chunks + [cur]


def _grid(labels: dict, heads: list[str], cells: dict, tail_head: str = "", tails: dict | None = None) -> list[str]:
    """Label column, then right-aligned columns, then the tail (costs); wrapped into several
    sub-tables of the same rows when wider than TABLE_W, so a long task list stays readable."""
    lw = max([6] + [len(s) for s in labels.values()])
    widths = [max([len(h)] + [len(cells[k][i]) for k in labels]) for i, h in enumerate(heads)]
    tail_w = max([len(tail_head)] + [len(t) for t in (tails or {}).values()])
    chunks = _chunks(widths, lw, tail_w, TABLE_W)
    out: list[str] = []
    for n, idx in enumerate(chunks):
        last = n == len(chunks) - 1
        header = f"{'method':<{lw}} " + " ".join(f"{heads[i]:>{widths[i]}}" for i in idx) + (tail_head if last else "")
        out += ([""] if n else []) + [header.rstrip(), "-" * len(header)]
        for k, lab in labels.items():
            line = f"{lab:<{lw}} " + " ".join(f"{cells[k][i]:>{widths[i]}}" for i in idx)
            out.append((line + (tails[k] if last and tails else "")).rstrip())
    return out


COST_HEAD = f" {'TTFT s':>7} {'TPOT ms':>7} {'KV MiB':>7} {'vsFull':>6}  ASL layers"


def _block(length, block: list[dict], tasks, abbr: dict, pvalues: dict, cut: dict,
           reference: str | None = None) -> list[str]:
    """One length's accuracy table (with intervals, markers and costs) and its partial block;
    the labels it had to cut are added to `cut`."""
    keys = first_appearance((r["method"], r["budget"]) for r in block)
    budgets = {b for _, b in keys if b is not None}
    show_budget = len(budgets) > 1 or any(c > 1 for c in Counter(m for m, _ in keys).values())
    labels, block_cut = _block_labels(keys, show_budget)
    cut.update(block_cut)
    cols = [t for t in tasks if any(r["task"] == t for r in block)] + [ALL_TASKS]
    cell = {(r["task"], r["method"], r["budget"]): r for r in block}
    families = {(r["method"], r["budget"]): r.get("family") for r in block if r.get("family")}
    rows = {k: {t: (_all_row(cell, k, cols[:-1]) if t == ALL_TASKS else cell.get((t, *k))) for t in cols}
            for k in keys}

    texts: dict[tuple, list[str]] = {}
    for k in keys:
        ref = chosen_reference(k, keys, reference) if reference else reference_method(k, keys, families)
        marks = ["*" if ref and pvalues.get((t, length, k, ref), 1.0) < SIGNIFICANT_P else " " for t in cols]
        texts[k] = [_acc_text(rows[k][t]) + mark for t, mark in zip(cols, marks)]
    heads = [abbr.get(t, t) for t in cols]
    grid = _grid(labels, [h + " " for h in heads], texts, COST_HEAD,
                 {k: _cost_cells(rows[k][ALL_TASKS]) for k in keys})
    title = f"length {length}" + _title_note(block, budgets if not show_budget else set())
    out = ["", f"== {title} " + "=" * max(3, min(len(grid[0]), 100) - len(title) - 4)] + grid
    return out + _partial_block(labels, cols, heads, rows)


def _title_note(block: list[dict], budgets: set) -> str:
    """The block's single budget and its per-task sample count, " (budget 128, n=20 per task)"."""
    notes = [f"budget {next(iter(budgets))}"] if len(budgets) == 1 else []
    ns = {r.get("n") for r in block if r["task"] != ALL_TASKS}
    if len(ns) == 1:
        notes.append(f"n={next(iter(ns))} per task")
    return f" ({', '.join(notes)})" if notes else ""


def _partial_block(labels: dict, cols, heads, rows) -> list[str]:
    """Per-task mean partial score (%), same rows and columns; nothing when no row has one."""
    vals = {k: [as_number(rows[k][t] and rows[k][t].get("partial")) for t in cols] for k in labels}
    if all(v is None for vs in vals.values() for v in vs):
        return []
    cells = {k: [_fmt(v, ".0f") for v in vs] for k, vs in vals.items()}
    return ["", "partial (%)"] + _grid(labels, [f"{h:>4}" for h in heads], cells)


LEGEND = "[lo,hi]: 95% interval (Wilson on fully-correct counts; bootstrap of the mean if scores are fractional)"
LEGEND_MARK = "*: p<0.05 vs the ASL method of its regime (exact McNemar on the n paired samples, fully correct or not)"


def format_table(summary: list[dict], comparisons: list[dict] | None = None, reference: str | None = None) -> str:
    """A fixed-width table: one block per length; rows = method (and budget when a block has
    several); columns = each task's accuracy (%) with its 95% interval ("40 [22,61]"), "all",
    median TTFT (s), TPOT (ms), KV MiB, TTFT relative to the full cache, and the selection layers
    (ASL-like methods); then a "partial (%)" block of mean partial scores when records had them.

    With ``comparisons`` (asl.bench.stats.compare), a cell is marked "*" when the exact McNemar
    test between its method and the ASL method of its regime (reference_method) gives p < 0.05
    on that task, so a difference the samples cannot support is not read as one. With
    `reference` (a method label, --reference) every row is tested against that method instead."""
    if not summary:
        return "(no results)"
    tasks = [t for t in first_appearance(r["task"] for r in summary) if t != ALL_TASKS]
    abbr = abbreviate_tasks(tasks)
    lengths = sorted(first_appearance(r["length"] for r in summary),
                     key=lambda x: (0, x) if as_number(x) is not None else (1, 0))
    lines: list[str] = []
    abbreviated = {t: a for t, a in abbr.items() if a != str(t)}
    if abbreviated:
        lines.append("tasks: " + ", ".join(f"{a}={t}" for t, a in abbreviated.items()))
    pvalues, cut = _pvalues(comparisons), {}
    for length in lengths:
        lines += _block(length, [r for r in summary if r["length"] == length], tasks, abbr, pvalues, cut, reference)
    lines += vs_oracle.format_lines(summary)
    mark = LEGEND_MARK if reference is None else LEGEND_MARK.replace("the ASL method of its regime", reference)
    lines += ["", LEGEND] + ([mark] if comparisons is not None else [])
    lines += [f"{short} = {full}" for short, full in cut.items()]
    return "\n".join(lines).lstrip("\n")
