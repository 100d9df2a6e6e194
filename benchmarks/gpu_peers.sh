#!/bin/bash
# The peers run (benchmarks/peers.py) on the device's GPU, up to 32,768 tokens, in one call.
# The machine is offline and takes 64 MiB of files, so: qwen2.5-0.5b's architecture with
# random weights (time and memory only), its real tokenizer carried in gpu_qwen_tok/, and
# kvpress from wheels carried in gpu_wheels/ (used only if it imports there).
# Expects PYTHONPATH to reach wonderwords (gpu_tiny/pylib). Logs and JSON go to $OUT.
set -o pipefail
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
OUT=${OUT:-/tmp/gpu_peers}; mkdir -p "$OUT"
cd "$(dirname "$0")/.." && export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
python3 -c "import sys, torch, transformers; print(sys.version.split()[0], 'torch', torch.__version__, \
'transformers', transformers.__version__, torch.cuda.get_device_name())"
start=$(date +%s)
CC=/usr/bin/gcc CXX=/usr/bin/g++ python3 setup.py build_ext --inplace > "$OUT/build.log" 2>&1 || tail -20 "$OUT/build.log"
echo "build: $(( $(date +%s) - start )) s"
python3 benchmarks/random_checkpoint.py benchmarks/configs/qwen2.5-0.5b.json gpu_qwen_tok /tmp/qwen2.5-0.5b-random \
    --max-positions 40960 || exit 1

# kvpress in its own directory on the path of its worker only (as .venv-kvpress is on the CPU machine).
KV=(--no-kvpress)
py=$(python3 -c "import sys; print(f'py{sys.version_info[0]}{sys.version_info[1]}')")
wheels=$(ls gpu_wheels/*.whl 2>/dev/null | grep -v multiprocess; ls gpu_wheels/multiprocess-*-$py-*.whl 2>/dev/null)
if [ -n "$wheels" ] && python3 -m pip install -q --no-deps --no-index --target /tmp/kvp $wheels > "$OUT/kvpress_install.log" 2>&1; then
    printf '#!/bin/bash\nPYTHONPATH=/tmp/kvp exec python3 "$@"\n' > /tmp/kvpy && chmod +x /tmp/kvpy
    if /tmp/kvpy -c "import kvpress, transformers; print('kvpress', kvpress.__file__, 'transformers', transformers.__version__)" \
        > "$OUT/kvpress_import.log" 2>&1; then KV=(--kvpress-python /tmp/kvpy); fi
fi
tail -3 "$OUT/kvpress_import.log" 2>/dev/null
echo "kvpress: ${KV[*]}"

timeout ${PEERS_TIMEOUT:-420} python3 benchmarks/peers.py --models /tmp/qwen2.5-0.5b-random --random-weights \
    --device cuda --lengths ${LENGTHS:-4096,8192,16384,32768} --tasks passkey,kv_retrieval --samples 1 \
    --repeats 3 --budget 2048 "${KV[@]}" --out "$OUT" 2>&1 | grep -v "Loading weights" | tee "$OUT/peers.log"
