"""Shared helpers for the speed scripts: thread pinning, device syncs, interleaved median timing, prose ids."""
from __future__ import annotations

import argparse
import statistics
import time

import torch

try:
    from transformers import LogitsProcessor
except ImportError:  # the GPU suite also runs where transformers is missing; StepClock needs it, nothing else does
    LogitsProcessor = object


def setup_threads(n: int = 2) -> None:
    torch.set_num_threads(n)


def sync(device) -> None:
    """Wait for the device's queued work, so a host timer brackets it (a no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def speed_parser(doc: str | None, model: str = "smollm2-135m", context: int = 4096,
                 repeats: int = 3) -> argparse.ArgumentParser:
    """The options every speed script shares, named alike: --model, --context, --threads, --repeats."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=model)
    ap.add_argument("--context", type=int, default=context, help="prompt tokens")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=repeats)
    ap.add_argument("--dtype", default="auto", help="auto (bfloat16 where native, else float32), float32, bfloat16")
    return ap


def speed_dtype(name: str) -> tuple[torch.dtype, str]:
    """The --dtype of a speed script on the CPU, resolved as asl resolves it, and why."""
    from asl.models.dtype import resolve_dtype

    resolved = resolve_dtype(name, "cpu")
    return resolved.dtype, resolved.reason


def interleaved_medians(fns: dict, repeats: int = 5, warmup: int = 1) -> dict:
    """Median wall time of each fn, runs interleaved (a, b, a, b, ...) so drift hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def prose_ids(tokenizer, n_tokens: int) -> torch.Tensor:
    """[1, n_tokens] ids of Python's own documentation prose (ships with Python)."""
    from asl.bench.tasks.haystack import prose_tokens

    return torch.tensor([prose_tokens(tokenizer, n_tokens)])


class StepClock(LogitsProcessor):
    """Notes the time at every generation step of transformers' generate (after each forward)."""

    def __init__(self):
        self.times: list[float] = []

    def __call__(self, input_ids, scores):
        if scores.is_cuda:
            torch.cuda.synchronize(scores.device)
        self.times.append(time.perf_counter())
        return scores
