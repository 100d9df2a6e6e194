"""A selecting method's layer against the oracle's, sample by sample, where both ran on the
same samples at the same selection size: the share selected too early (before the layer the
sample needed, so the answer differs from the full cache's), later than needed, and the mean
number of layers lost, and how often the method's answer is the full cache's (what the
oracle and calibration take as the label; docs/calibration.md). Read-only over the records."""
from __future__ import annotations

import statistics

from .stats import ALL_TASKS

ORACLE = "oracle"
FIELDS = ["oracle_n", "oracle_too_early", "oracle_later", "oracle_layers_lost", "oracle_same_answer", "oracle_cost"]


def oracle_records(records) -> dict[tuple, dict]:
    """(sample id, select_tokens) -> the oracle's record (the first oracle method's, if several)."""
    out: dict[tuple, dict] = {}
    labels = [r["method"] for r in records if r.get("family") == ORACLE]
    first = labels[0] if labels else None
    for r in records:
        if r.get("method") == first and r.get("oracle_needed") is not None:
            out.setdefault((r["id"], r.get("select_tokens")), r)
    return out


def pairs(records) -> list[tuple[dict, int, int]]:
    """(record, its layer, the layer the sample needed) for every selecting method's record
    with an oracle record of the same sample and selection size; never selecting counts as
    the last layer (the full cache), as does a sample no candidate layer served."""
    oracles = oracle_records(records)
    out = []
    for r in records:
        o = oracles.get((r.get("id"), r.get("select_tokens")))
        if o is None or r.get("family") == ORACLE or not (r.get("ratios") or r.get("selection_layer") is not None):
            continue
        last = o["num_layers"] - 1
        layer = last if r.get("selection_layer") is None else int(r["selection_layer"])
        out.append((r, layer, int(o["oracle_needed"])))
    return out


def full_answers(records) -> dict[str, str]:
    """Sample id -> the full cache's prediction (the first full record of the sample)."""
    out: dict[str, str] = {}
    for r in records:
        if r.get("family") == "full":
            out.setdefault(r["id"], r.get("prediction"))
    return out


def figures(matched, full: dict[str, str] | None = None) -> dict:
    """The comparison's figures over (record, layer, needed) triples; shares in %. With the
    full cache's answers, the share of samples that have one where the method answers the same."""
    n = len(matched)
    same = [r.get("prediction") == full[r["id"]] for r, _, _ in matched if full and r.get("id") in full]
    return {"oracle_n": n,
            "oracle_too_early": 100.0 * sum(a < o for _, a, o in matched) / n,
            "oracle_later": 100.0 * sum(a > o for _, a, o in matched) / n,
            "oracle_layers_lost": sum(max(0, a - o) for _, a, o in matched) / n,
            "oracle_same_answer": 100.0 * sum(same) / len(same) if same else None}


def annotate(rows: list[dict], records) -> list[dict]:
    """Adds FIELDS to summary rows (None where there is nothing to compare): per method row
    the comparison with the oracle, per oracle row its median cost in prefills."""
    groups: dict[tuple, list] = {}
    for triple in pairs(records):
        r = triple[0]
        for task in (r.get("task"), ALL_TASKS):
            groups.setdefault((task, r.get("length"), r.get("method"), r.get("budget")), []).append(triple)
    full = full_answers(records)
    costs: dict[tuple, list] = {}
    for r in records:
        if r.get("family") == ORACLE and r.get("oracle_cost") is not None:
            for task in (r.get("task"), ALL_TASKS):
                costs.setdefault((task, r.get("length"), r.get("method"), r.get("budget")), []).append(r["oracle_cost"])
    for row in rows:
        key = (row.get("task"), row.get("length"), row.get("method"), row.get("budget"))
        row.update(dict.fromkeys(FIELDS))
        if key in groups:
            row.update(figures(groups[key], full))
        if costs.get(key):
            row["oracle_cost"] = statistics.median(costs[key])
    return rows


def format_lines(summary: list[dict]) -> list[str]:
    """The printed comparison: one line per method and length over all tasks."""
    rows = [r for r in summary if r.get("task") == ALL_TASKS and r.get("oracle_n")]
    costs = [r for r in summary if r.get("task") == ALL_TASKS and r.get("oracle_cost") is not None]
    if not rows and not costs:
        return []
    out = ["", "selection layer vs the oracle (all tasks; too early: before the layer the sample needed):"]
    for r in rows:
        budget = "" if r.get("budget") is None else f"@{r['budget']}"
        out.append(f"  length {r['length']} {r['method']}{budget}: too early {r['oracle_too_early']:.0f}%, later "
                   f"than needed {r['oracle_later']:.0f}%, {r['oracle_layers_lost']:.1f} layers lost on average"
                   + ("" if r.get("oracle_same_answer") is None else
                      f", the full cache's answer on {r['oracle_same_answer']:.0f}%")
                   + f" (n={r['oracle_n']})")
    for r in costs:
        out.append(f"  length {r['length']} oracle: its search cost {r['oracle_cost']:.1f} prefills (median); its TTFT "
                   "is that search, not a deployable time")
    return out
