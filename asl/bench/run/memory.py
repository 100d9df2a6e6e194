"""Peak memory of one run, above what was in use when it started. Needs only torch and the
standard library: benchmarks/peers_kvpress.py loads this file from kvpress's venv without
importing asl.

CUDA: the caching allocator's peak (`max_memory_allocated`) above `memory_allocated` at the start.

CPU: the process's resident-set high-water mark (`VmHWM`) above its resident set at the start,
after Linux resets the mark (writing 5 to /proc/self/clear_refs). A resident-set probe alone
misses what glibc's malloc hands out again: memory an earlier run freed stays resident in the
heap (glibc's dynamic mmap threshold rises to the largest freed block, up to 32 MiB, so even a
KV cache of many MiB comes from there), and a later run that reuses it faults no new pages (a
full-cache run of 2,048 tokens once read 2 MB beside its 45 MiB KV cache). So on entry we first
call glibc's `malloc_trim(0)`, which gives the pages of every free heap chunk back to the OS:
every page the run then touches is faulted in and counts. The trim takes 5-13 ms (135M
model loaded) and happens before the run, outside its timings; the run then pays the page
faults of memory it would otherwise have reused (smollm2-135m, 2,048 tokens: about 32,000
minor faults instead of 150, ~70 ms of system time per run; median prefill 1.83 s against
1.81 s without the trim, within the noise).

The CPU figure is the growth of the whole process's resident memory, so it is at least the
memory the run wrote and still held at its peak (its KV cache included), and it also counts
  - what the allocator keeps besides the run's live tensors: heap fragmentation, page
    rounding, free chunks not yet returned, Python objects, library scratch (oneDNN), and
    file-backed pages (weights, libraries) first touched during the run. smollm2-135m,
    bf16, full cache after a warm-up: 1,500 tokens read 77-90 MiB (torch's own peak of
    live tensors, from its profiler: 51 MiB; KV 33 MiB), 2,048 tokens 138-160 MiB (live
    67.5 MiB, KV 45 MiB), 72-75 MiB with `exact_cpu_peaks()`, which cuts the fragmentation;
and it can still miss
  - memory resident at the start that the run frees and reuses (garbage that a collection
    during the run frees: we do not gc.collect() first, which took 170-360 ms here);
  - free memory at the top of a non-main thread's arena, which malloc_trim does not return
    (glibc 2.36): under 0.3 MiB in all thread arenas after a generate(), whose tensors come
    from the calling thread; and, per free chunk, the page holding its header, plus the small
    chunks glibc caches (tcache, fastbins);
  - pages allocated but never written (never resident), or swapped out during the run.
Where this cannot hold (no /proc/self/clear_refs, no glibc, or another malloc such as
jemalloc or tcmalloc interposed) `bytes` is None rather than a number that may be far too low.
`exact_cpu_peaks()` optionally also fixes glibc's mmap threshold, so large tensors are mapped
fresh and unmapped on free (less fragmentation in the figure; not needed for the lower bound).
"""
from __future__ import annotations

import ctypes
import os
import sys

import torch

_STATUS = "/proc/self/status"
_CLEAR = "/proc/self/clear_refs"


def status_kib(field: str) -> int | None:
    """A /proc/self/status field in KiB (VmRSS, VmHWM), None where there is none."""
    try:
        with open(_STATUS) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_cpu_peak() -> bool:
    try:
        with open(_CLEAR, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


_UNSET = object()
_libc_cache = _UNSET


def _address(lib, name: str) -> int | None:
    return ctypes.cast(getattr(lib, name), ctypes.c_void_p).value


def _glibc_malloc():
    """glibc as a ctypes library where glibc's malloc is the one the process uses, else None."""
    global _libc_cache
    if _libc_cache is _UNSET:
        _libc_cache = None
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL("libc.so.6")
                libc.gnu_get_libc_version  # glibc, not musl
                process = ctypes.CDLL(None)  # the symbols every library's calls resolve to
                if all(_address(process, n) == _address(libc, n) for n in ("malloc", "free", "posix_memalign")):
                    libc.malloc_trim.argtypes = [ctypes.c_size_t]
                    libc.malloc_trim.restype = ctypes.c_int
                    _libc_cache = libc
            except (OSError, AttributeError):
                pass
    return _libc_cache


def _return_free_heap() -> bool:
    """malloc_trim(0): free heap pages go back to the OS, so reusing them faults them in anew."""
    libc = _glibc_malloc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


class PeakMemory:
    """`with PeakMemory(device) as m: ...` then `m.bytes` (None where it cannot be measured)."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.bytes: int | None = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            self._ok = _return_free_heap() and _reset_cpu_peak()
            self._start = status_kib("VmRSS")
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self._start
        elif self._ok and self._start is not None:
            peak = status_kib("VmHWM")
            self.bytes = max(0, peak - self._start) * 1024 if peak is not None else None
        return False


def cpu_peak_supported() -> bool:
    """Whether PeakMemory("cpu") gives a number here (glibc's malloc and clear_refs)."""
    return os.path.exists(_CLEAR) and _glibc_malloc() is not None and _reset_cpu_peak()


MMAP_THRESHOLD = 64 * 1024


def exact_cpu_peaks() -> bool:
    """Make glibc map every allocation of 64 KiB or more fresh and unmap it on free (a fixed
    mmap threshold). PeakMemory's figure is a lower bound without it (it trims the heap on
    entry); with it the figure holds less heap fragmentation. Costs some page faults; call it
    once in processes that compare peaks."""
    libc = _glibc_malloc()
    try:
        return libc is not None and bool(libc.mallopt(-3, MMAP_THRESHOLD))  # M_MMAP_THRESHOLD
    except AttributeError:
        return False
