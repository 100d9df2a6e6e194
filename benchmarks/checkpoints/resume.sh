#!/usr/bin/env bash
# Resumes the unfinished long runs whose progress is committed here (README.md beside this),
# each from the commit it started at, in the background; logs in runs/. Start of a session:
#
#   make setup qwen && bash benchmarks/checkpoints/resume.sh
#
# The runs so far were in bf16 and needed a CPU with native bf16 (avx512_bf16 or amx_bf16): a
# folder refuses a resume in another dtype, and float32 would take ~65x longer. Each unfinished
# run is one block:
#
#   if [[ ! -f docs/results/<name>/samples.jsonl ]]; then
#     grep -qE "avx512_bf16|amx_bf16" /proc/cpuinfo || { echo "<name> needs native bf16" >&2; exit 1; }
#     bash benchmarks/long_run.sh <commit> runs/<name>.log "<command writing \$ROOT/benchmarks/checkpoints/<name>>"
#   fi
set -euo pipefail
cd "$(dirname "$0")/../.."
# None is unfinished now. The last one, issue 37's methods run (from c9886c5), finished on
# 2026-12-07 and is docs/results/methods-4096.
echo "no unfinished run to resume (benchmarks/checkpoints/README.md)"
