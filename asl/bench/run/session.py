"""One benchmark invocation: resume check, model, warm-up, the runs (sharded), then the
summary table, files and plots on rank 0. And the read-only report of a run folder."""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import platform
import shutil
import sys
import time

import torch

from asl.bench.run import dist, store
from asl.bench.report import method_params, report
from asl.bench.report.coverage import coverage, policy_key
from asl.bench.run.fingerprint import differences
from asl.models.dtype import describe_cpu
from asl.bench.run.runner import plan, run, set_threads, sweeps, warm_up

# What a resume must match exactly in config.json: a run of other settings or code would mix.
IDENTITY = ("format", "run")
RESULTS = ("samples.jsonl", "summary.csv", "summary.json", "comparisons.csv", "comparisons.json", "vs_reference.csv",
           "vs_reference.json", "vs_reference.md", "coverage.json")


def check_resume(out: pathlib.Path, settings: dict, force: bool) -> dict:
    """The run's settings to record in `out` (its config.json): the new ones merged with what
    the folder holds.
    Raises ValueError naming what changed when the folder holds another run (unless `force`,
    which discards that run's results first, naming each file), and always when the folder
    holds files the bench writes but no config.json of the bench (a model folder, say):
    `force` only ever removes what the bench wrote."""
    settings = json.loads(json.dumps(settings))  # as config.json will hold them: a tuple field reads back as a list
    old = store.load_settings(out)
    if old is None:
        ours = bench_files(out)
        if ours:
            raise ValueError(f"--out {out} holds {', '.join(p.name for p in ours)} but no config.json of asl.bench: "
                             "give another --out (--force never touches a folder the bench did not write)")
        return settings
    if not store.is_bench_config(old):
        raise ValueError(f"--out {out}: its config.json was not written by asl.bench (a model's folder?); give "
                         "another --out (--force never touches a folder the bench did not write)")
    changed = _changes(old, settings)
    if changed and not force:
        shown = "\n  ".join(changed[:12]) + ("\n  ..." if len(changed) > 12 else "")
        raise ValueError(f"--out {out} holds results of another configuration or code:\n  {shown}\n"
                         "results must not mix: give another --out, or add --force to discard the old results")
    if changed:
        removed = discard(out)
        print(f"asl.bench: --force: removed {', '.join(removed) or 'nothing'} from {out}", file=sys.stderr)
        return settings
    merged = dict(settings)
    merged["policies"] = {**old.get("policies", {}), **settings["policies"]}
    for key in ("tasks", "lengths", "budgets", "methods"):
        merged[key] = list(dict.fromkeys([*old.get(key, []), *settings[key]]))
    merged["samples"] = max(old.get("samples", 0), settings["samples"])
    merged["started"] = old.get("started", settings["started"])
    return merged


def _changes(old: dict, new: dict) -> list[str]:
    if not isinstance(old, dict) or old.get("format") != new["format"]:
        return [f"format: {old.get('format') if isinstance(old, dict) else old!r} -> {new['format']!r} "
                "(written by another version of asl.bench)"]
    lines = differences({k: old.get(k) for k in IDENTITY}, {k: new[k] for k in IDENTITY})
    for method in sorted(set(old.get("policies", {})) & set(new["policies"])):
        if old["policies"][method] != new["policies"][method]:
            lines += [f"{method}: {d}" for d in _policy_changes(old["policies"][method], new["policies"][method])]
    return lines


def _policy_changes(old: list, new: list) -> list[str]:
    if len(old) != len(new) or any(a.get("class") != b.get("class") for a, b in zip(old, new)):
        return [f"policies {[a.get('class') for a in old]} -> {[b.get('class') for b in new]}"]
    return [d for a, b in zip(old, new) for d in differences(a, b, f"{b['class'].rsplit('.', 1)[-1]}.")]


def bench_files(out: pathlib.Path) -> list[pathlib.Path]:
    """What the bench writes in a run folder, besides config.json, that is there now."""
    return [p for p in [*(out / name for name in RESULTS), *store.shard_files(out), out / "plots"] if p.exists()]


