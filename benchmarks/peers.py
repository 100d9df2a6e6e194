"""Ours vs transformers vs kvpress on the same asl.bench samples: accuracy, TTFT, TPOT, peak
memory and KV bytes, each also as a ratio to transformers' own generate with the full cache.

    make peers                         # both bundled models, 2,048 / 4,096 / 8,192 tokens
    python benchmarks/peers.py --models smollm2-135m --lengths 1024 --samples 1 --repeats 1

Each library runs in a process that holds only its own model: ours here, transformers'
generate in benchmarks/peers_transformers.py, and kvpress in its own virtual environment
(benchmarks/peers_env.sh makes .venv-kvpress; it pins transformers below 5.3 and patches
attention functions when imported, so it is never imported here) through
benchmarks/peers_kvpress.py, all on the same prompts and weights.
Timings: every (sample, method) runs --repeats times (our methods interleaved), median kept,
under glibc's default allocator. Peak memory: one more run of each method on one sample per
length, in a second process (--memory-pass) with the mmap threshold fixed, so freed memory
goes back to the OS and the resident-set high-water mark is exact; that setting costs long
prefills ~10%, so it never applies to the timed runs.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import transformers
from common import setup_threads

import asl
from asl.bench.tasks import scoring
from asl.bench.args import add_dtype, resolve_dtype_flag
from asl.bench.report import rows as tabulate
from asl.bench.run.memory import MMAP_THRESHOLD, exact_cpu_peaks
from asl.bench.methods import Method, model_defaults, parse_method
from asl.bench.run.runner import Job, run_job
from asl.bench.tasks import make_sample
from asl.models.loading import resolve_checkpoint

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
KVPRESS_PY = ROOT / ".venv-kvpress" / "bin" / "python"
OURS = ("full", "snapkv", "fastkv", "gemfilter", "asl")
KVPRESS = ("snapkv", "streaming")


def ours_run(model, tokenizer, sample, name: str, budget: int, num_layers: int, model_name: str) -> dict:
    (spec,) = parse_method(name)
    b = None if name == "full" else budget
    job = Job(sample.task, sample.length, sample.index, 0, Method.resolve(spec, model_defaults(model_name, num_layers)[0], b, b))
    r = run_job(model, tokenizer, sample, job, compile=True)
    return {k: r[k] for k in ("prediction", "ttft_s", "tpot_s", "peak_mem_bytes", "kv_bytes", "new_tokens",
                              "selection_layer")}


def worker_runs(cmd: list[str], samples, args) -> tuple[dict[str, list[dict]], dict]:
    """Runs a worker script (transformers or kvpress, each in a process of its own) on the
    samples; returns per sample id the list of its repeats, and the worker's versions."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = pathlib.Path(tmp) / "samples.json"
        out = pathlib.Path(tmp) / "out.json"
        spec.write_text(json.dumps([{"id": s.id, "prompt": s.prompt, "max_new_tokens": s.max_new_tokens,
                                     "stop": list(s.stop)} for s in samples]))
        env = dict(os.environ)
        if args.memory_pass:  # as exact_cpu_peaks() does here
            env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
        subprocess.run([*cmd, "--samples", str(spec), "--repeats", str(args.repeats), "--threads", str(args.threads),
                        "--dtype", args.dtype, "--device", args.device, "--out", str(out)], check=True, env=env)
        data = json.loads(out.read_text())
    runs: dict[str, list[dict]] = {}
    for r in data["results"]:
        runs.setdefault(r["id"], []).append(r)
    return runs, data.get("versions", {})


def workers(folder, args) -> list[tuple[str, list[str]]]:
    """(method, command) of every peer: transformers' generate, then each kvpress press."""
    found = [("transformers", [sys.executable, str(HERE / "peers_transformers.py"), "--model-dir", str(folder)])]
    if not args.no_kvpress:
        found += [(f"kvpress-{press}", [args.kvpress_python, str(HERE / "peers_kvpress.py"), "--model-dir", str(folder),
                                        "--press", press, "--budget", str(args.budget)]) for press in KVPRESS]
    return found


