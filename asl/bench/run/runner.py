"""Run every (sample, method, budget) of a benchmark: generate, score, time, record."""
from __future__ import annotations

import os
import statistics
import sys
import warnings
from dataclasses import dataclass

import torch
from tqdm import tqdm

import asl
from asl.bench.run.oracle import measure as measure_oracle
from asl.bench.tasks import scoring
from asl.bench.run.memory import PeakMemory
from asl.bench.methods import Method
from asl.bench.tasks import Sample, make_sample, sample_id


@dataclass(frozen=True)
class Job:
    """One generate call: a sample (by its coordinates) and a resolved method."""

    task: str
    length: int
    index: int
    group: int  # which sample this is in the run's order (what ranks shard on)
    method: Method

    @property
    def key(self) -> tuple:
        return (sample_id(self.task, self.length, self.index), self.method.label, self.method.budget)


def plan(tasks, lengths, samples, methods: list[Method]) -> list[Job]:
    """Sample index outermost, so a partial run covers every cell evenly."""
    jobs, group = [], 0
    for index in range(samples):
        for length in lengths:
            for task in tasks:
                jobs += [Job(task, length, index, group, m) for m in methods]
                group += 1
    return jobs


def run_job(model, tokenizer, sample: Sample, job: Job, compile: bool = False, repeats: int = 1) -> dict:
    """One generate call, scored, with fresh copies of the job's policies.
    With `repeats` > 1 the call runs again (fresh policies) for timing: TTFT and TPOT are the
    medians, every run's figures are kept."""
    device = model.lm_head.weight.device
    if job.method.spec.is_oracle:  # one search, whatever `repeats`: its cost is recorded, not a TTFT to time
        oracle, _ = job.method.fresh()
        with PeakMemory(device) as mem:
            fields = measure_oracle(model, tokenizer, sample, oracle)
        return _record(sample, job, fields.pop("prediction"), {**fields, "peak_mem_bytes": mem.bytes})
    outs, peaks = [], []
    for _ in range(repeats):
        selection, eviction = job.method.fresh()
        with PeakMemory(device) as mem:
            outs.append(asl.generate(model, tokenizer, sample.prompt, max_new_tokens=answer_limit(sample, selection),
                                     stop=list(sample.stop) or None, selection=selection, eviction=eviction,
                                     compile=compile))
        peaks.append(mem.bytes)
    fields = _measured(outs[0], model.config.num_layers, statistics.median(o.trace.prefill_s for o in outs),
                       statistics.median(o.trace.decode_s_per_token for o in outs), peaks[0])
    if repeats > 1:
        fields.update(ttft_runs=[o.trace.prefill_s for o in outs], tpot_runs=[o.trace.decode_s_per_token for o in outs])
    return _record(sample, job, outs[0].text, fields)


def _measured(out, layers: int, ttft_s: float, tpot_s: float, peak: int | None) -> dict:
    seq = out.trace.sequences[0]
    return {
        "ttft_s": ttft_s, "tpot_s": tpot_s if seq.new_tokens > 1 else None,
        "new_tokens": seq.new_tokens, "kv_tokens": seq.kv_tokens, "kv_bytes": seq.kv_bytes,
        "peak_mem_bytes": peak, "selection_layer": seq.selection_layer,
        "ratios": [seq.ratios.get(layer) for layer in range(layers)] if seq.ratios else [],
        "alive_tokens": seq.alive_tokens, "peak_kv_tokens": seq.peak_kv_tokens,
        "revived_token_layers": seq.revived_token_layers, "attended_share": seq.attended_share,
        "policy_s": out.trace.policy_s,
        "compile_s": out.trace.compile_s, "compiles": out.trace.compiles,
    }


def shares_prefix(job: Job, sample: Sample) -> bool:
    """Whether the job can run in a sweep that shares its prefix: a one-shot selection, an
    eviction on the full prefill, or both, answering the task's whole length (not the oracle,
    not a second pass)."""
    selection = job.method.selection
    return (not job.method.spec.is_oracle and not (selection is not None and selection.restarts)
            and answer_limit(sample, selection) == sample.max_new_tokens)


def run_sweep(model, tokenizer, sample: Sample, jobs: list[Job]) -> list[dict]:
    """Jobs of one sample that share their prefix (`shares_prefix`), as one asl.sweep: the
    layers before each selection (all of them, for an eviction alone) run once. Each answer is
    the one its job alone gives (a test); its `ttft_s` is the time it would take alone
    (SweepOutput.alone_prefill_s: the trunk's layers to its selection plus its own part),
    `ttft_shared` says so, and its peak memory is not known alone (None: the sweep holds
    every layer's states)."""
    selections, evictions = zip(*(job.method.fresh() for job in jobs))
    out = asl.sweep(model, tokenizer, sample.prompt, list(selections), eviction=list(evictions),
                    max_new_tokens=sample.max_new_tokens, stop=list(sample.stop) or None)
    layers = model.config.num_layers
    return [_record(sample, job, o.text, {**_measured(o, layers, out.alone_prefill_s(i), o.trace.decode_s_per_token,
                                                      None), "ttft_shared": True})
            for i, (job, o) in enumerate(zip(jobs, out.outputs))]


