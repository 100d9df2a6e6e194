"""Build script: the package plus its custom ops, the extension asl._C (csrc/).

asl._C is always built from csrc/*.cpp (CPU kernels, with OpenMP as torch uses it). When
torch was built with CUDA and a CUDA toolkit is found (CUDA_HOME / nvcc), the CUDA kernels
of csrc/cuda/*.cu are added. Set ASL_NO_CUDA=1 to build the CPU kernels only.

Build in place with `pip install --no-build-isolation -e .` (the Makefile does). A compile
error fails the install: there is no silent fallback at build time. (At import time,
asl/ops.py falls back to pure torch, with a warning, when asl._C is missing.)
"""
import glob
import os

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))


def _with_cuda() -> bool:
    if os.environ.get("ASL_NO_CUDA", "0") == "1":
        return False
    return torch.version.cuda is not None and CUDA_HOME is not None


def _extensions():
    sources = sorted(glob.glob("csrc/*.cpp", root_dir=HERE))
    # -fno-trapping-math lets -O3 vectorise the csrc loops that select (masks, clamps).
    # Torch 2.13's headers use one C++20 extension (bit-field initialisers) that GCC and nvcc
    # accept in C++17 mode with a warning per file: silenced.
    cxx = ["-O3", "-std=c++17", "-fopenmp", "-fno-trapping-math", "-Wno-c++20-extensions"]
    kwargs = dict(extra_link_args=["-fopenmp"], py_limited_api=True)
    if not _with_cuda():
        return [CppExtension("asl._C", sources, extra_compile_args={"cxx": cxx}, **kwargs)]
    sources += sorted(glob.glob("csrc/cuda/*.cu", root_dir=HERE))
    nvcc = ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-diag-suppress=3306", "-Xcompiler=-Wno-c++20-extensions"]
    return [CUDAExtension("asl._C", sources, extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **kwargs)]


setup(
    ext_modules=_extensions(),
    cmdclass={"build_ext": BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},  # abi3 (requires-python >= 3.10): no pybind11
)
