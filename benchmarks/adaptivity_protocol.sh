#!/usr/bin/env bash
# Issue 36 item 3, the length axis: for each length, a calibration whose records keep every
# prompt's oracle outcomes, ASL ratios and the other rules' signals (half the samples held
# out), then benchmarks/adaptivity.py over all of them: per length, every rule against the best
# fixed layer and the oracle, and transfer across tasks. Resumable: each calibrate resumes its
# own partial file, and a finished length is skipped.
#
#   bash benchmarks/adaptivity_protocol.sh runs/adaptivity                       # qwen2.5-0.5b, 2k..16k
#   MODEL=smollm2-135m LENGTHS=8192 bash benchmarks/adaptivity_protocol.sh runs/adaptivity
#   LENGTHS=1024 SAMPLES=2 MODEL=smollm2-135m bash benchmarks/adaptivity_protocol.sh /tmp/dry   (a dry run)
#
# Sizing on 2 CPU cores in bf16 (qwen2.5-0.5b): about 1.5 min per prompt at 4,096 tokens (the
# oracle is ~3 prefills), 3 tasks x SAMPLES prompts per length; 30 samples is ~2.3 h at 4,096,
# longer at 8k and 16k, where SAMPLES_16K (default 15) applies. In float32 (no native bf16)
# several times that.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MODEL=${MODEL:-qwen2.5-0.5b}
OUT=${1:-runs/adaptivity}
LENGTHS=${LENGTHS:-2048 4096 8192 16384}
SAMPLES=${SAMPLES:-30}
TASKS=${TASKS:-kv_retrieval,niah_multikey_2,niah_single_1}
mkdir -p "$OUT"
files=()
for LENGTH in $LENGTHS; do
  n=$SAMPLES
  if [[ $LENGTH -ge 16384 ]]; then n=${SAMPLES_16K:-15}; fi
  CAL="$OUT/calibration-$MODEL-$LENGTH.json"
  if [[ ! -f "$CAL" ]]; then
    "$PY" -m asl.bench calibrate --model "$MODEL" --tasks "$TASKS" --lengths "$LENGTH" --samples "$n" --seed 1 \
      --select-tokens "${SELECT:-1024}" --agreement "${AGREEMENT:-0.9}" --threads "${THREADS:-2}" --out "$CAL"
  fi
  files+=("$CAL")
done
"$PY" benchmarks/adaptivity.py "${files[@]}" --agreement "${AGREEMENT:-0.9}" --out "$OUT"
