#!/bin/bash
# The one prepared device run of issue 23, at most --budget-s (480 s) in all: build the CUDA
# extension, run the CUDA tests, then benchmarks/gpu_suite.py (the ops vs their torch fallback;
# TTFT, TPOT and peak memory of every method on the Llama-3.1-8B shape at 32k, 128k, then 64k
# tokens; transformers' sdpa forward and compiled static-cache decode as the reference).
# Writes suite.json, suite.md and the logs to --out (default $OUT, else runs/gpu-suite).
#
#   bash benchmarks/gpu_suite.sh [--device cpu|cuda] [--tokens N[,N...]] [--config PATH] [--layers N]
#                                [--budget-s S] [--out DIR] [other benchmarks/gpu_suite.py flags]
#
# --device cpu is the dry run: no build and no CUDA tests (recorded as skipped), and unless
# --config is given, qwen2.5-0.5b's shape cut to 8 layers, since the 8B shape in bf16 does not
# fit a CPU run. On the H200 image the extension is built with the system gcc (README).
set -o pipefail
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
cd "$(dirname "$0")/.." && export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
start=$(date +%s)
die() { echo "gpu_suite.sh: $*" >&2; exit 2; }
PY=${PYTHON:-python3}
[ -z "$PYTHON" ] && [ -x .venv/bin/python ] && PY=.venv/bin/python

device="" out=${OUT:-runs/gpu-suite} budget=480 config="" layers="" args=()
while [ $# -gt 0 ]; do
    case $1 in
        --device|--out|--budget-s|--config|--layers) [ $# -ge 2 ] || die "$1 needs a value" ;;&
        --device) device=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --budget-s) budget=$2; shift 2 ;;
        --config) config=$2; shift 2 ;;
        --layers) layers=$2; shift 2 ;;
        *) args+=("$1"); shift ;;
    esac
done
[[ $budget =~ ^[0-9]+$ ]] && [ "$budget" -ge 60 ] ||
    die "--budget-s must be a whole number of seconds >= 60, got '$budget'"
[ -z "$device" ] && device=$($PY -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
[ "$device" = cpu ] || [ "$device" = cuda ] || die "--device must be cpu or cuda, got '$device'"
[ -z "$config" ] || [ -f "$config" ] || die "--config: no such file '$config'"
mkdir -p "$out" || die "--out: cannot create '$out'"
$PY -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda,
      torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"

steps=()
if [ "$device" = cuda ]; then
    t=$(date +%s)
    cc=$( [ -x /usr/bin/gcc ] && echo "CC=/usr/bin/gcc CXX=/usr/bin/g++" )
    if env $cc $PY setup.py build_ext --inplace > "$out/build.log" 2>&1; then
        backend=$($PY -c 'import asl.ops as o; print(o.backend("cuda"))')
        steps+=(--step "build=ok:$(( $(date +%s) - t )) s, ops backend on cuda: $backend")
    else
        tail -20 "$out/build.log"; steps+=(--step "build=failed:see build.log (the ops run their torch fallback)")
    fi
    t=$(date +%s)
    $PY -m pytest -q -p no:cacheprovider tests/test_ops.py tests/test_generation.py -k cuda 2>&1 | tee "$out/cuda_tests.log" | tail -3
    rc=$?; summary=$(tail -1 "$out/cuda_tests.log")
    steps+=(--step "cuda_tests=$( [ $rc = 0 ] && echo ok || echo failed ):${summary//=/} ($(( $(date +%s) - t )) s)")
else
    why="--device cpu: the dry run builds nothing and has no CUDA device to test"
    steps+=(--step "build=skipped:$why" --step "cuda_tests=skipped:$why")
    if [ -z "$config" ]; then
        config=benchmarks/configs/qwen2.5-0.5b.json; layers=${layers:-8}
        echo "CPU dry run: the shape is $config cut to $layers layers (the 8B shape in bf16 does not fit a CPU run)"
    fi
fi
[ -n "$config" ] && args+=(--config "$config")
[ -n "$layers" ] && args+=(--layers "$layers")

# The driver plans within 20 s less than is left (its estimates can be short); the timeout stops it
# 5 s before the budget's end whatever it estimated: what it measured is already in $out.
left=$(( budget - ($(date +%s) - start) ))
[ $left -gt 30 ] || die "only $left s of --budget-s $budget left after the build and the tests"
timeout -s TERM $(( left - 5 )) $PY benchmarks/gpu_suite.py --device "$device" --budget-s $(( left - 20 )) \
    --out "$out" \
    "${steps[@]}" "${args[@]}" 2>&1 | grep --line-buffered -v "Loading weights" | tee "$out/suite.log"
rc=$?
echo "gpu_suite.sh: $(( $(date +%s) - start )) s in all; $out/suite.json, $out/suite.md"
exit $rc
