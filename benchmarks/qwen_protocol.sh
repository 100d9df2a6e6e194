#!/usr/bin/env bash
# The first results of docs/experiments.md: qwen2.5-0.5b, every method in both regimes, the ASL
# tau and FastKV layer sweeps, and the main methods at 8,192 tokens, into ONE resumable folder (so
# every comparison is paired on the same samples and the full cache runs once per sample).
#
# Sized for about 7.5 h on 2 CPU cores: 1,200 + 420 + 280 + 90 calls; measured on that
# run, 8-11 s a call at 4,096 tokens and about 20 s at 8,192 on cores kept free of other work
# (about 6 h in all). Each part resumes where it stopped; the
# folder's config.json refuses a rerun with other settings or other code, so resume it
# from the commit it records (`git worktree add ../asl-run <commit>`), not from a newer one.
#
#   bash benchmarks/qwen_protocol.sh [OUT]      (default runs/qwen-protocol)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-runs/qwen-protocol}
COMMON=(--model qwen2.5-0.5b --budget 1024 --seed 0 --threads 2 --no-plots --out "$OUT")
HARD=kv_retrieval,niah_multikey_2,niah_multikey_3,vt

# 1. 4,096 tokens: four hard tasks and one easy one, 30 samples, both regimes.
"$PY" -m asl.bench "${COMMON[@]}" --lengths 4096 --samples 30 --tasks "$HARD,niah_single_1" \
  --methods full,snapkv,fastkv,gemfilter,asl,asl-2pass,fastkv+snapkv,asl+snapkv
# 2. The sweeps on two hard tasks (asl's default tau 0.7 and fastkv's layer 11 ran in part 1).
"$PY" -m asl.bench "${COMMON[@]}" --lengths 4096 --samples 30 --tasks kv_retrieval,niah_multikey_2 \
  --methods "full,asl(tau=[0.3,0.5,0.9]),fastkv(layer=[5,8,14,17])"
# 3. 8,192 tokens: the main methods on two hard tasks, 20 samples.
"$PY" -m asl.bench "${COMMON[@]}" --lengths 8192 --samples 20 --tasks kv_retrieval,niah_multikey_2 \
  --methods full,fastkv,gemfilter,asl,fastkv+snapkv,asl+snapkv,snapkv
# 4. FastKV at the sweep's best layer (17) on part 1's other tasks, so that the tuned fixed layer
#    meets ASL on all five (added after part 2 showed layer 17 matching the full cache; 90 calls).
"$PY" -m asl.bench "${COMMON[@]}" --lengths 4096 --samples 30 --tasks niah_multikey_3,vt,niah_single_1 \
  --methods "full,fastkv(layer=17)"
# Tables, comparisons and plots of everything the folder holds.
"$PY" -m asl.bench --out "$OUT" --report-only