def _median(rows: list[dict], key: str) -> float:
    """Median over every repeat of every row."""
    return statistics.median([x for r in rows for x in r[key] if x is not None] or [float("nan")])


def summarize(rows: list[dict]) -> list[dict]:
    """Per model, length and method: accuracy, medians, and ratios to transformers' full cache."""
    cells: dict[tuple, list[dict]] = {}
    for r in rows:
        cells.setdefault((r["model"], r["length"], r["method"]), []).append(r)
    out = []
    for (model, length, method), rs in cells.items():
        out.append({"model": model, "length": length, "method": method, "n": len(rs),
                    "accuracy": None if rs[0]["score"] is None else 100 * statistics.mean(r["score"] for r in rs),
                    "ttft_s": _median(rs, "ttft_s"),
                    "tpot_s": _median(rs, "tpot_s"), "peak_mem_bytes": _median(rs, "peak_mem_bytes"),
                    "kv_bytes": statistics.mean(r["kv_bytes"] for r in rs)})
    base = {(s["model"], s["length"]): s for s in out if s["method"] == "transformers"}
    for s in out:
        b = base.get((s["model"], s["length"]))
        for k in ("ttft_s", "tpot_s", "peak_mem_bytes", "kv_bytes"):
            s[f"{k}_vs_hf"] = s[k] / b[k] if b and b[k] else None
    return out


HEADERS = ["method", "n", "acc %", "TTFT s", "x hf", "TPOT ms", "x hf", "peak MiB", "x hf", "KV MiB", "x hf"]


def _cells(s: dict) -> list[str]:
    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    return [s["method"], str(s["n"]), num(s["accuracy"], ".1f"), f"{s['ttft_s']:.3f}", num(s["ttft_s_vs_hf"], ".2f"),
            f"{s['tpot_s'] * 1e3:.1f}", num(s["tpot_s_vs_hf"], ".2f"), f"{s['peak_mem_bytes'] / 2**20:.0f}",
            num(s["peak_mem_bytes_vs_hf"], ".2f"), f"{s['kv_bytes'] / 2**20:.1f}", num(s["kv_bytes_vs_hf"], ".2f")]


def tables(summary: list[dict], markdown: bool = False) -> str:
    """Per model and length, one table (Markdown for benchmarks/README.md, else aligned text)."""
    parts = []
    for model, length in dict.fromkeys((s["model"], s["length"]) for s in summary):
        cells = [_cells(s) for s in summary if (s["model"], s["length"]) == (model, length)]
        parts.append(f"\n**{model}, {length} tokens**\n\n{tabulate.markdown(HEADERS, cells)}" if markdown else
                     f"\n== {model}, {length} tokens\n{tabulate.text(HEADERS, cells)}")
    return "\n".join(parts) + "\n"


def plot(summary: list[dict], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(s["model"] for s in summary))
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        for method in dict.fromkeys(s["method"] for s in summary):
            pts = sorted((s["length"], s["ttft_s"]) for s in summary if s["model"] == model and s["method"] == method)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=method, linestyle="--" if method.startswith("kvpress") else "-")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("prompt tokens")
        ax.set_ylabel("time to first token (s)")
        ax.set_title(model)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def fitting_lengths(lengths: str, model, model_name: str) -> list[int]:
    """The asked lengths, each cut to the model's context less 256 tokens for the answer
    (as asl.bench's --lengths allows), with a note when one is cut."""
    limit = model.config.max_position_embeddings - 256
    out = []
    for n in map(int, lengths.split(",")):
        if n > limit:
            print(f"{model_name}: {n} tokens -> {limit} (context {limit + 256}, 256 left for the answer)")
        out.append(min(n, limit))
    return list(dict.fromkeys(out))


