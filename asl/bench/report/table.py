"""The summary as a readable text table: per length, methods by tasks, with 95% intervals, the
paired tests' marks and the costs."""
from __future__ import annotations

import re

from . import vs_oracle, vs_reference
from .stats import ALL_TASKS
from .summary import as_number, first_appearance, mean_of, method_at, shows_budget, sorted_layers
from .vs_reference import chosen_reference, reference_method, reference_tests  # noqa: F401 (re-exported)


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
    return " ".join(f"{k}:{v}" for k, v in sorted_layers(layers).items())


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
        full = lab = method_at(m, b, show_budget)
        tail = full[len(str(m)):]
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
    return {k: mean_of(r.get(k) for r in rs) for k in ("accuracy", "partial", "ttft_s", "tpot_s", "kv_bytes")}


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


def _block(length, block: list[dict], tasks, abbr: dict, marked: dict, cut: dict) -> list[str]:
    """One length's accuracy table (with intervals, markers and costs) and its partial block;
    the labels it had to cut are added to `cut`."""
    keys = first_appearance((r["method"], r["budget"]) for r in block)
    budgets = {b for _, b in keys if b is not None}
    show_budget = shows_budget(keys)
    labels, block_cut = _block_labels(keys, show_budget)
    cut.update(block_cut)
    cols = [t for t in tasks if any(r["task"] == t for r in block)] + [ALL_TASKS]
    cell = {(r["task"], r["method"], r["budget"]): r for r in block}
    rows = {k: {t: (_all_row(cell, k, cols[:-1]) if t == ALL_TASKS else cell.get((t, *k))) for t in cols}
            for k in keys}

    texts: dict[tuple, list[str]] = {}
    for k in keys:
        texts[k] = [_acc_text(rows[k][t]) + marked.get((t, length, *k), " ") for t in cols]
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


LEGEND = "[lo,hi]: 95% interval (Wilson's, at the mean score: on 0/1 scores, Wilson on the fully-correct count)"
LEGEND_MARK = ("*: p<0.05 vs the ASL method of its regime (exact McNemar on the n paired samples, fully correct or"
               " not), Holm-adjusted over the methods of the column\n+: p<0.05 before that adjustment only: a difference to"
               " confirm, not a win (vs_reference.csv has both p)")


def format_table(summary: list[dict], comparisons: list[dict] | None = None, reference: str | None = None) -> str:
    """A fixed-width table: one block per length; rows = method (and budget when a block has
    several); columns = each task's accuracy (%) with its 95% interval ("40 [22,61]"), "all",
    median TTFT (s), TPOT (ms), KV MiB, TTFT relative to the full cache, and the selection layers
    (ASL-like methods); then a "partial (%)" block of mean partial scores when records had them.

    With ``comparisons`` (asl.bench.report.stats.compare), a cell is marked "*" when the exact McNemar
    test between its method and the ASL method of its regime (reference_method) gives p < 0.05
    on that task after Holm's adjustment over the column's tests, "+" when only the unadjusted p
    does (vs_reference), so a difference the samples cannot support is not read as one. With
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
    marked, cut = vs_reference.marks(reference_tests(summary, comparisons, reference)), {}
    for length in lengths:
        lines += _block(length, [r for r in summary if r["length"] == length], tasks, abbr, marked, cut)
    lines += vs_oracle.format_lines(summary)
    mark = LEGEND_MARK if reference is None else LEGEND_MARK.replace("the ASL method of its regime", reference)
    lines += ["", LEGEND] + ([mark] if comparisons is not None else [])
    lines += [f"{short} = {full}" for short, full in cut.items()]
    return "\n".join(lines).lstrip("\n")
