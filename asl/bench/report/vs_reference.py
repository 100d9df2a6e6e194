"""Each method against its reference, per task and length: the ASL method of its regime (or the
method given as --reference), the exact McNemar p on the paired samples, and that p adjusted by
Holm over every method tested against a reference in the same column (task and length). With
dozens of methods, uncorrected p < 0.05 calls a few differences wins by chance; the adjusted p
does not (stats.holm). Beside each test, what the method costs against its reference (KV bytes
and TTFT as ratios): a method that wins with four times the KV, or five times the prefill, is
not at the reference's budget, and the row says so. The table's markers, and vs_reference.csv /
.json / .md, come from here."""
from __future__ import annotations

from pathlib import Path

from asl.atomic import write_atomic

from . import rows as tabulate
from .stats import ALL_TASKS, holm
from .summary import (ASL_FAMILY, SIGNIFICANT_P, as_number, first_appearance, method_at, method_family, shows_budget,
                      write_rows)

FIELDS = ["task", "length", "method", "budget", "reference", "reference_budget", "n", "method_only",
          "reference_only", "mcnemar_p", "holm_p", "tests", "kv_ratio", "ttft_ratio"]


def reference_method(key: tuple, keys, families: dict) -> tuple | None:
    """The ASL method a row is tested against, in its regime (docs/algorithms.md section 10) and
    at its budget: a selection alone against "asl"; a method at the budget (an eviction, alone
    or after a selection) against ASL with the same eviction ("asl+<eviction>"), else against
    "asl+snapkv" (ASL at a budget as the paper composes it), and an eviction alone, lacking
    both, against "asl". Among several settings of it (a tau sweep) the one labelled exactly so,
    else none. A budget-free row (the full cache) uses the ASL method of the only budget present,
    if there is one. None for the reference itself."""
    method, budget = key
    fam = families.get(key) or method_family(method)
    for target in _targets(fam):
        cands = [k for k in keys if (families.get(k) or method_family(k[0])) == target]
        same = [k for k in cands if k[1] == budget]
        if not same and budget is None and len({k[1] for k in cands}) == 1:
            same = cands
        if len(same) > 1:
            same = [k for k in same if k[0] == target]
        if len(same) == 1:
            return None if same[0] == key else same[0]
    return None


def _targets(family: str) -> list[str]:
    """The ASL families a method's family is compared with, in order of preference."""
    at_budget = f"{ASL_FAMILY}+snapkv"
    if "+" in family:
        return list(dict.fromkeys([f"{ASL_FAMILY}+{family.rsplit('+', 1)[1]}", at_budget]))
    if _is_eviction(method_family(family)):
        return list(dict.fromkeys([f"{ASL_FAMILY}+{family}", at_budget, ASL_FAMILY]))
    return [ASL_FAMILY]


def _is_eviction(name: str) -> bool:
    """A built-in eviction or allocator (a custom class is not imported here: it is read as a selection)."""
    from asl.bench.methods import EVICTIONS, WRAPPERS

    return name in EVICTIONS or name in WRAPPERS


def chosen_reference(key: tuple, keys, label: str) -> tuple | None:
    """The row of method `label` a row is tested against (--reference): the same budget, else
    its only budget (the full cache has none). None for the reference itself."""
    cands = [k for k in keys if k[0] == label]
    same = [k for k in cands if k[1] == key[1]] or (cands if len(cands) == 1 else [])
    ref = same[0] if len(same) == 1 else None
    return None if ref == key else ref


def _paired(comparisons) -> dict[tuple, tuple]:
    """(task, length, key, other key) -> (n, key only right, other only right, McNemar p), both orders."""
    out: dict[tuple, tuple] = {}
    for c in comparisons or ():
        p = as_number(c.get("mcnemar_p"))
        if p is None:
            continue
        a, b = (c.get("method_a"), c.get("budget_a")), (c.get("method_b"), c.get("budget_b"))
        task, length, n = c.get("task"), c.get("length"), c.get("n")
        out[(task, length, a, b)] = (n, c.get("a_only"), c.get("b_only"), p)
        out[(task, length, b, a)] = (n, c.get("b_only"), c.get("a_only"), p)
    return out


def reference_tests(summary: list[dict], comparisons: list[dict] | None, reference: str | None = None) -> list[dict]:
    """One row (FIELDS) per method, task column ("all" included) and length that has a reference
    and a paired comparison with it; `holm_p` is adjusted over the `tests` rows of its column."""
    paired = _paired(comparisons)
    rows: list[dict] = []
    for length in first_appearance(r["length"] for r in summary):
        block = [r for r in summary if r["length"] == length]
        keys = first_appearance((r["method"], r["budget"]) for r in block)
        families = {(r["method"], r["budget"]): r.get("family") for r in block if r.get("family")}
        refs = {k: chosen_reference(k, keys, reference) if reference else reference_method(k, keys, families)
                for k in keys}
        columns = [t for t in first_appearance(r["task"] for r in block) if t != ALL_TASKS] + [ALL_TASKS]
        rows_at = {(r["task"], r["method"], r["budget"]): r for r in block}
        for task in columns:
            tested = [(k, refs[k], paired[(task, length, k, refs[k])]) for k in keys
                      if refs[k] and (task, length, k, refs[k]) in paired]
            adjusted = holm([p for *_, (_, _, _, p) in tested])
            for (key, ref, (n, mine, theirs, p)), p_holm in zip(tested, adjusted):
                rows.append({"task": task, "length": length, "method": key[0], "budget": key[1], "reference": ref[0],
                             "reference_budget": ref[1], "n": n, "method_only": mine, "reference_only": theirs,
                             "mcnemar_p": p, "holm_p": p_holm, "tests": len(tested),
                             **costs(rows_at.get((task, *key)), rows_at.get((task, *ref)))})
    return rows