class RunLog:
    """Every timed run, one JSON line each in OUT/runs.jsonl, so an interrupted or crashed
    peers run resumes where it stopped; refuses a folder made with other settings."""

    def __init__(self, out: pathlib.Path, setting: dict, name: str = "runs.jsonl"):
        self.path = out / name
        settings = out / "settings.json"
        if settings.exists() and json.loads(settings.read_text()) != setting:
            sys.exit(f"--out {out} holds runs made with {settings.read_text()}; use another --out")
        settings.write_text(json.dumps(setting))
        self.lines = [json.loads(x) for x in self.path.read_text().splitlines()] if self.path.exists() else []
        self._done = {(x["model"], x["id"], x["method"], x["repeat"]) for x in self.lines}

    def done(self, model: str, sid: str, method: str, repeat: int) -> bool:
        return (model, sid, method, repeat) in self._done

    def add(self, model: str, s, method: str, repeat: int, run: dict) -> None:
        line = {"model": model, "id": s.id, "task": s.task, "length": s.length, "prompt_tokens": s.prompt_tokens,
                "metric": s.metric, "answers": list(s.answers), "method": method, "repeat": repeat,
                **{k: run[k] for k in ("prediction", "ttft_s", "tpot_s", "peak_mem_bytes", "kv_bytes")}}
        with self.path.open("a") as f:
            f.write(json.dumps(line) + "\n")
        self.lines.append(line)
        self._done.add((model, s.id, method, repeat))

    def rows(self) -> list[dict]:
        """One row per model, sample and method: the first repeat's answer and score, every
        repeat's timings."""
        runs: dict[tuple, list[dict]] = {}
        for x in self.lines:  # a repeat cut short and run again: its last run counts
            runs.setdefault((x["model"], x["id"], x["method"]), {})[x["repeat"]] = x
        setting = json.loads((self.path.parent / "settings.json").read_text())
        rows = []
        for (model, sid, method), rs in runs.items():
            rs = [rs[k] for k in sorted(rs)]
            first = rs[0]
            score = None if setting["random_weights"] else scoring.score(first["metric"], first["prediction"],
                                                                         first["answers"])
            rows.append({"model": model, "task": first["task"], "length": first["length"], "id": sid,
                         "method": method, "prompt_tokens": first["prompt_tokens"], "answers": first["answers"],
                         "prediction": first["prediction"], "score": score, "ttft_s": [r["ttft_s"] for r in rs],
                         "tpot_s": [r["tpot_s"] for r in rs], "peak_mem_bytes": [r["peak_mem_bytes"] for r in rs],
                         "kv_bytes": first["kv_bytes"]})
        return rows


