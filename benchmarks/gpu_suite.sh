#!/usr/bin/env bash
# The whole GPU check in one call (for the rare, short GPU sessions): the gpu-marked tests and
# every GPU benchmark, each under its own time limit, then one table of what ran and how long.
# Total budget: under 8 minutes on one H100 / H200. Usage (from the repo root, venv built):
#   bash benchmarks/gpu_suite.sh [OUT_DIR]        # logs and a summary in OUT_DIR (default $OUT or out/gpu)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-${OUT:-out/gpu}}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
rows=()

step() {  # step NAME SECONDS CMD...
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$? dt=$((SECONDS - t0))
  local status=ok
  [ $rc -eq 124 ] && status="timeout (${limit}s)"
  [ $rc -ne 0 ] && [ $rc -ne 124 ] && status="failed (rc $rc)"
  rows+=("| $name | $status | ${dt}s | $OUT/$name.log |")
  echo "== $name: $status in ${dt}s"
}

"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())" \
  | tee "$OUT/device.txt" || { echo "no CUDA device: nothing to run"; exit 1; }

step gpu_tests        150 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/gpu
step sae_train_paper  120 "$PY" benchmarks/sae_train.py --device cuda --preset paper
step realign_1Mx4096   90 "$PY" benchmarks/realign.py --device cuda
step capture_gpu7b     75 "$PY" benchmarks/capture.py --preset gpu7b --device cuda
step analysis_paper    45 "$PY" benchmarks/analysis.py --c 32768 --d 4096 --k 50 --tokens 1000000 --pairs 100000 --no-dense

{
  echo "## GPU suite ($(cat "$OUT/device.txt" | tail -1), $(date -u +%Y-%m-%dT%H:%MZ))"
  echo
  echo "| step | status | time | log |"
  echo "|---|---|---:|---|"
  printf '%s\n' "${rows[@]}"
  echo
  for f in sae_train_paper realign_1Mx4096 capture_gpu7b analysis_paper; do
    echo "### $f"
    echo '```'
    tail -n 25 "$OUT/$f.log"
    echo '```'
  done
  echo "### gpu_tests"
  echo '```'
  tail -n 5 "$OUT/gpu_tests.log"
  echo '```'
} | tee "$OUT/summary.md"
