#!/usr/bin/env bash
# One command for a GPU machine: build against this machine's torch, run the test
# suite with CUDA, compute-sanitizer (memcheck, racecheck) on a small forward +
# backward of every kind, the GPU benchmark against torch.nn (cuDNN) and the
# reference path; writes report.md and report.json (plus the benchmark tables)
# into OUT_DIR. Meant to finish well inside 10 minutes on one H100.
#
#   usage: benchmarks/gpu_check.sh OUT_DIR
set -uo pipefail
out=${1:?usage: benchmarks/gpu_check.sh OUT_DIR}
cd "$(dirname "$0")/.."
mkdir -p "$out"
out=$(cd "$out" && pwd)
PY=${PYTHON:-python3}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export RNNFUSED_CUDA=1 MAX_JOBS=${MAX_JOBS:-$(nproc)}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$($PY -c \
  "import torch; print('%d.%d' % torch.cuda.get_device_capability())")}
sanitizer=$(command -v compute-sanitizer || echo "$CUDA_HOME/bin/compute-sanitizer")

names=() statuses=() seconds=()
step() {  # step NAME COMMAND...: run, log to OUT_DIR/NAME.log, record status and time
  local name=$1 start=$SECONDS
  shift
  echo "== $name: $*"
  "$@" >"$out/$name.log" 2>&1
  local status=$?
  names+=("$name") statuses+=("$status") seconds+=($((SECONDS - start)))
  tail -n 5 "$out/$name.log"
  return 0
}

step build $PY -m pip install --no-build-isolation --no-deps -e .
step tests $PY -m pytest -q -p no:cacheprovider tests
step memcheck "$sanitizer" --tool memcheck --error-exitcode 1 $PY benchmarks/gpu_smoke.py
step racecheck "$sanitizer" --tool racecheck --error-exitcode 1 $PY benchmarks/gpu_smoke.py
step bench_fp32 $PY benchmarks/bench.py --device cuda --dtype float32 --out "$out/bench-fp32" \
  --case 100,64,512,512,1,1 --case 100,16,256,256,1,1 --case 100,16,256,256,2,2
step bench_bf16 $PY benchmarks/bench.py --device cuda --dtype bfloat16 --out "$out/bench-bf16" \
  --case 100,16,256,256,1,1 --case 1024,16,768,768,1,1 --no-reference

device=$($PY -c "import torch; print(torch.cuda.get_device_name())" 2>/dev/null || echo unknown)
{
  echo "# rnnfused gpu_check: $device, $(date -u +%Y-%m-%d)"
  echo
  echo "torch $($PY -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)')," \
    "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"
  echo
  echo "| step | status | seconds |"
  echo "| --- | --- | --- |"
  for i in "${!names[@]}"; do
    echo "| ${names[$i]} | $([ "${statuses[$i]}" = 0 ] && echo ok || echo "FAILED (${statuses[$i]})") | ${seconds[$i]} |"
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
for status in "${statuses[@]}"; do [ "$status" = 0 ] || exit 1; done