def warn_damage(out: pathlib.Path, limit: int = 10) -> None:
    """Say, on stderr, which lines of the run's files a reader skips or overrides (store.damage)."""
    problems = store.damage(out)
    for line in problems[:limit]:
        print(f"asl.bench: warning: {out}: {line}", file=sys.stderr)
    if len(problems) > limit:
        print(f"asl.bench: warning: {out}: and {len(problems) - limit} more such lines", file=sys.stderr)


def discard(out: pathlib.Path) -> list[str]:
    """--force: remove the folder's results (records, summaries, plots), keep the folder;
    returns the names removed."""
    names = []
    for path in bench_files(out):
        names.append(path.name + ("/" if path.is_dir() else ""))
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return names


def report_folder(out: pathlib.Path, plots: bool = True, reference: str | None = None) -> int:
    """--report-only: the summaries and plots of every record in `out`, from its own
    config.json; reads the records, never writes them or the configuration."""
    settings = store.load_settings(out) if out.is_dir() else None
    if settings is None:
        print(f"python -m asl.bench: error: --out {out} holds no config.json: nothing to report", file=sys.stderr)
        return 2
    warn_damage(out)
    records = ordered(store.load_done(out).values(), settings)  # read only: a run may still be appending
    methods = list(dict.fromkeys(r.get("method") for r in records))
    if reference is not None and reference not in methods:
        print(f"python -m asl.bench: error: --reference {reference!r} is not a method of {out}: "
              f"{', '.join(map(str, methods))}", file=sys.stderr)
        return 2
    cov = coverage(records, settings)
    print(f"{len(records)} runs in {out} ({cov['done']:,} of the {cov['planned']:,} planned, {cov['samples_whole']:,} "
          f"of {cov['samples_planned']:,} samples whole)")
    report(records, out, method_params(settings), plots, reference, cov)
    return 0


def ordered(records, settings: dict) -> list[dict]:
    """Records in the run's order: sample index, length, task, method, budget."""
    def rank(values, v):
        return values.index(v) if v in values else len(values)

    tasks, lengths, methods = settings.get("tasks", []), settings.get("lengths", []), settings.get("methods", [])
    return sorted(records, key=lambda r: (r.get("index", 0), rank(lengths, r.get("length")), rank(tasks, r.get("task")),
                                          rank(methods, r.get("method")), str(r.get("method")),
                                          -1 if r.get("budget") is None else r["budget"]))


