"""How much of its plan a run folder holds. A run stopped part-way still reports (--report-only
reads a folder while its run appends), and its figures then come from fewer samples than the
command asked for, some methods one sample ahead of others: the report says so, so that a preview
is not read as the result."""
from __future__ import annotations

import json
import pathlib
from collections import Counter

from asl.atomic import write_atomic
from asl.bench.tasks import sample_id


def policy_key(label: str, budget) -> str:
    """What config.json lists a method's policies under: "fastkv @ 1024" (its label and budget)."""
    return f"{label} @ {budget}"


def policy_label(key: str) -> str:
    """The label of a policy_key."""
    return key.rsplit(" @ ", 1)[0]


def coverage(records: list[dict], settings: dict) -> dict:
    """planned / done runs and samples of the plan in `settings` (config.json: its tasks, lengths,
    samples, and one run per sample for each entry of `policies`); records outside the plan do
    not count. A sample is whole when every method has run on it."""
    planned = set(settings.get("policies", {}))
    per_sample = len(planned)
    ids = [sample_id(task, length, index) for index in range(settings.get("samples", 0))
           for length in settings.get("lengths", []) for task in settings.get("tasks", [])]
    counts = Counter(r.get("id") for r in records if policy_key(r.get("method"), r.get("budget")) in planned)
    return {"planned": len(ids) * per_sample, "done": sum(min(counts[i], per_sample) for i in ids),
            "samples_planned": len(ids), "samples_whole": sum(counts[i] >= per_sample for i in ids)}


def unfinished(cov: dict | None) -> str | None:
    """One line for an unfinished run (None when the plan is done or unknown)."""
    if not cov or cov["done"] >= cov["planned"]:
        return None
    return (f"unfinished run: {cov['done']:,} of the {cov['planned']:,} planned runs, {cov['samples_whole']:,} of "
            f"{cov['samples_planned']:,} samples whole; every figure here is a preview, not the run's result")


def write_coverage(cov: dict, out_dir) -> None:
    """out_dir/coverage.json: the counts and `finished`, for a reader of summary.json or
    vs_reference.csv, which carry no caveat line, to check before quoting them."""
    text = json.dumps(dict(cov, finished=unfinished(cov) is None), indent=1) + "\n"
    write_atomic(pathlib.Path(out_dir) / "coverage.json", text)
