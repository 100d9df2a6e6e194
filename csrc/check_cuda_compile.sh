#!/usr/bin/env bash
# Compile-only check of the CUDA kernels csrc/cuda/*.cu: this machine's nvcc, torch's headers
# and the flags torch's BuildExtension gives nvcc (COMMON_NVCC_FLAGS). No GPU needed, and a
# CPU-only torch will do (its wheel ships the ATen/c10 CUDA headers). Exits non-zero on any
# compile error; exits 0 with a message when nvcc is absent. A CPU wheel lacks one generated
# header, c10/cuda/impl/cuda_cmake_macros.h (on Linux it only defines
# C10_CUDA_BUILD_SHARED_LIBS, which matters on Windows): C10_CUDA_NO_CMAKE_CONFIGURE_FILE skips it.
#   usage: csrc/check_cuda_compile.sh [python]     (default: $PYTHON, else .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-${PYTHON:-.venv/bin/python}}
NVCC=${NVCC:-$(command -v nvcc || true)}
if [ -z "$NVCC" ] && [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]; then NVCC="${CUDA_HOME:-/usr/local/cuda}/bin/nvcc"; fi
if [ -z "$NVCC" ]; then
  echo "check_cuda_compile: nvcc not found (set NVCC or CUDA_HOME): skipped"
  exit 0
fi
read -r -a FLAGS <<<"$("$PY" -c '
import sysconfig
from torch.utils.cpp_extension import COMMON_NVCC_FLAGS, include_paths
print(" ".join([f"-I{p}" for p in include_paths()] + ["-I" + sysconfig.get_paths()["include"]] + COMMON_NVCC_FLAGS))
')"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
status=0
for src in csrc/cuda/*.cu; do
  if "$NVCC" -c "$src" -o "$out/$(basename "$src").o" -std=c++17 -O3 -Xcompiler -fPIC -Xcompiler -Wno-c++20-extensions -diag-suppress 3306 "${FLAGS[@]}" \
      -DTORCH_EXTENSION_NAME=_C -DTORCH_API_INCLUDE_EXTENSION_H -DPy_LIMITED_API=0x030A0000 \
      -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE; then
    echo "check_cuda_compile: ok   $src"
  else
    echo "check_cuda_compile: FAIL $src"
    status=1
  fi
done
exit $status
