"""PeakMemory("cpu") must not report less than a run provably allocated, even when the run
reuses heap memory an earlier run freed (glibc keeps it resident). Each case runs in a fresh
process, so what earlier tests left in the allocator can neither hide nor supply the memory."""
import json
import os
import subprocess
import sys

import pytest

from asl.bench.run.memory import cpu_peak_supported

pytestmark = pytest.mark.skipif(not cpu_peak_supported(), reason="needs glibc's malloc and /proc/self/clear_refs")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_child(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


REUSED_TENSOR = """
import json, torch
from asl.bench.run.memory import PeakMemory
MiB = 2**20
x = torch.ones(16 * MiB // 4); del x  # mmapped; freeing it raises glibc's mmap threshold to ~16 MiB
a = torch.ones(8 * MiB // 4); b = torch.ones(8 * MiB // 4); del a, b  # so these come from the heap, and stay resident
with PeakMemory("cpu") as m:
    c = torch.ones(8 * MiB // 4)  # fits the freed heap chunk: no new pages unless the probe made it fault
    del c
print(json.dumps({"bytes": m.bytes, "tensor": 8 * MiB}))
"""


def test_a_tensor_in_reused_heap_memory_counts():
    r = run_child(REUSED_TENSOR)
    assert r["bytes"] is not None and r["bytes"] >= r["tensor"], r


FULL_CACHE = """
import json, torch
import asl
from asl.bench.tasks.haystack import prose_tokens
from asl.bench.run.memory import PeakMemory
torch.set_num_threads(2)
model, tok = asl.load("smollm2-135m")  # auto: bfloat16 only where it is native (fast)
prompt = tok.decode(prose_tokens(tok, 1500)) + "\\n\\nSummarise the text above in one sentence:"
out = asl.generate(model, tok, prompt, max_new_tokens=4)  # warm-up: fills the heap, then frees it
del out
with PeakMemory("cpu") as m:
    out = asl.generate(model, tok, prompt, max_new_tokens=4)  # full cache
print(json.dumps({"bytes": m.bytes, "kv_bytes": out.trace.kv_bytes,
                  "prompt_tokens": out.trace.sequences[0].prompt_tokens}))
"""


@pytest.mark.slow  # compiles or runs the real model
def test_a_full_cache_run_after_a_warm_up_reports_at_least_its_kv_cache():
    r = run_child(FULL_CACHE)
    print(f"full cache, {r['prompt_tokens']} tokens: peak {(r['bytes'] or 0) / 2**20:.1f} MiB,"
          f" KV {r['kv_bytes'] / 2**20:.1f} MiB")
    assert 1400 <= r["prompt_tokens"] <= 1600
    assert r["bytes"] is not None and r["bytes"] >= r["kv_bytes"], r


def test_no_figure_where_the_heap_cannot_be_trimmed(monkeypatch):
    # Another malloc interposed (jemalloc, tcmalloc), or no glibc: None, never a figure that may be far too low.
    import torch

    from asl.bench.run import memory

    monkeypatch.setattr(memory, "_glibc_malloc", lambda: None)
    with memory.PeakMemory("cpu") as m:
        x = torch.ones(2**20)
        del x
    assert m.bytes is None
    assert not memory.cpu_peak_supported()
