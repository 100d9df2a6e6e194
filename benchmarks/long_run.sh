#!/usr/bin/env bash
# Runs a long, resumable command in the background from a frozen worktree of one commit, so
# that editing the checkout does not change the code it runs (a run folder's config, and a
# calibration's partial file, refuse a resume under other library code).
#
#   bash benchmarks/long_run.sh COMMIT LOG command...
#
# The worktree is runs/wt-COMMIT (created if missing, with this checkout's built extension
# and .venv); the command runs there with PY set to this checkout's python. Give it OUT paths
# under benchmarks/checkpoints/ (absolute, or relative to this checkout) so its progress can
# be committed: a new session's checkout holds only what landed, and runs/ is not kept.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -lt 3 ]]; then echo "usage: bash benchmarks/long_run.sh COMMIT LOG command..." >&2; exit 2; fi
COMMIT=$1 LOG=$2; shift 2
ROOT=$PWD
WT=runs/wt-$COMMIT
if [[ ! -d $WT ]]; then
  git worktree add -f "$WT" "$COMMIT" >/dev/null
  cp asl/_C*.so "$WT/asl/" 2>/dev/null || true  # the built ops, where they were built
  ln -s "$ROOT/.venv" "$WT/.venv"
  if [[ -d .venv-kvpress ]]; then ln -s "$ROOT/.venv-kvpress" "$WT/.venv-kvpress"; fi
fi
mkdir -p "$(dirname "$LOG")"
LOG=$(realpath "$LOG")
cd "$WT"
PYTHONPATH=$PWD PY=$ROOT/.venv/bin/python ROOT=$ROOT nohup bash -c "$*" >> "$LOG" 2>&1 &
echo "started from $WT (pid $!), log $LOG"
