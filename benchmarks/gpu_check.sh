#!/usr/bin/env bash
# One command for a GPU machine: build against this machine's torch, run the CUDA
# tests, compute-sanitizer (memcheck, racecheck) on a small forward + backward of
# every kind, the GPU benchmark against torch.nn (cuDNN) and the reference path, a
# profile of one small size (where a step's time goes);
# writes report.md and report.json (plus every step's log and the benchmark tables)
# into OUT_DIR. Sized for a short lease: about 6 minutes on one H100/H200 with 16
# CPU cores; every step has a time limit (seconds, below; 590 in all) so that the
# report is always written.
#
#   usage: benchmarks/gpu_check.sh OUT_DIR
#   env:   PYTHON (python3), TESTS (pytest selection, default: the CUDA tests),
#          BENCH=0 skips the benchmark, SANITIZE=0 skips compute-sanitizer,
#          PROFILE=0 skips the profile (benchmarks/gpu_profile.py)
set -uo pipefail
out=${1:?usage: benchmarks/gpu_check.sh OUT_DIR}
cd "$(dirname "$0")/.."
mkdir -p "$out"
out=$(cd "$out" && pwd)
PY=${PYTHON:-python3}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export RNNFUSED_CUDA=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$($PY -c \
  "import torch; print('%d.%d' % torch.cuda.get_device_capability())")}
sanitizer=$(command -v compute-sanitizer || echo "$CUDA_HOME/bin/compute-sanitizer")
# pytest-xdist and pytest-timeout when installed: the CUDA tests on up to 8 workers.
workers=$(( $(nproc) / 2 > 8 ? 8 : ($(nproc) / 2 > 1 ? $(nproc) / 2 : 1) ))
pytest_args=(-v -p no:cacheprovider --continue-on-collection-errors)
$PY -c "import xdist" 2>/dev/null && pytest_args+=(-n "$workers")
$PY -c "import pytest_timeout" 2>/dev/null && pytest_args+=(--timeout 150)

names=() statuses=() seconds=()
record() {  # record NAME STATUS SECONDS
  names+=("$1") statuses+=("$2") seconds+=("$3")
  echo "== $1: status $2 after $3 s"
  tail -n 4 "$out/$1.log"
}
step() {  # step NAME LIMIT_S COMMAND...: run with a time limit, log to OUT_DIR/NAME.log
  local name=$1 limit=$2 start=$SECONDS
  shift 2
  echo "== $name: $*"
  timeout --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
  record "$name" $? $((SECONDS - start))
}

nvidia-smi >"$out/nvidia-smi.log" 2>&1
step build 150 $PY setup.py -q build_ext --inplace
if [ "${statuses[0]}" = 0 ]; then
  # A second, static libstdc++ inside _C crashes every error message that prints a
  # number (seen with one image's /opt/gcc g++; setup.py links the shared one first).
  step libstdcxx 30 bash -c "! nm -C --defined-only rnnfused/_C*.so | grep -m1 'basic_ostream.*_M_insert<long>'"
  # The tests and compute-sanitizer side by side: neither is timed.
  start=$SECONDS
  if [ "${SANITIZE:-1}" != 0 ]; then
    timeout --kill-after=10 220 "$sanitizer" --tool memcheck --error-exitcode 1 \
      $PY benchmarks/gpu_smoke.py >"$out/memcheck.log" 2>&1 &
    memcheck=$!
    timeout --kill-after=10 220 "$sanitizer" --tool racecheck --error-exitcode 1 \
      $PY benchmarks/gpu_smoke.py >"$out/racecheck.log" 2>&1 &
    racecheck=$!
  fi
  RNNFUSED_REQUIRE_EXTENSION=1 timeout --kill-after=10 220 $PY -m pytest "${pytest_args[@]}" \
    --junitxml "$out/tests.xml" -k "${TESTS:-cuda}" tests \
    >"$out/tests.log" 2>&1
  record tests $? $((SECONDS - start))
  if [ "${SANITIZE:-1}" != 0 ]; then
    wait $memcheck; record memcheck $? $((SECONDS - start))
    wait $racecheck; record racecheck $? $((SECONDS - start))
  fi
  if [ "${BENCH:-1}" != 0 ]; then
    # Short timings: the GPU's times settle within a few runs.
    quick=(--warmup 0.3 --min-time 0.3 --rounds 2 --min-runs 5)
    step bench_fp32 120 $PY benchmarks/bench.py --device cuda --dtype float32 "${quick[@]}" \
      --out "$out/bench-fp32" --case 100,64,512,512,1,1 --case 100,16,256,256,1,1 \
      --case 100,16,256,256,2,2
    step bench_bf16 60 $PY benchmarks/bench.py --device cuda --dtype bfloat16 "${quick[@]}" \
      --out "$out/bench-bf16" --case 100,16,256,256,1,1 --case 1024,16,768,768,1,1 --no-reference
  fi
  # Kernel tables and wall time per step, rnnfused and cuDNN, T100 B16 H256 float32.
  [ "${PROFILE:-1}" != 0 ] && step profile 40 $PY benchmarks/gpu_profile.py
fi

device=$($PY -c "import torch; print(torch.cuda.get_device_name())" 2>/dev/null || echo unknown)
{
  echo "# rnnfused gpu_check: $device, $(date -u +%Y-%m-%d)"
  echo
  echo "torch $($PY -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)')," \
    "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"
  echo
  echo "| step | status | seconds | last line of its log |"
  echo "| --- | --- | --- | --- |"
  for i in "${!names[@]}"; do
    echo "| ${names[$i]} | $([ "${statuses[$i]}" = 0 ] && echo ok || echo "FAILED (${statuses[$i]})")" \
      "| ${seconds[$i]} | $(grep -v '^\s*$' "$out/${names[$i]}.log" | tail -n 1 | tr '|' '/' | cut -c1-160) |"
  done
  for table in "$out"/bench-*/bench.md; do
    [ -f "$table" ] && { echo; cat "$table"; }
  done
} >"$out/report.md"
{
  printf '{"device": "%s", "steps": [' "$device"
  for i in "${!names[@]}"; do
    [ "$i" -gt 0 ] && printf ', '
    printf '{"name": "%s", "status": %s, "seconds": %s}' "${names[$i]}" "${statuses[$i]}" "${seconds[$i]}"
  done
  printf ']}\n'
} >"$out/report.json"
cat "$out/report.md"
[ "${#names[@]}" -gt 1 ] || exit 1
for status in "${statuses[@]}"; do [ "$status" = 0 ] || exit 1; done
