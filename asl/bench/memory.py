"""Peak memory of one run (needs only torch: benchmarks/peers_kvpress.py loads this file
from kvpress's venv without importing asl), above what was in use when it started.

CUDA: the caching allocator's peak. CPU: the process's resident-set high-water mark
(`VmHWM`), which Linux lets us reset by writing 5 to /proc/self/clear_refs; large tensors are
mmapped by glibc and returned on free, so the difference tracks the run's tensors (smaller
ones may reuse heap memory an earlier run left resident and then go uncounted).
"""
from __future__ import annotations

import os

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
            self._ok = _reset_cpu_peak()
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
    return os.path.exists(_CLEAR) and _reset_cpu_peak()


MMAP_THRESHOLD = 64 * 1024


def exact_cpu_peaks() -> bool:
    """Make glibc map every allocation of 64 KiB or more fresh and unmap it on free (a fixed
    mmap threshold), so the RSS probe counts a run's tensors even after earlier runs freed
    theirs. Costs some page faults; call it once in processes that compare peaks."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        return bool(libc.mallopt(-3, MMAP_THRESHOLD))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False
