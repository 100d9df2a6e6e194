#!/usr/bin/env bash
# Issue 21's run for one model: calibrate ASL's tau on seed 1's samples, then the held-out check
# on seed 0's: the calibrated tau beside the paper's 0.3, the hand-set `asl` (0.7), FastKV and the
# selection-layer oracle, at 4,096 tokens on two hard tasks and one easy one, into ONE resumable
# folder (paired on the same samples; the oracle scatter and the layers-lost figures come from it).
#
# The tasks, length, seed and budget are pyramidinfer_protocol.sh's, so on qwen2.5-0.5b the two
# scripts can share a folder (full and asl then run once per sample for both):
#   bash benchmarks/pyramidinfer_protocol.sh runs/qwen-4096
#   MODEL=qwen2.5-0.5b bash benchmarks/calibration_protocol.sh runs/qwen-4096
#   MODEL=smollm2-135m bash benchmarks/calibration_protocol.sh runs/smollm2-4096
#   MODEL=smollm2-135m LENGTH=1024 CAL_SAMPLES=1 SAMPLES=1 bash benchmarks/calibration_protocol.sh /tmp/dry  (a dry run)
#
# The calibration file goes into the folder, not into asl/calibration/: a bundled file would
# change what `asl` means halfway through the folder (the resume would refuse). Bundle it after.
# The held-out part passes it with --calibration, so bundled files do not change the run.
# Sizing on 2 CPU cores (qwen2.5-0.5b at 4,096): the calibration ~35 s per prompt (the oracle is
# ~4.6 prefills), 24 prompts; the held-out part ~70 s per sample beside a folder that already
# holds full and asl, 60 samples. smollm2-135m takes about a quarter of that.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MODEL=${MODEL:-qwen2.5-0.5b}
OUT=${1:-runs/calibration-$MODEL}
LENGTH=${LENGTH:-4096}
TASKS=kv_retrieval,niah_multikey_2,niah_single_1
mkdir -p "$OUT"
CAL="$OUT/calibration-$MODEL.json"

if [[ ! -f "$CAL" ]]; then
  "$PY" -m asl.bench calibrate --model "$MODEL" --tasks "$TASKS" --lengths "$LENGTH" \
    --samples "${CAL_SAMPLES:-8}" --seed 1 --select-tokens 1024 --agreement 0.9 --threads 2 --out "$CAL"
fi
# Plain `asl` runs with the folder's calibration file (--calibration); beside it the paper's 0.3
# and the hand-set 0.7, leaving out a value the calibration already has. (The published runs, at
# fbe0934, ran before the files were bundled: there plain `asl` was the hand-set 0.7 and the
# calibrated tau an `asl(tau=...)`.)
TAUS=$("$PY" - "$CAL" <<'EOF'
import json, sys
from asl.calibration import FALLBACK_TAU, PAPER_TAU
data = json.load(open(sys.argv[1]))
taus = [t for t in dict.fromkeys([PAPER_TAU, FALLBACK_TAU.get(data["model"], 0.7)]) if t != data["asl"]["tau"]]
print(",".join(map(str, taus)))
EOF
)
echo "calibration_protocol: $MODEL's calibrated tau is in $CAL (plain asl); held-out taus [$TAUS] beside it"
"$PY" -m asl.bench --model "$MODEL" --lengths "$LENGTH" --samples "${SAMPLES:-20}" --seed 0 --budget 1024 \
  --threads 2 --no-plots --out "$OUT" --tasks "$TASKS" --calibration "$CAL" \
  --methods "full,asl,asl(tau=[$TAUS]),fastkv,oracle"
"$PY" -m asl.bench --out "$OUT" --report-only