def answer_limit(sample: Sample, selection) -> int:
    """The task's answer length, or a method's own cap where it has one (GemFilter's
    `answer_tokens`: the ASL authors' harness stops GemFilter at 51 tokens)."""
    cap = getattr(selection, "answer_tokens", None)
    return sample.max_new_tokens if cap is None else min(cap, sample.max_new_tokens)


def _record(sample: Sample, job: Job, text: str, measured: dict) -> dict:
    """A samples.jsonl line: the sample and method, the answer scored, then what was measured."""
    return {
        "id": sample.id, "task": sample.task, "length": sample.length, "index": sample.index, "depth": sample.depth,
        "method": job.method.label, "family": job.method.spec.family, "budget": job.method.budget,
        "select_tokens": job.method.select_tokens,
        "prompt_tokens": sample.prompt_tokens, "answers": list(sample.answers), "prediction": text,
        "score": scoring.score(sample.metric, text, sample.answers),
        "partial": scoring.partial(text, sample.answers), **measured,
    }


def warm_up(model, tokenizer, jobs: list[Job], length: int, share_prefix: bool = False) -> None:
    """One short run per method first (at its first budget), so one-time costs (kernels,
    lazy imports) stay out of the timings. `share_prefix`: the methods the run will sweep
    warm up as one sweep too (the same code paths, one full pass instead of one each). Its
    warnings are silenced: they would speak of a throw-away prompt (an ASL that never selected
    on it, say) as if of the run."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _warm_up(model, tokenizer, jobs, length, share_prefix)


def _warm_up(model, tokenizer, jobs: list[Job], length: int, share_prefix: bool) -> None:
    sample = make_sample("passkey", tokenizer, length, 0, seed=-1)
    first = {}
    for job in jobs:
        first.setdefault(job.method.label, Job("passkey", sample.length, 0, 0, job.method))
    shared = [job for job in first.values() if share_prefix and shares_prefix(job, sample)]
    if len(shared) > 1:
        run_sweep(model, tokenizer, sample, shared)
    swept = {id(job) for job in shared if len(shared) > 1}
    for job in first.values():
        if id(job) not in swept:
            run_job(model, tokenizer, sample, job)


def sweeps(share_prefix: bool, repeats: int, compile: bool) -> bool:
    """Whether --share-prefix takes effect: a sweep times each method once and runs eagerly."""
    return share_prefix and repeats == 1 and not compile


def run(model, tokenizer, jobs: list[Job], seed: int, done: set, write, rank_label: str = "",
        show: bool = True, compile: bool = False, repeats: int = 1, share_prefix: bool = False) -> list[dict]:
    """Runs the jobs not in `done`, calling `write(record)` after each; returns the new records.
    `share_prefix`: a sample's jobs that can (`shares_prefix`) run as one sweep (`run_sweep`)."""
    todo = [j for j in jobs if j.key not in done]
    records, sample, running = [], None, {}
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=f"bench{rank_label}", unit="run",
               file=sys.stdout, disable=not show, dynamic_ncols=True,
               mininterval=0.5 if sys.stdout.isatty() else 60)
    same = lambda a, b: (a.task, a.length, a.index) == (b.task, b.length, b.index)  # noqa: E731
    sweeping = sweeps(share_prefix, repeats, compile)
    try:
        i = 0
        while i < len(todo):
            job = todo[i]
            if sample is None or (sample.task, sample.length, sample.index) != (job.task, job.length, job.index):
                sample = make_sample(job.task, tokenizer, job.length, job.index, seed)
            group = [job]
            if sweeping and shares_prefix(job, sample):
                while i + len(group) < len(todo) and same(todo[i + len(group)], job) and \
                        shares_prefix(todo[i + len(group)], sample):
                    group.append(todo[i + len(group)])
            i += len(group)
            done_now = run_sweep(model, tokenizer, sample, group) if len(group) > 1 else \
                [run_job(model, tokenizer, sample, job, compile, repeats)]
            for job, record in zip(group, done_now):
                write(record)
                records.append(record)
                s = running.setdefault(job.method.label, [0.0, 0])
                s[0] += record["score"]
                s[1] += 1
                bar.update()
            bar.set_postfix_str(" ".join(f"{k}={100 * v[0] / v[1]:.0f}%" for k, v in running.items())[:90])
    finally:
        bar.close()
    return records


def set_threads(threads: int | None, local_world: int) -> int:
    n = threads or max(1, (os.cpu_count() or 1) // local_world)
    torch.set_num_threads(n)
    return n
