#!/usr/bin/env bash
# Resumes the unfinished long runs whose progress is committed here (README.md beside this),
# each from the commit it started at, in the background; logs in runs/. Start of a session:
#
#   make setup qwen && bash benchmarks/checkpoints/resume.sh
#
# The runs so far were in bf16 and needed a CPU with native bf16 (avx512_bf16 or amx_bf16): a
# folder refuses a resume in another dtype. Each unfinished run is one block:
#
#   if [[ ! -f docs/results/<name>/samples.jsonl ]]; then
#     need_bf16
#     bash benchmarks/long_run.sh <commit> runs/<name>.log "<command writing \$ROOT/$CK/<name>>"
#   fi
set -euo pipefail
cd "$(dirname "$0")/../.."
CK=benchmarks/checkpoints
need_bf16() {
  if ! grep -qE "avx512_bf16|amx_bf16" /proc/cpuinfo; then
    echo "this CPU has no native bf16: the runs here are bf16 and would refuse float32 (and take ~65x longer)" >&2
    exit 1
  fi
}
# None is unfinished now. The last one, issue 37's methods run (from c9886c5), finished on
# 2026-12-07 and is docs/results/methods-4096.
echo "no unfinished run to resume (benchmarks/checkpoints/README.md)"
