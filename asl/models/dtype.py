"""dtype="auto": the fast dtype for the hardware at hand, and why it was chosen.

bfloat16 halves memory and doubles matmul speed where the hardware computes it natively,
but on a CPU without bf16 instructions PyTorch emulates it and a bf16 matmul runs about 65x
slower than float32 (measured: 1.1 against 70 GFLOP/s on an AVX2-only AMD EPYC). So "auto"
picks bfloat16 only where it is native: a CUDA device that supports it, or a CPU whose torch
kernels use AVX-512 or wider *and* that has `avx512_bf16` or `amx_bf16`. Both of torch's
switches for narrowing the instruction set count: `ATEN_CPU_CAPABILITY` (torch's own kernels)
and `ONEDNN_MAX_CPU_ISA` (the oneDNN matmuls, where the bf16 instructions are used).
float16 is never chosen on a CPU: few CPUs compute it natively.
"""
from __future__ import annotations

import os
import warnings
from typing import NamedTuple

import torch

DTYPES = ("auto", "float32", "bfloat16", "float16")
_WIDE = ("AVX512", "AMX")  # torch.backends.cpu.get_cpu_capability() values that can use bf16 instructions


class ResolvedDtype(NamedTuple):
    """What a dtype argument resolved to: the dtype, why, and whether it is slow here."""

    dtype: torch.dtype
    reason: str
    slow: bool = False  # an explicit bfloat16 on a CPU that emulates it

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo); empty where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what `platform` knows."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_cpu() -> str:
    """One line naming what CPU figures came from: model, torch's capability, bf16 instructions, cores."""
    bf16 = sorted(cpu_flags() & {"avx512_bf16", "amx_bf16"})
    return (f"{cpu_model()}, torch capability {torch.backends.cpu.get_cpu_capability()}, "
            f"{'+'.join(bf16) if bf16 else 'no bf16 instructions'}, {os.cpu_count()} cores")


def cpu_bf16_native() -> tuple[bool, str]:
    """Whether this CPU computes bfloat16 natively as torch will run it, and the reason."""
    capability = torch.backends.cpu.get_cpu_capability()
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    flags = cpu_flags() & {"avx512_bf16", "amx_bf16"}
    if not flags:
        return False, f"the CPU has no avx512_bf16 or amx_bf16 instructions (torch capability {capability})"
    if capability not in _WIDE:
        return False, (f"torch's CPU capability is {capability} (ATEN_CPU_CAPABILITY="
                       f"{os.environ.get('ATEN_CPU_CAPABILITY', 'unset')}): its kernels do not use "
                       f"{', '.join(sorted(flags))}")
    if onednn and onednn not in ("ALL", "DEFAULT") and "AVX512_CORE_BF16" not in onednn and "AMX" not in onednn:
        return False, f"ONEDNN_MAX_CPU_ISA={onednn} keeps oneDNN's matmuls off the bf16 instructions"
    return True, f"the CPU has {', '.join(sorted(flags))} and torch's capability is {capability}"


def auto_dtype(device="cpu") -> ResolvedDtype:
    """What dtype="auto" resolves to on `device`, with the reason."""
    device = torch.device(device)
    if device.type == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False):
            return ResolvedDtype(torch.bfloat16, f"auto: {torch.cuda.get_device_name(device)} computes bfloat16 "
                                                 "natively")
        return ResolvedDtype(torch.float32, "auto: this CUDA device has no native bfloat16")
    if device.type != "cpu":
        return ResolvedDtype(torch.float32, f"auto: no bfloat16 rule for device type {device.type!r}")
    native, why = cpu_bf16_native()
    return ResolvedDtype(torch.bfloat16 if native else torch.float32, f"auto: {why}")


def resolve_dtype(dtype="auto", device="cpu", warn: bool = True) -> ResolvedDtype:
    """The dtype for a dtype argument: "auto" (or None), a name, or a torch dtype.

    An explicit bfloat16 on a CPU without native bf16 is honoured, marked `slow`, with a
    warning (unless `warn=False`: a caller that prints its own). Raises ValueError naming
    the allowed values."""
    if dtype is None or dtype == "auto":
        return auto_dtype(device)
    name = dtype.removeprefix("torch.") if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
    if name not in DTYPES[1:]:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)} (a string or a torch dtype), got {dtype!r}")
    if name == "bfloat16" and torch.device(device).type == "cpu":
        native, why = cpu_bf16_native()
        if not native:
            if warn:
                warnings.warn(slow_bf16_warning(why), stacklevel=2)
            return ResolvedDtype(torch.bfloat16, f"asked for explicitly; not native here: {why}", slow=True)
    return ResolvedDtype(getattr(torch, name), "asked for explicitly")


def slow_bf16_warning(why: str) -> str:
    return (f"bfloat16 on this CPU will be slow: PyTorch emulates it (~65x slower matmuls than float32) "
            f"because {why}; dtype 'auto' picks float32 here")
