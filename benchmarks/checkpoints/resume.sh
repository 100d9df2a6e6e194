#!/usr/bin/env bash
# Resumes the unfinished long runs whose progress is committed here (README.md beside this),
# each from the commit it started at, in the background; logs in runs/. Start of a session:
#
#   make setup qwen && bash benchmarks/checkpoints/resume.sh
#
# THREADS_METHODS: the methods run's threads (default 2; 1 while another run shares the 2 cores).
# Needs a CPU with native bf16 (avx512_bf16 or amx_bf16): the runs are in bf16, and their
# folders refuse a resume in another dtype.
set -euo pipefail
cd "$(dirname "$0")/../.."
CK=benchmarks/checkpoints
if ! grep -qE "avx512_bf16|amx_bf16" /proc/cpuinfo; then
  echo "this CPU has no native bf16: the runs here are bf16 and would refuse float32 (and take ~65x longer)" >&2
  exit 1
fi
# Issue 37 item 7: the 49 methods at 4,096 tokens, 15 samples of each of five tasks (75 samples).
if [[ ! -f docs/results/methods-4096/samples.jsonl ]]; then
  bash benchmarks/long_run.sh c9886c5 runs/methods-4096.log \
    "SAMPLES=15 THREADS=${THREADS_METHODS:-2} bash benchmarks/methods_protocol.sh \$ROOT/$CK/methods-4096"
fi
