#!/usr/bin/env bash
# Resumes the unfinished long runs whose progress is committed here (README.md beside this),
# each from the commit it started at, in the background; logs in runs/. Start of a session:
#
#   make setup qwen && bash benchmarks/checkpoints/resume.sh
#
# THREADS_16K / THREADS_METHODS: threads of each run (1 each while both run on 2 cores).
# Needs a CPU with native bf16 (avx512_bf16 or amx_bf16): both runs are in bf16, and their
# folders refuse a resume in another dtype.
set -euo pipefail
cd "$(dirname "$0")/../.."
CK=benchmarks/checkpoints
if ! grep -qE "avx512_bf16|amx_bf16" /proc/cpuinfo; then
  echo "this CPU has no native bf16: the runs here are bf16 and would refuse float32 (and take ~65x longer)" >&2
  exit 1
fi
# Issue 36: qwen2.5-0.5b at 16,384 tokens, 15 samples of each of three tasks (45 prompts).
if [[ ! -f docs/results/calibration-agreement/calibration-qwen2.5-0.5b-16384.json ]]; then
  bash benchmarks/long_run.sh 5f66c80 runs/adaptivity-16384.log \
    "THREADS=${THREADS_16K:-1} LENGTHS=16384 SAMPLES_16K=15 bash benchmarks/adaptivity_protocol.sh \$ROOT/$CK/adaptivity"
fi
# Issue 37 item 7: the 49 methods at 4,096 tokens, 15 samples of each of five tasks (75 samples).
if [[ ! -f docs/results/methods-4096/samples.jsonl ]]; then
  bash benchmarks/long_run.sh aad8b3c runs/methods-4096.log \
    "SAMPLES=15 THREADS=${THREADS_METHODS:-1} bash benchmarks/methods_protocol.sh \$ROOT/$CK/methods-4096"
fi