def _busy(when: str) -> float | None:
    """The 1-minute load average, with a warning when other work competes for the cores (the
    timings are then not this code's alone)."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return None
    cores = os.cpu_count() or 1
    if load > cores + 0.5:
        print(f"asl.bench: warning: load average {load:.1f} on {cores} cores {when}: other work competes for "
              "the CPU, so TTFT and TPOT are not this run's alone", file=sys.stderr)
    return round(load, 2)


class Session:
    def __init__(self, args, folder, model_config, methods):
        self.args, self.folder, self.model_config, self.methods = args, folder, model_config, methods
        self.out = pathlib.Path(args.out)

    def run(self) -> int:
        args = self.args
        ranks = dist.init(args.device)
        try:
            with contextlib.ExitStack() as held:
                threads = set_threads(args.threads, ranks.local_world)
                settings = None
                if ranks.main:
                    try:
                        self.out.mkdir(parents=True, exist_ok=True)
                        held.enter_context(store.FolderLock(self.out))  # held until the run ends
                        settings = self._prepare(threads, ranks)
                    except (ValueError, OSError) as e:
                        print(f"python -m asl.bench: error: {e}", file=sys.stderr)
                settings = dist.broadcast(ranks, settings)
                if settings is None:
                    return 2
                return self._run(ranks, settings, threads)
        finally:
            dist.finish(ranks)

    def _prepare(self, threads, ranks) -> dict:
        settings = check_resume(self.out, run_settings(self.args, self.methods, self.model_config, threads, ranks.world,
                                                       self.folder), self.args.force)
        settings["load_average_at_start"] = _busy("at the start")
        settings["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY")  # PASSIVE unless set: see asl/__init__.py
        store.write_settings(self.out, settings)
        return settings

    def _run(self, ranks, settings, threads) -> int:
        import asl

        args = self.args
        device = dist.device_for(ranks, args.device)
        model, tokenizer = asl.load(self.folder, dtype=getattr(torch, args.dtype), device=device)
        jobs = plan(args.tasks, args.lengths, args.samples, self.methods)
        order = {j.key: i for i, j in enumerate(jobs)}
        if ranks.main:
            warn_damage(self.out)
        done = set(store.load_done(self.out))
        mine = [j for j in jobs if ranks.mine(j.group)]
        if ranks.main:
            self._print_header(threads, ranks, len(jobs), len(done & set(order)))
        shard = self.out / (store.SAMPLES if ranks.world == 1 else f"samples.rank{ranks.rank}.jsonl")
        appender = store.Appender(shard)
        records, interrupted = [], False
        try:
            if any(j.key not in done for j in mine):
                warm_up(model, tokenizer, jobs, min(min(args.lengths), max(512, 2 * max(args.budget) + 64)),
                        share_prefix=sweeps(args.share_prefix, args.repeats, args.compile))
            records = run(model, tokenizer, mine, args.seed, done, appender.write,
                          rank_label="" if ranks.world == 1 else f"[{ranks.rank}]", show=True, compile=args.compile,
                          repeats=args.repeats, share_prefix=args.share_prefix)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            appender.close()
        if interrupted:
            print(f"\ninterrupted: the finished runs are in {self.out}; rerun the same command to resume",
                  file=sys.stderr)
            return 130
        if ranks.main:
            _busy("at the end")
            compiled = [r for r in records if r.get("compiles")]
            if compiled:
                print(f"asl.bench: {len(compiled)} of {len(records)} calls compiled a new decode graph (a new batch or "
                      f"cache size); their {sum(r['compile_s'] for r in compiled):.1f} s are in compile_s, not in TPOT")
        gathered = dist.gather(ranks, records)
        if ranks.main:
            everything = store.consolidate(self.out, order, gathered)
            report(ordered(everything, settings), self.out, method_params(settings), not args.no_plots,
                   args.reference, coverage(everything, settings))
        dist.barrier(ranks)
        return 0

    def _print_header(self, threads, ranks, total, done) -> None:
        a = self.args
        print(f"asl.bench: dtype {a.dtype} ({a.dtype_reason})")
        print(f"asl.bench: {a.model} ({self.model_config.num_layers} layers, {a.dtype}, {a.device}, {threads} threads"
              f" x {ranks.world} process{'es' if ranks.world > 1 else ''}); budgets {a.budget}, "
              f"select_tokens {a.select_tokens or '= budget'}; {total} runs, {done} already done")
        width = min(40, max(len(m.label) for m in self.methods))
        for m in {m.label: m for m in self.methods}.values():
            print(f"  {m.label:<{width}} {m.describe(skip=('budget', 'select_tokens'))}")
        sys.stdout.flush()


def run_settings(args, methods, model_config, threads: int, world: int, folder: pathlib.Path) -> dict:
    """What config.json records. `run` and `policies` identify the run (a resume must match
    them): by content where a path could hide a change (the model's files, the calibration
    file, a custom policy's sources); the rest describes it."""
    import hashlib

    import transformers

    from asl.bench.run.fingerprint import code_hash, git_commit, model_hash
    from asl.bench.methods import effective_fields

    policies = {policy_key(m.label, m.budget): effective_fields(m) for m in methods}
    return {
        "format": 2,
        "run": {"model": args.model, "dtype": args.dtype, "seed": args.seed, "device": args.device,
                "threads": threads, "processes": world, "compile": args.compile, "repeats": args.repeats,
                "share_prefix": args.share_prefix,
                "torch": torch.__version__,
                "transformers": transformers.__version__, "code": code_hash(), "model_files": model_hash(folder),
                "calibration": (hashlib.sha256(pathlib.Path(args.calibration).read_bytes()).hexdigest()[:16]
                                if args.calibration else None)},
        "policies": policies,
        "tasks": args.tasks, "lengths": args.lengths, "samples": args.samples, "budgets": args.budget,
        "select_tokens": args.select_tokens, "methods": [s.label for s in args.methods],
        "dtype_reason": args.dtype_reason,
        "layers": model_config.num_layers, "machine": platform.processor() or platform.machine(), "cpu": describe_cpu(),
        "commit": git_commit(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
