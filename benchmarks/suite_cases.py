"""One run of each kind of case of benchmarks/gpu_suite.py, timed and its peak memory read.

Ours goes through `asl.generate` (its own synchronised TTFT, TPOT, compile time and policy
time); transformers' sdpa prefill and its static-cache decode are timed here, synchronised
around the host timer. Peak memory: `asl.bench.run.memory.PeakMemory`, above what was allocated
before the run (on CUDA, max_memory_allocated after reset_peak_memory_stats).
"""
from __future__ import annotations

import statistics
import time

import torch

import asl
from asl.bench.run.memory import PeakMemory
from common import StepClock, sync


class RandomIds:
    """A stand-in tokenizer for random weights: the prompt "N" encodes to N fixed random ids
    (seeded by N), so every method and transformers read the same tokens."""

    chat_template = None
    eos_token_id = None

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self._ids: dict[int, list[int]] = {}

    def ids(self, n: int) -> list[int]:
        if n not in self._ids:
            gen = torch.Generator().manual_seed(n)
            self._ids[n] = torch.randint(0, self.vocab_size, (n,), generator=gen).tolist()
        return self._ids[n]

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": self.ids(int(text))}

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return " ".join(map(str, ids))


def measured(fn, device: torch.device) -> dict:
    """fn()'s result dict plus wall_s and peak_bytes (above the start; total_peak_bytes on CUDA)."""
    with PeakMemory(device) as mem:
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        wall = time.perf_counter() - start
    out.update(wall_s=wall, peak_bytes=mem.bytes)
    if device.type == "cuda":
        out["total_peak_bytes"] = torch.cuda.max_memory_allocated(device)
    return out


def _cudagraph_skips() -> int:
    """Inductor's count of compiled graphs it ran without CUDA graphs (and said why in the log)."""
    from torch._dynamo.utils import counters

    return counters["inductor"]["cudagraph_skips"]


def _dynamo_graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def ours(model, tok: RandomIds, n: int, policies: tuple, new_tokens: int, compile, dynamic: bool) -> dict:
    """One asl.generate of the n-token prompt; with new_tokens 1 a prefill only (no decode step)."""
    selection, eviction = policies
    skips = _cudagraph_skips()
    with torch._dynamo.config.patch(assume_static_by_default=not dynamic):
        out = asl.generate(model, tok, str(n), max_new_tokens=new_tokens, compile=compile,
                           selection=selection, eviction=eviction)
    t, seq = out.trace, out.trace.sequences[0]
    return dict(ttft_s=t.prefill_s, tpot_s=t.decode_s_per_token if new_tokens > 1 else None,
                policy_s=t.policy_s, compile_s=t.compile_s, compiles=t.compiles, kv_bytes=t.kv_bytes,
                new_tokens=seq.new_tokens, selection_layer=seq.selection_layer,
                cudagraph_skips=_cudagraph_skips() - skips)


def hf_prefill(hf, ids: torch.Tensor) -> dict:
    """transformers' own forward over the prompt as its generate prefills (a KV cache, the last logits)."""
    with torch.inference_mode():
        out = hf(input_ids=ids, use_cache=True, logits_to_keep=1)
    cache = getattr(out, "cache", None)  # transformers 5.2x's name; past_key_values before
    return dict(kv_bytes=_hf_cache_bytes(out.past_key_values if cache is None else cache))  # TTFT: the wall time


def _hf_cache_bytes(cache) -> int | None:
    try:
        return sum(layer.keys.numel() * layer.keys.element_size() * 2 for layer in cache.layers)
    except AttributeError:  # another transformers' cache layout
        return None


def hf_static_decode(hf, ids: torch.Tensor, new_tokens: int) -> dict:
    """transformers' generate with a static cache (on CUDA it compiles the one-token forward, as
    CUDA graphs by its default compile config). TPOT is the mean gap between its steps, as
    asl.generate's is a mean over its decode steps; the median is kept beside it."""
    clock, graphs = StepClock(), _dynamo_graphs()
    with torch.inference_mode():
        hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
                    cache_implementation="static", logits_processor=[clock], pad_token_id=0)
    gaps = [b - a for a, b in zip(clock.times, clock.times[1:])]
    tpot = {"tpot_s": statistics.fmean(gaps), "tpot_median_s": statistics.median(gaps)} if gaps else {"tpot_s": None}
    return dict(**tpot, new_tokens=len(clock.times), compiled_graphs=_dynamo_graphs() - graphs)


def ops_step(device: torch.device, repeats: int) -> dict:
    """benchmarks/ops.py's cases (32k-token sizes): torch.ops.asl.* vs asl.ops' pure-torch fallback
    (and asl.reference where it runs), median of `repeats`; peak memory on CUDA."""
    import ops as op_bench
    from asl import ops

    backend = ops.backend(device)
    if repeats < 1:
        return {"status": "skipped", "reason": "--ops-repeats 0"}
    if backend not in ("cpp", "cuda"):
        return {"status": "skipped", "reason": f"asl._C has no {device.type} kernels here (backend {backend!r})"}
    result = {"status": "ok", "backend": backend, "repeats": repeats}
    for case in ("ranks", "window_scores"):
        times = op_bench.time_case(case, device.type, repeats)
        entry = {f"{name}_ms": t * 1e3 for name, t in times.items()}
        entry["op_vs_torch"] = times["torch"] / times["op"]
        if device.type == "cuda" and case == "window_scores":
            entry.update({f"{k}_peak_mib": v for k, v in op_bench.memory_case(case, "cuda", 1).items()})
        result[case] = entry
    result["detail"] = "; ".join(f"{case} op {result[case]['op_ms']:.2f} ms vs torch {result[case]['torch_ms']:.2f} ms "
                                 f"({result[case]['op_vs_torch']:.1f}x)" for case in ("ranks", "window_scores"))
    return result
