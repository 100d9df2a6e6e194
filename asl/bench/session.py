"""One benchmark invocation: resume check, model, warm-up, the runs (sharded), then the
summary table, files and plots on rank 0."""
from __future__ import annotations

import pathlib
import sys

import torch

from asl.bench import dist, store
from asl.bench.runner import plan, run, set_threads, warm_up


class Session:
    def __init__(self, args, folder, config, params):
        self.args, self.folder, self.config, self.params = args, folder, config, params
        self.out = pathlib.Path(args.out)

    def _check_resume(self, config: dict) -> None:
        old = store.load_config(self.out)
        if old is None:
            return
        if old["run"] != config["run"]:
            raise ValueError(f"--out {self.out} holds a run with {old['run']}, not {config['run']}; "
                             "give another --out (or delete it) to start afresh")
        changed = [m for m, p in config["methods"].items() if m in old["methods"] and old["methods"][m] != p]
        if changed:
            raise ValueError(f"--out {self.out}: method(s) {', '.join(changed)} ran there with other parameters "
                             f"({ {m: old['methods'][m] for m in changed} }); give another --out")
        config["methods"] = {**old["methods"], **config["methods"]}

    def run(self) -> int:
        from asl.bench.cli import run_config

        args = self.args
        ranks = dist.init(args.device)
        try:
            config = run_config(args, self.params, self.config)
            if ranks.main:
                try:
                    self._check_resume(config)
                except ValueError as e:
                    print(f"python -m asl.bench: error: {e}", file=sys.stderr)
                    return self._abort(ranks)
                self.out.mkdir(parents=True, exist_ok=True)
                store.write_config(self.out, {**config, "world": ranks.world})
            dist.barrier(ranks)
            if not (self.out / store.CONFIG).exists():
                return 2  # rank 0 refused the folder
            return self._run(ranks, config)
        finally:
            dist.finish(ranks)

    def _abort(self, ranks) -> int:
        dist.barrier(ranks)
        return 2

    def _run(self, ranks, config) -> int:
        import asl

        args = self.args
        if args.report_only:
            if ranks.main:
                self._report_existing()
            return 0
        threads = set_threads(args.threads, ranks.local_world)
        device = dist.device_for(ranks, args.device)
        model, tokenizer = asl.load(self.folder, dtype=getattr(torch, args.dtype), device=device)
        jobs = plan(args.tasks, args.lengths, args.samples, args.methods, args.budget, args.select_tokens)
        order = {j.key: i for i, j in enumerate(jobs)}
        done = set(store.load_done(self.out))
        mine = [j for j in jobs if ranks.mine(j.group)]
        if ranks.main:
            self._print_header(threads, ranks, len(jobs), len(done & set(order)))
        shard = self.out / (store.SAMPLES if ranks.world == 1 else f"samples.rank{ranks.rank}.jsonl")
        appender = store.Appender(shard)
        records, interrupted = [], False
        try:
            if any(j.key not in done for j in mine):
                warm_up(model, tokenizer, args.methods, self.params, args.budget, args.select_tokens,
                        min(min(args.lengths), max(512, 2 * max(args.budget) + 64)))
            records = run(model, tokenizer, mine, self.params, args.seed, done, appender.write,
                          rank_label="" if ranks.world == 1 else f"[{ranks.rank}]", show=True, compile=args.compile)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            appender.close()
        if interrupted:
            print(f"\ninterrupted: the finished runs are in {self.out}; rerun the same command to resume",
                  file=sys.stderr)
            return 130
        gathered = dist.gather(ranks, records)
        if ranks.main:
            everything = store.consolidate(self.out, order, gathered)
            self._report([r for r in everything if store.record_key(r) in order])
        dist.barrier(ranks)
        return 0

    def _report_existing(self) -> None:
        args = self.args
        jobs = plan(args.tasks, args.lengths, args.samples, args.methods, args.budget, args.select_tokens)
        order = {j.key: i for i, j in enumerate(jobs)}
        done = store.load_done(self.out)  # read only: a run may still be appending there
        records = sorted((r for k, r in done.items() if k in order), key=lambda r: order[store.record_key(r)])
        print(f"{len(records)} of {len(jobs)} runs done in {self.out}")
        self._report(records)

    def _print_header(self, threads, ranks, total, done) -> None:
        a = self.args
        print(f"asl.bench: {a.model} ({self.config.num_layers} layers, {a.dtype}, {a.device}, {threads} threads"
              f" x {ranks.world} process{'es' if ranks.world > 1 else ''}); budgets {a.budget}, "
              f"select_tokens {a.select_tokens or '= budget'}; {total} runs, {done} already done")
        for label, p in self.params.items():
            shown = ", ".join(f"{k}={v}" for k, v in p.items() if k not in ("budget", "select_tokens"))
            print(f"  {label:<12} {shown or '-'}")
        sys.stdout.flush()

    def _report(self, records: list[dict]) -> None:
        from asl.bench.report import format_table, summarize, write_summary

        summary = summarize(records)
        write_summary(summary, self.out)
        print()
        print(format_table(summary))
        if not self.args.no_plots:
            from asl.bench.plots import make_plots

            paths = make_plots(records, summary, self.out, self.params)
            print(f"\nplots: {', '.join(p.name for p in paths)}")
        print(f"results: {self.out}/ (samples.jsonl, summary.csv, summary.json, config.json)")
