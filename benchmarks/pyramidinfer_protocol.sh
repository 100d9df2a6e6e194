#!/usr/bin/env bash
# Issue 20's run: PyramidInfer beside SnapKV and ASL on qwen2.5-0.5b at 4,096 tokens, two hard
# tasks and one easy one, 20 samples, into ONE resumable folder (every comparison paired on the
# same samples). PyramidInfer has no budget: its KV is set by r (the authors' 0.9 keeps ~95% of
# the prompt on average, so r = 0.4 is run too), and the trade-off plot against KV bytes is
# where the methods meet at matched memory; SnapKV and ASL + SnapKV run at two budgets for that.
#
# Sized for about 1.5 h on 2 CPU cores: 20 x 3 x 6 calls at budget 1,024 plus 20 x 3 x 2 at
# 2,048 (480 calls, ~11 s each at 4,096 tokens; PyramidInfer's decode recompresses every 16
# tokens, a little slower). Resume it from the commit its config.json records.
#
#   bash benchmarks/pyramidinfer_protocol.sh [OUT]      (default runs/pyramidinfer)
#   MODEL=smollm2-135m LENGTH=1024 SAMPLES=1 bash benchmarks/pyramidinfer_protocol.sh /tmp/dry   (a dry run)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-runs/pyramidinfer}
COMMON=(--model "${MODEL:-qwen2.5-0.5b}" --lengths "${LENGTH:-4096}" --samples "${SAMPLES:-20}" --seed 0
        --threads 2 --no-plots --out "$OUT" --tasks kv_retrieval,niah_multikey_2,niah_single_1)
PYRAMID="pyramidinfer-prefill(r=[0.9,0.4])+pyramidinfer-decode"

"$PY" -m asl.bench "${COMMON[@]}" --budget 1024 --methods "full,snapkv,asl,asl+snapkv,$PYRAMID"
"$PY" -m asl.bench "${COMMON[@]}" --budget 2048 --methods "full,snapkv,asl+snapkv"
"$PY" -m asl.bench --out "$OUT" --report-only
