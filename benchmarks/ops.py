"""Speed and peak memory of the custom ops (asl._C) against asl.reference and the pure-torch fallback.

    python benchmarks/ops.py [--device cpu|cuda] [--threads 2] [--repeats 5]

Cases (docs/algorithms.md sections 1-3, at the sizes of a 32k-token prompt):
  ranks          token_ranks of T=8 score rows of m=32,768, then rank_variance with k=2,048
  window_scores  B=1, H=14, G=2 (GQA 7:1), w=32, n=32,768, d=64, float32, kernel 7, avg

Implementations: "reference" (asl.reference: repeat_kv, full [B, H, w, n] probabilities),
"op" (torch.ops.asl.*, the C++/CUDA kernels) and "torch" (asl/ops_fallback.py, the pure-torch
kernels the ops run where asl._C has none: grouped keys, key chunks). Times are medians over
--repeats runs after one warm-up, the implementations interleaved (a, b, c, a, b, c, ...) so drift hits all alike;
on CUDA each run is bracketed by torch.cuda.synchronize(). asl.reference's window scores
build their masks on the CPU, so on CUDA that case compares the op with the torch fallback.

Peak memory, CPU: each (case, implementation) runs once in a fresh subprocess. After
building the inputs and a warm-up call on a tiny input (thread pools, BLAS buffers), the
child resets the kernel's resident-set high-water mark (writing 5 to /proc/self/clear_refs)
and records its resident set; after one call it reads the high-water mark (VmHWM). The
difference is the extra resident memory the call needed at its peak, whatever allocated it
(torch's allocator, std::vector, BLAS), which torch's own CPU memory profiling would not
all see. A fresh process per measurement keeps one implementation's freed-but-cached heap
from hiding another's peak. Where clear_refs is unavailable, the child's ru_maxrss before
and after the call is used instead. CUDA: torch.cuda.max_memory_allocated() above the
memory allocated before the call (after reset_peak_memory_stats).

Prints a table and one JSON line; exits 1 when asl._C is not built.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from asl import ops, ops_fallback, reference
from asl.bench.report import rows as tabulate
from asl.bench.run.memory import status_kib
from common import sync

RANKS = dict(T=8, m=32768, k=2048)
WINDOW = dict(B=1, H=14, G=2, w=32, n=32768, d=64, kernel=7, pooling="avg")
TARGETS = {"ranks": dict(speedup=3.0), "window_scores": dict(speedup=2.0, memory=0.25)}


def make_inputs(case: str, device: str, small: bool = False):
    gen = torch.Generator().manual_seed(0)
    if case == "ranks":
        m = 64 if small else RANKS["m"]
        return dict(scores=torch.randn(RANKS["T"], m, generator=gen).to(device), k=min(RANKS["k"], m))
    c = WINDOW
    n = 96 if small else c["n"]
    q = torch.randn(c["B"], c["H"], n, c["d"], generator=gen).to(device)
    k = torch.randn(c["B"], c["G"], n, c["d"], generator=gen).to(device)
    return dict(q=q, k=k, valid=torch.ones(c["B"], n, dtype=torch.bool, device=device))


def implementation(case: str, name: str, x: dict):
    """A no-argument callable running one implementation of one case on inputs x (None: cannot run there)."""
    if case == "ranks":
        s, k = x["scores"], x["k"]
        if name == "reference":
            return lambda: reference.rank_variance(reference.token_ranks(s)[:, None], k)
        if name == "op":
            return lambda: torch.ops.asl.rank_variance(torch.ops.asl.token_ranks(s)[:, None], k)
        return lambda: ops_fallback.rank_variance(ops_fallback.token_ranks(s)[:, None], k)
    q, kk, valid, c = x["q"], x["k"], x["valid"], WINDOW
    w, n = c["w"], q.shape[2]
    if name == "reference":
        if q.device.type != "cpu":
            return None  # asl.reference builds its window masks on the CPU
        return lambda: reference.window_scores(q, kk, valid, w, c["kernel"], c["pooling"])
    if name == "op":
        return lambda: torch.ops.asl.window_scores(q[:, :, n - w:], kk, valid, c["kernel"], c["pooling"])
    return lambda: ops_fallback.window_scores(q[:, :, n - w:], kk, valid, c["kernel"], c["pooling"])


IMPLS = ("reference", "op", "torch")


def time_case(case: str, device: str, repeats: int) -> dict:
    x = make_inputs(case, device)
    fns = {name: fn for name in IMPLS if (fn := implementation(case, name, x)) is not None}
    for fn in fns.values():  # warm-up
        fn()
    sync(device)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}



def memory_child(case: str, name: str, threads: int) -> None:
    """In a fresh process: print the extra peak resident memory (MiB) of one call."""
    torch.set_num_threads(threads)
    implementation(case, name, make_inputs(case, "cpu", small=True))()  # warm-up on a tiny input
    fn = implementation(case, name, make_inputs(case, "cpu"))
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current resident set
        before, how = status_kib("VmRSS"), "VmHWM"
    except OSError:
        before, how = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"
    fn()
    after = status_kib("VmHWM") if how == "VmHWM" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mib": (after - before) / 1024, "method": how}))


def memory_case(case: str, device: str, threads: int) -> dict:
    out = {}
    for name in IMPLS:
        if device == "cuda":
            fn = implementation(case, name, make_inputs(case, device))
            if fn is None:
                continue
            fn()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            fn()
            torch.cuda.synchronize()
            out[name] = (torch.cuda.max_memory_allocated() - before) / 2**20
        else:
            res = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-child", case, name,
                                  "--threads", str(threads)], capture_output=True, text=True, check=True)
            out[name] = json.loads(res.stdout.strip().splitlines()[-1])["peak_mib"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--memory-child", nargs=2, metavar=("CASE", "IMPL"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(*args.memory_child, args.threads)
        return
    torch.set_num_threads(args.threads)
    if ops.backend(args.device) not in ("cpp", "cuda"):
        print(f"asl._C has no {args.device} kernels (backend {ops.backend(args.device)!r}): build it with "
              "`pip install --no-build-isolation -e .`", file=sys.stderr)
        sys.exit(1)

    result = {"device": args.device, "threads": args.threads, "repeats": args.repeats, "backend": ops.backend(args.device),
              "ranks": dict(RANKS), "window_scores": {k: v for k, v in WINDOW.items()}}
    rows = []
    for case in ("ranks", "window_scores"):
        times = time_case(case, args.device, args.repeats)
        mem = memory_case(case, args.device, args.threads) if case == "window_scores" else {}
        entry = result[case]
        entry.update({f"{name}_ms": round(t * 1e3, 3) for name, t in times.items()})
        entry.update({f"{name}_peak_mib": round(v, 1) for name, v in mem.items()})
        entry["speedup_vs_torch"] = round(times["torch"] / times["op"], 2)
        if "reference" in times:
            entry["speedup_vs_reference"] = round(times["reference"] / times["op"], 2)
            if "reference" in mem:
                entry["memory_vs_reference"] = round(mem["op"] / mem["reference"], 4) if mem["reference"] > 0 else math.nan
        if args.device == "cpu":  # the targets are for the CPU kernels
            target = TARGETS[case]
            met = entry["speedup_vs_reference"] >= target["speedup"]
            if "memory" in target:
                met = met and entry["memory_vs_reference"] <= target["memory"]
            entry["meets_target"] = bool(met)
        for name in times:
            ratio = times["reference"] / times[name] if "reference" in times else None
            rows.append((case, name, times[name] * 1e3, ratio, mem.get(name)))

    where = f"cpu, {args.threads} threads" if args.device == "cpu" else torch.cuda.get_device_name()
    print(f"asl ops on {where}, median of {args.repeats}; ref/impl = reference time over this time")
    print(tabulate.text(["case", "impl", "time ms", "ref/impl", "peak MiB"],
                        [[case, name, f"{ms:.2f}", "-" if ratio is None else f"{ratio:.2f}x",
                          "-" if mib is None else f"{mib:.1f}"] for case, name, ms, ratio, mib in rows]))
    for case, target in TARGETS.items():
        e = result[case]
        if args.device != "cpu":
            vs_ref = f"{e['speedup_vs_reference']:.2f}x vs reference, " if "speedup_vs_reference" in e else ""
            print(f"{case}: op {vs_ref}{e['speedup_vs_torch']:.2f}x vs the torch fallback")
            continue
        mem_note = f", memory op/reference {e['memory_vs_reference']:.3f} (target <= {target['memory']})" \
            if "memory" in target else ""
        print(f"{case}: op {e['speedup_vs_reference']:.2f}x faster than reference (target >= {target['speedup']})"
              f"{mem_note}: {'met' if e['meets_target'] else 'NOT met'}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
