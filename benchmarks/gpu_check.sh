#!/bin/bash
# The prepared device run (one call): build the CUDA extension, run the op tests on CUDA,
# time the kernels and the 32k-token prefill. Logs go to $OUT when set.
# On the project's H200 image the extension must be built with the system gcc (see README).
set -o pipefail
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
cd "$(dirname "$0")/.." && export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"
start=$(date +%s)
CC=/usr/bin/gcc CXX=/usr/bin/g++ python3 setup.py build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - start )) s"
python3 -c "import asl.ops as o, torch; print('ops backend on cuda:', o.backend(torch.device('cuda')))"
python3 -m pytest -q -p no:cacheprovider tests/test_ops.py 2>&1 | tee "$OUT/test_ops.log" | tail -5
python3 benchmarks/ops.py --device cuda 2>&1 | tee "$OUT/ops.log"
python3 benchmarks/gpu_prefill.py benchmarks/configs/qwen2.5-0.5b.json 2>&1 | tee "$OUT/prefill.log"
