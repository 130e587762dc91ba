#!/usr/bin/env bash
# Build, check and time the engine on a GPU machine in one go: the GPU tests, then
# `m2agent bench latency` at full width and reduced depth. Logs and JSON go to $OUT.
#
# On the device machine (no network) the pure-Python dependencies travel as wheels in .whl/
# (see docs/architecture.md, "GPU runs"); elsewhere, install the project with [engine,dev].
# `python3 -P` keeps the source folder m2agent/ (the cwd) from shadowing the installed package.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-/tmp/m2agent-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c 'import sys, torch, transformers, triton; print(sys.version.split()[0], torch.__version__, transformers.__version__, triton.__version__)' | tee -a "$OUT/gpu.txt"

status=0
[ "${SKIP_TESTS:-0}" = 1 ] || python3 -P -m pytest -m gpu tests/engine/gpu -q -p no:cacheprovider -o addopts="" \
  --import-mode=importlib 2>&1 | tee "$OUT/gpu-tests.log" || status=1

for layers in ${BENCH_LAYERS:-6 4}; do
  python3 -P -m m2agent bench latency --dummy-config minimax-m2 --layers "$layers" \
    --prompt-tokens 512 --new-tokens 128 --repeats ${BENCH_REPEATS:-7} --json "$OUT/bench-latency-$layers.json" \
    2>&1 | tee "$OUT/bench-latency-$layers.log" || status=1
done
exit $status