def costs(mine: dict | None, ref: dict | None) -> dict:
    """kv_ratio: the method's mean KV bytes over its reference's; ttft_ratio: its median TTFT over
    the reference's (summary rows of the same task column: in "all", means of the per-task values).
    None where either lacks the figure."""
    def ratio(field):
        a, b = (as_number((row or {}).get(field)) for row in (mine, ref))
        return a / b if a is not None and b else None

    return {"kv_ratio": ratio("kv_bytes"), "ttft_ratio": ratio("ttft_s")}


def marks(tests: list[dict]) -> dict[tuple, str]:
    """(task, length, method, budget) -> "*" where the Holm-adjusted p < 0.05, "+" where only the
    uncorrected p is (a difference to confirm, not to call a win)."""
    out = {}
    for r in tests:
        mark = "*" if r["holm_p"] < SIGNIFICANT_P else "+" if r["mcnemar_p"] < SIGNIFICANT_P else " "
        out[(r["task"], r["length"], r["method"], r["budget"])] = mark
    return out


def write_vs_reference(rows: list[dict], out_dir, summary: list[dict] | None = None, caveat: str | None = None) -> None:
    """The tests (reference_tests) to out_dir/vs_reference.csv and .json, and with the summary
    rows their Markdown table (markdown_table) to vs_reference.md, each atomically (no rows: no
    table); `caveat` (an unfinished run's) heads the Markdown, which a results page pastes."""
    write_rows(rows, FIELDS, out_dir, "vs_reference")
    md = Path(out_dir) / "vs_reference.md"
    if summary is not None and rows:
        head = f"> **{caveat}**\n\n" if caveat else ""
        write_atomic(md, head + markdown_table(rows, summary))
    elif summary is not None:
        md.unlink(missing_ok=True)  # an earlier report's table must not stand beside this report's empty csv


MD_HEADERS = ["method", "against", "n", "accuracy % [95%]", "partial %", "KV x ref", "TTFT x ref",
              "it right, ref wrong / reverse", "McNemar p", "Holm p"]


def row_names(tests: list[dict]) -> list[tuple[str, str]]:
    """(method, reference) as each test's row names them: "fastkv@512" and "asl@512" where the
    budget tells rows apart (a budget sweep), else "fastkv" and "asl"."""
    keys = [((t["method"], t["budget"]), (t["reference"], t["reference_budget"])) for t in tests]
    show = shows_budget(key for pair in keys for key in pair)
    return [(method_at(*mine, show), method_at(*ref, show)) for mine, ref in keys]


def markdown_table(tests: list[dict], summary: list[dict]) -> str:
    """Per length, one row per method over all tasks pooled: its accuracy with the 95% interval,
    partial score, cost against its reference (KV bytes and TTFT, x the reference's) and the
    paired test, the references' own rows first ("fastkv@512" where the budget tells rows apart).
    What a results page pastes: every figure in it comes from summary.csv and vs_reference.csv."""
    cells = {(r["length"], r["method"], r["budget"]): r for r in summary if r["task"] == ALL_TASKS}
    parts = []
    for length in first_appearance(t["length"] for t in tests if t["task"] == ALL_TASKS):
        pooled = [t for t in tests if t["task"] == ALL_TASKS and t["length"] == length]
        names = row_names(pooled)
        refs = {(t["reference"], t["reference_budget"]): ref for t, (_, ref) in zip(pooled, names)}
        body = [[f"**{name}**", "(reference)", *_cell(cells.get((length, *key))), "1.00", "1.00", "", "", ""]
                for key, name in refs.items()]
        for t, pair in zip(pooled, names):
            _, acc, part = _cell(cells.get((length, t["method"], t["budget"])))
            body.append([*pair, str(t["n"]), acc, part, _ratio(t.get("kv_ratio")),
                         _ratio(t.get("ttft_ratio")), f"{t['method_only']} / {t['reference_only']}",
                         _p(t["mcnemar_p"]), _p(t["holm_p"]) + (" *" if t["holm_p"] < SIGNIFICANT_P else "")])
        parts.append(f"**length {length}** ({len(pooled)} methods against their reference; `*`: Holm-adjusted "
                     f"p < {SIGNIFICANT_P})\n\n" + tabulate.markdown(MD_HEADERS, body))
    return "\n\n".join(parts) + "\n"


def _cell(row: dict | None) -> list[str]:
    """n, "accuracy [lo, hi]" and partial of a summary row, "-" where absent."""
    if row is None:
        return ["-", "-", "-"]
    acc = f"{row['accuracy']:.1f}"
    if row.get("accuracy_lo") is not None:
        acc += f" [{row['accuracy_lo']:.0f}, {row['accuracy_hi']:.0f}]"
    part = "-" if row.get("partial") is None else f"{row['partial']:.1f}"
    return [str(row["n"]), acc, part]


def _ratio(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def _p(p: float) -> str:
    return f"{p:.2g}" if p >= 0.001 else f"{p:.0e}".replace("e-0", "e-")  # 0.012, 4e-5
