"""dtype="auto": bfloat16 only where the hardware computes it natively, with the reason recorded."""
import json
import os
import subprocess
import sys

import pytest
import torch

import asl
from asl.models import dtype as dt


@pytest.mark.parametrize("capability, flags, onednn, expected", [
    ("AVX512", {"avx512f", "avx512_bf16"}, "", torch.bfloat16),  # AMD Zen 4, Intel Cooper Lake
    ("AVX512", {"avx512f", "amx_bf16", "amx_tile"}, "", torch.bfloat16),  # Intel Sapphire Rapids
    ("AVX512", {"avx512f"}, "", torch.float32),  # Skylake-SP: AVX-512 without bf16
    ("AVX2", {"avx2"}, "", torch.float32),  # AMD Zen 3
    ("AVX2", {"avx2", "avx512_bf16"}, "", torch.float32),  # ATEN_CPU_CAPABILITY=avx2 on a bf16 CPU
    ("AVX512", {"avx512_bf16"}, "AVX2", torch.float32),  # ONEDNN_MAX_CPU_ISA=AVX2: matmuls without bf16
    ("AVX512", {"avx512_bf16"}, "AVX512_CORE_BF16", torch.bfloat16),
    ("DEFAULT", set(), "", torch.float32),
])
def test_auto_picks_bfloat16_only_where_native(monkeypatch, capability, flags, onednn, expected):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(dt, "cpu_flags", lambda: set(flags))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", onednn)
    resolved = dt.resolve_dtype("auto", "cpu")
    assert resolved.dtype is expected and not resolved.slow
    assert resolved.reason.startswith("auto: ") and len(resolved.reason) > 20
    assert dt.resolve_dtype(None).dtype is expected  # None means auto too
    assert dt.resolve_dtype("float16").dtype is torch.float16  # never chosen by auto on a CPU, honoured when asked


def test_explicit_bfloat16_on_an_emulating_cpu_runs_with_a_warning(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    monkeypatch.setattr(dt, "cpu_flags", lambda: {"avx2"})
    with pytest.warns(UserWarning, match="bfloat16 on this CPU will be slow: PyTorch emulates it"):
        resolved = dt.resolve_dtype("bfloat16")
    assert resolved.dtype is torch.bfloat16 and resolved.slow
    assert dt.resolve_dtype(torch.float32).reason == "asked for explicitly"


@pytest.mark.parametrize("bad", ["bf16", "fp32", 3, torch.int64])
def test_bad_dtypes_name_the_allowed_ones(bad):
    with pytest.raises(ValueError, match="dtype must be one of auto, float32, bfloat16, float16"):
        dt.resolve_dtype(bad)


def test_load_defaults_to_auto(monkeypatch):
    monkeypatch.setattr(dt, "auto_dtype", lambda device: dt.ResolvedDtype(torch.float16, "auto: test"))
    model, _ = asl.load("smollm2-135m")
    assert model.lm_head.weight.dtype is torch.float16


def _bench_config(env_extra: dict, extra=()) -> dict:
    """The dtype and reason the bench's argument parsing resolves, in a process of its own (the
    CPU capability is fixed when torch starts)."""
    code = ("import json, sys; from asl.bench.cli import parse; a = parse(sys.argv[1:]); "
            "print(json.dumps({'dtype': a.dtype, 'dtype_reason': a.dtype_reason}))")
    env = {**os.environ, **env_extra}
    done = subprocess.run([sys.executable, "-c", code, "--model", "smollm2-135m", "--lengths", "1024", *extra],
                          env=env, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1]) | {"stderr": done.stderr}


def test_bench_under_avx2_records_float32_and_why():
    got = _bench_config({"ATEN_CPU_CAPABILITY": "avx2"})
    assert got["dtype"] == "float32" and "AVX2" in got["dtype_reason"]
    slow = _bench_config({"ATEN_CPU_CAPABILITY": "avx2"}, ["--dtype", "bfloat16"])
    has_bf16 = bool(dt.cpu_flags() & {"avx512_bf16", "amx_bf16"})
    assert slow["dtype"] == "bfloat16"
    assert "warning: bfloat16 on this CPU will be slow" in slow["stderr"]
    assert ("AVX2" in slow["dtype_reason"]) if has_bf16 else ("no avx512_bf16" in slow["dtype_reason"])


def test_bench_default_follows_this_cpu():
    got = _bench_config({})
    assert got["dtype"] == dt.auto_dtype("cpu").name and got["dtype_reason"].startswith("auto: ")
