#!/usr/bin/env bash
# Round 3 (kernels) on the device, from this tree's root: each step in STEPS, in order, its
# logs under /tmp/r3/<step>, all packed into $OUT/r3.tgz at the end; a summary on stdout.
#   tests  the GPU tests TESTS_K selects (scripts/gpu_check.sh, PYTEST_ARGS="-n 4")
#   pdl    FP8 batch-1 latency at 6 and 18 layers, this tree (PDL on: the default)
#   nopdl  the same (NOPDL_LAYERS) with M2AGENT_PDL=0, and the eager per-kernel profile (PDL
#          off, so each kernel's time is its own, not time spent waiting for the one before)
#   base   the same as pdl, run from BASE (a tree without this round's kernels)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../../../.."
R=/tmp/r3
mkdir -p "$R"
export PYTHONUNBUFFERED=1
[ -e .whl ] || [ ! -d ../.whl ] || ln -s ../.whl .whl
latency() {  # step, tree, seconds, env...
  local step=$1 tree=$2 limit=$3
  shift 3
  env OUT="$R/$step" SKIP_TESTS=1 BENCHES=latency BENCH_QUANTS=fp8 BENCH_LAYERS="6 18" \
    BENCH_BASELINE=0 "$@" timeout "$limit" bash "$tree/scripts/gpu_check.sh" >"$R/$step.log" 2>&1
  echo "== $step (rc $?)"
  grep -h -E "GPU only|^m2agent engine |^device" "$R/$step"/bench-latency-*.log
}
for step in ${STEPS:-tests pdl nopdl}; do
  case $step in
    tests)
      OUT="$R/tests" PYTEST_ARGS="${PYTEST_ARGS:--n 4}" BENCHES=none timeout "${TESTS_S:-150}" \
        bash scripts/gpu_check.sh >"$R/tests.log" 2>&1
      echo "== tests (rc $?)"
      grep -E "passed|failed|FAILED|Error" "$R/tests.log" | tail -25 ;;
    pdl) latency pdl . "${LAT_S:-90}" BENCH_REPEATS=3 ;;
    nopdl) latency nopdl . "${LAT_S:-90}" BENCH_REPEATS=1 M2AGENT_PDL=0 BENCH_PROFILE=1 \
        BENCH_LAYERS="${NOPDL_LAYERS:-6 18}"
      grep -h -A 22 "Self CUDA" "$R/nopdl"/bench-latency-fp8-6.log | cut -c1-150 ;;
    base) latency base "${BASE:-..}" "${LAT_S:-90}" BENCH_REPEATS=3 ;;
  esac
  tar czf "$OUT/r3.tgz" -C "$R" . 2>/dev/null
done
