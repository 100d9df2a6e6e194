"""Threads on a busy machine: the bench's timed call (a prefill and a short answer) with all
cores' threads spinning while they wait (OpenMP's ACTIVE policy, torch's default), with asl's
default (they sleep: `import asl` sets OMP_WAIT_POLICY=PASSIVE unless it is set), and with one
thread, alone and beside a process that keeps one core busy. Each setting runs in its own
process (the policy is read when the OpenMP runtime starts). Writes
docs/results/threads-busy/results.json.

    python benchmarks/threads_busy.py [--model smollm2-135m] [--context 1024] [--repeats 5]
"""
from __future__ import annotations

import json
import multiprocessing
import os
import pathlib
import statistics
import subprocess
import sys
import time

OUT = pathlib.Path(__file__).resolve().parent.parent / "docs" / "results" / "threads-busy"

CHILD = r"""
import json, sys, time
import asl  # first, as the bench does: its OMP_WAIT_POLICY default applies
import torch
from asl.bench.tasks.haystack import prose_tokens
threads, context, repeats, new = map(int, sys.argv[1:5])
model_name, dtype = sys.argv[5], sys.argv[6]
if threads:
    torch.set_num_threads(threads)
model, tok = asl.load(model_name, dtype=dtype)
prompt = tok.decode(prose_tokens(tok, context))
asl.generate(model, tok, prompt, max_new_tokens=new)  # warm
runs = []
for _ in range(repeats):
    begun = time.perf_counter()
    out = asl.generate(model, tok, prompt, max_new_tokens=new)
    runs.append({"wall_s": time.perf_counter() - begun, "ttft_s": out.trace.prefill_s,
                 "tpot_s": out.trace.decode_s_per_token})
print(json.dumps({"threads": torch.get_num_threads(), "runs": runs}))
"""


def _spin(stop) -> None:
    """A competing process: one core kept busy."""
    while not stop.is_set():
        sum(range(10000))


def measure(threads: int, policy: str | None, args) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    run = subprocess.run([sys.executable, "-c", CHILD, str(threads), str(args.context), str(args.repeats),
                          str(args.new_tokens), args.model, args.dtype], env=env, capture_output=True, text=True,
                         check=True)
    data = json.loads(run.stdout.strip().splitlines()[-1])
    return {k: statistics.median(r[k] for r in data["runs"]) for k in ("wall_s", "ttft_s", "tpot_s")} | {
        "threads": data["threads"]}


def main() -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    settings = [("all cores, spinning", 0, "ACTIVE"), ("all cores, asl default", 0, None), ("1 thread", 1, None)]
    results = []
    for busy in (False, True):
        stop = multiprocessing.Event()
        spinner = multiprocessing.Process(target=_spin, args=(stop,)) if busy else None
        if spinner:
            spinner.start()
            time.sleep(1.0)
        try:
            for name, threads, policy in settings:
                m = measure(threads, policy, args)
                results.append({"setting": name, "busy": busy, "omp_wait_policy": policy or "(asl's default)", **m})
                print(f"{'busy' if busy else 'idle'}  {name:<26} threads {m['threads']}  TTFT {m['ttft_s']:.3f} s  "
                      f"TPOT {1000 * m['tpot_s']:.1f} ms  wall {m['wall_s']:.2f} s", flush=True)
        finally:
            if spinner:
                stop.set()
                spinner.join()
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {"command": "python " + " ".join(sys.argv), "cores": cores, "model": args.model, "context": args.context,
            "new_tokens": args.new_tokens, "repeats": args.repeats, "dtype": args.dtype}
    (OUT / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    print(f"written: {OUT / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
