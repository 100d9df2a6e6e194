#!/usr/bin/env bash
# Creates (or updates) .venv-kvpress at the repository root: NVIDIA's kvpress in its own
# virtual environment, for benchmarks/peers_kvpress.py. kvpress pins transformers < 5.3 and
# patches transformers' attention functions on import, so it cannot share .venv.
#
#   bash benchmarks/peers_env.sh            # idempotent: does nothing once installed
#   FORCE=1 bash benchmarks/peers_env.sh    # reinstall over the existing venv
#
# torch is installed first, pinned to the machine's CPU build (2.13.0), and every later
# install runs with a constraints file pinning it, so pip never pulls a CUDA torch wheel.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="${KVPRESS_VENV:-$ROOT/.venv-kvpress}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
# Newest kvpress whose requirements resolve with torch 2.13.0 and transformers < 5.3
# (0.5.3-0.5.5 require transformers>=4.56,<5.3; 0.5.5 adds peft>=0.20). 5.2.0 is the newest
# transformers below 5.3.
KVPRESS_VERSION="${KVPRESS_VERSION:-0.5.5}"
TRANSFORMERS_SPEC="${TRANSFORMERS_SPEC:-transformers>=5.0,<5.3}"
MARKER="$VENV/.installed"
STAMP="kvpress==$KVPRESS_VERSION torch==$TORCH_VERSION $TRANSFORMERS_SPEC"

if [[ -f "$MARKER" && "$(cat "$MARKER")" == "$STAMP" && -z "${FORCE:-}" ]]; then
    echo "$VENV is up to date ($STAMP)"
else
    test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
    PIP=("$VENV/bin/python" -m pip)
    CONSTRAINTS="$VENV/constraints.txt"
    echo "torch==$TORCH_VERSION" > "$CONSTRAINTS"
    # 1. torch, the local CPU build (pip's find-links holds torch-2.13.0+cpu; "+cpu" sorts
    #    above a plain 2.13.0, so it is preferred to any CUDA wheel of the same version).
    "${PIP[@]}" install -q -c "$CONSTRAINTS" "torch==$TORCH_VERSION"
    # 2. kvpress and what the worker needs, never touching torch.
    "${PIP[@]}" install -q -c "$CONSTRAINTS" "kvpress==$KVPRESS_VERSION" "$TRANSFORMERS_SPEC" \
        safetensors tokenizers numpy
    echo "$STAMP" > "$MARKER"
fi

"$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
import torch
print("python", __import__("sys").version.split()[0])
for name in ("torch", "transformers", "kvpress", "accelerate", "peft", "tokenizers", "safetensors", "numpy"):
    try:
        print(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name} (not installed)")
print("torch.cuda (built for)", torch.version.cuda)
EOF