def with_exact_peaks(rows: list[dict], out: pathlib.Path, setting: dict) -> list[dict]:
    """The rows with peak memory from the memory pass (OUT/memory.jsonl), which measures one
    sample per model, length and method (the peak depends on the length, not on the task)."""
    if not (out / "memory.jsonl").exists():
        return rows
    peaks = {(r["model"], r["length"], r["method"]): r["peak_mem_bytes"]
             for r in RunLog(out, setting, "memory.jsonl").rows()}
    return [{**r, "peak_mem_bytes": peaks.get((r["model"], r["length"], r["method"]), r["peak_mem_bytes"])}
            for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2-135m,qwen2.5-0.5b")
    ap.add_argument("--lengths", default="2048,4096,8192")
    ap.add_argument("--tasks", default="passkey,niah_single_2,kv_retrieval,niah_multikey_2")
    ap.add_argument("--samples", type=int, default=2, help="per task and length")
    ap.add_argument("--budget", type=int, default=512, help="KV tokens per head per layer (and selection size)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    add_dtype(ap)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--kvpress-python", default=str(KVPRESS_PY), help="a Python that can import kvpress")
    ap.add_argument("--no-kvpress", action="store_true", help="skip kvpress (no .venv-kvpress)")
    ap.add_argument("--random-weights", action="store_true",
                    help="the checkpoints hold random weights (benchmarks/random_checkpoint.py): time and memory "
                         "only, accuracy is not reported")
    ap.add_argument("--no-memory-pass", action="store_true",
                    help="skip the separate peak-memory pass (peaks then come from the timed runs, inexact)")
    ap.add_argument("--memory-pass", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "peers"))
    args = ap.parse_args()
    resolve_dtype_flag(args, "peers")  # the workers get the concrete name
    setup_threads(args.threads)
    if args.memory_pass:
        # Exact peaks need glibc's mmap threshold fixed, which slows long prefills by ~10%, so
        # they are measured here, in a process of their own, one run per sample and method.
        exact_cpu_peaks()
        args.repeats = 1
    if not args.no_kvpress and not pathlib.Path(args.kvpress_python).exists():
        sys.exit(f"{args.kvpress_python} missing: run benchmarks/peers_env.sh first (or pass --no-kvpress)")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    setting = {"device": machine, "random_weights": args.random_weights, "threads": args.threads,
               "dtype": args.dtype, "dtype_reason": args.dtype_reason, "budget": args.budget}
    log = RunLog(out, setting, "memory.jsonl" if args.memory_pass else "runs.jsonl")
    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    for model_arg in args.models.split(","):
        folder = resolve_checkpoint(model_arg)
        model_name = model_arg if "/" not in model_arg else folder.name
        model, tok = asl.load(folder, dtype=dtype, device=args.device)
        L = model.config.num_layers
        lengths = fitting_lengths(args.lengths, model, model_name)
        tasks = args.tasks.split(",")
        if args.memory_pass:  # one sample per length
            samples = [make_sample(tasks[0], tok, n, 0, seed=0) for n in lengths]
        else:
            samples = [make_sample(t, tok, n, i, seed=0) for n in lengths for t in tasks for i in range(args.samples)]
        todo = [(s, rep) for s in samples for rep in range(args.repeats) if not log.done(model_name, s.id, f"asl-{OURS[-1]}", rep)]
        with torch.inference_mode():
            if todo:
                # One sample per task (their answer lengths differ, so the cache shapes do): the decode
                # step compiles here, and turns dynamic, before anything is timed.
                for warm in {s.task: s for s in reversed(samples)}.values():  # each task's shortest
                    for name in OURS:
                        ours_run(model, tok, warm, name, args.budget, L, model_name)
            for s, rep in todo:
                for name in OURS:
                    log.add(model_name, s, f"asl-{name}", rep, ours_run(model, tok, s, name, args.budget, L, model_name))
                print(f"{model_name} {s.id} repeat {rep} done", flush=True)
        c = model.config
        token_bytes = 2 * c.num_kv_heads * c.head_dim * dtype.itemsize  # K and V, one token, one layer
        del model  # the peers run with only their own model in memory
        for method, cmd in workers(folder, args):
            for n in lengths:  # one worker per length, so an interrupted run loses at most one
                missing = [s for s in samples if s.length == n
                           and not all(log.done(model_name, s.id, method, rep) for rep in range(args.repeats))]
                if not missing:
                    continue
                got, v = worker_runs(cmd, missing, args)
                if method.startswith("kvpress"):
                    versions.update({f"kvpress venv {k}": x for k, x in v.items()})
                for s in missing:
                    for rep, r in enumerate(got[s.id]):
                        if "kv_tokens" in r:
                            r["kv_bytes"] = sum(r["kv_tokens"]) * token_bytes
                        log.add(model_name, s, method, rep, r)
    if args.memory_pass:
        return
    if not args.no_memory_pass:
        subprocess.run([sys.executable, __file__, *sys.argv[1:], "--memory-pass"], check=True)
    rows = with_exact_peaks(log.rows(), out, setting)
    summary = summarize(rows)
    print(tables(summary))
    meta = {"date": time.strftime("%Y-%m-%d"), **setting, "repeats": args.repeats, "versions": versions}
    (out / "peers.json").write_text(json.dumps({"meta": meta, "summary": summary, "rows": rows}, indent=1))
    (out / "peers.md").write_text(tables(summary, markdown=True))
    plot(summary, out / "ttft_vs_length.png")
    print(f"\nwrote {out}/peers.json, peers.md and ttft_vs_length.png")


if __name__ == "__main__":
    main()
