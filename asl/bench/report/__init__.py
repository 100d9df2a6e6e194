"""What a run's records say: the summary rows (summary), the paired tests (stats), the text
table (table), the plots (plots) and a selecting method against the oracle (vs_oracle)."""
from __future__ import annotations

import pathlib

from .coverage import policy_label, unfinished, write_coverage
from .stats import compare
from .summary import summarize, write_comparisons, write_summary
from .table import format_table
from .vs_reference import reference_tests, write_vs_reference


def method_params(settings: dict) -> dict[str, dict]:
    """label -> the fields of its policies, merged (what the plots annotate: tau, l_min)."""
    out = {}
    for key, policies in settings.get("policies", {}).items():
        label = policy_label(key)
        out.setdefault(label, {}).update({k: v for p in policies for k, v in p.get("fields", {}).items()})
    return out


def report(records: list[dict], out: pathlib.Path, params: dict, plots: bool, reference: str | None = None,
           coverage: dict | None = None) -> None:
    """The summary and comparison files, the table printed, the plots. `coverage`
    (asl.bench.report.coverage) goes to coverage.json; an unfinished run's heads the table,
    vs_reference.md and every plot."""
    summary = summarize(records)
    comparisons = compare(records)
    write_summary(summary, out)
    write_comparisons(comparisons, out)
    tests = reference_tests(summary, comparisons, reference)
    caveat = unfinished(coverage)
    if coverage:
        write_coverage(coverage, out)
    write_vs_reference(tests, out, summary, caveat)
    print()
    if caveat:
        print(f"** {caveat} **\n")
    print(format_table(summary, comparisons, reference))
    if plots:
        from .plots import make_plots

        from .forest import plot_vs_reference

        paths = make_plots(records, summary, out, params, caveat) + plot_vs_reference(records, tests, out, caveat)
        print(f"\nplots: {', '.join(p.name for p in paths)}")
    print(f"results: {out}/ (samples.jsonl, summary.csv, summary.json, comparisons.csv, vs_reference.csv, "
          f"vs_reference.md, {'coverage.json, ' if coverage else ''}config.json)")
