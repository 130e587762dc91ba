#!/usr/bin/env bash
# Build, check and time the engine on a GPU machine in one go: the GPU tests, then the
# benchmarks at full width and reduced depth. Logs and JSON reports go to $OUT.
#
# On the device machine (no network) the pure-Python dependencies travel as wheels in .whl/
# (see docs/architecture.md, "GPU runs"); elsewhere, install the project with [engine,dev].
# `python3 -P` keeps the source folder m2agent/ (the cwd) from shadowing the installed package.
#
# Knobs: SKIP_TESTS=1, TESTS="tests/engine/gpu" (paths), TESTS_K="expr" (pytest -k), PYTEST_ARGS="-n 4",
# BENCHES="latency throughput agent"
# (also: kernels with KERNELS_ARGS, context, memory, ab: scripts/ab_decode.py with AB_ARGS), BENCH_LAYERS="6" (several: "6 18"), BENCH_QUANTS="fp8 bf16",
# BENCH_REPEATS=7, BENCH_TP=1 (tensor-parallel size; >1 times our engine on one GPU too, as the
# baseline), BENCH_EP= (expert-parallel size; unset: the default layout), BENCH_BASELINE=1 (0: no transformers baseline), BENCH_STREAMS=1,4,16,
# CONTEXTS="16384 65536", MEMORY_LAYERS=32, BENCH_EXTRA="..." (more bench arguments).
# M2AGENT_PDL=0 (inherited) launches the decode kernels without programmatic dependent launch.
# PACK=/path/all.tgz: after the tests and after each bench, everything in $OUT so far is packed
# into that one file (the device tool returns a few files only, and a run cut short by its time
# limit still returns what finished).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-/tmp/m2agent-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  deps=()
  for wheel in .whl/*.whl; do
    case $(basename "$wheel") in m2agent-*) ;; *) deps+=("$wheel") ;; esac
  done
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "${deps[@]}" || exit 1
  export PYTHONPATH=/tmp/site
fi
# m2agent itself always comes from this tree (a wheel built earlier could be stale): its
# packages laid out as setuptools maps them (engine/ -> m2agent.engine, tools/ -> m2agent.tools).
src=/tmp/m2agent-src
rm -rf "$src" && mkdir -p "$src/m2agent" || exit 1
for entry in m2agent/*; do ln -s "$PWD/$entry" "$src/m2agent/"; done
ln -s "$PWD/engine" "$src/m2agent/engine" && ln -s "$PWD/tools" "$src/m2agent/tools" || exit 1
export PYTHONPATH="$src${PYTHONPATH:+:$PYTHONPATH}"
python3 -P -c 'import m2agent.engine, m2agent.tools; print("m2agent from", m2agent.engine.__file__)' || exit 1

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c 'import sys, torch, transformers, triton; print(sys.version.split()[0], torch.__version__, transformers.__version__, triton.__version__)' | tee -a "$OUT/gpu.txt"

pack() { [ -z "${PACK:-}" ] || tar czf "$PACK" -C "$OUT" . ; }
status=0
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  python3 -P -m pytest -m gpu ${TESTS:-tests/engine/gpu} ${TESTS_K:+-k "$TESTS_K"} ${PYTEST_ARGS:-} \
    -q -p no:cacheprovider -o addopts="" --import-mode=importlib 2>&1 | tee "$OUT/gpu-tests.log" \
    || status=1
  pack
fi

baseline=--baseline
[ "${BENCH_BASELINE:-1}" = 1 ] || baseline=--no-baseline
bench() {  # name, layers, quant, tag, then its arguments
  local name=$1 layers=$2 quant=$3 tag=$4 tp=${BENCH_TP:-1}
  shift 4
  [ "$tp" = 1 ] || tag="$tag-tp$tp"
  tag="$tag${BENCH_EP:+-ep$BENCH_EP}"
  python3 -P -m m2agent bench "$name" --dummy-config minimax-m2 --layers "$layers" \
    --quant "$quant" --tp "$tp" ${BENCH_EP:+--ep "$BENCH_EP"} --json "$OUT/bench-$name-$tag.json" "$@" ${BENCH_EXTRA:-} 2>&1 \
    | tee "$OUT/bench-$name-$tag.log" || status=1
  pack
}
for name in ${BENCHES:-latency throughput agent}; do
  for quant in ${BENCH_QUANTS:-fp8 bf16}; do
    for layers in ${BENCH_LAYERS:-6}; do
      tag="$quant-$layers"
      case $name in
        latency) bench latency "$layers" "$quant" "$tag" --prompt-tokens 512 --new-tokens 128 \
          --repeats "${BENCH_REPEATS:-7}" $baseline ${BENCH_PROFILE:+--profile} ;;
        context) for ctx in ${CONTEXTS:-16384 65536}; do
            bench latency "$layers" "$quant" "$tag-ctx$ctx" --prompt-tokens "$ctx" \
              --new-tokens 64 --repeats 3 --no-baseline
          done ;;
        throughput) bench throughput "$layers" "$quant" "$tag" --streams "${BENCH_STREAMS:-1,4,16}" \
          --prompt-tokens 512 --new-tokens 128 $baseline ;;
        agent) bench agent "$layers" "$quant" "$tag" --prefix-tokens 16384 --new-tokens 512 \
          --repeats 3 ;;
      esac
    done
  done
  case $name in
    kernels) python3 -P -m m2agent bench kernels --json "$OUT/bench-kernels.json" ${KERNELS_ARGS:-} 2>&1 \
      | tee "$OUT/bench-kernels.log" || status=1; pack ;;
    ab) python3 -P scripts/ab_decode.py --json "$OUT/ab-decode.json" ${AB_ARGS:-} 2>&1 \
      | tee "$OUT/ab-decode.log" || status=1; pack ;;
    memory) bench latency "${MEMORY_LAYERS:-32}" fp8 "memory-fp8-${MEMORY_LAYERS:-32}" \
      --prompt-tokens 512 --new-tokens 32 --repeats 1 --kv-tokens 65536 --no-baseline ;;
  esac
done
exit $status
