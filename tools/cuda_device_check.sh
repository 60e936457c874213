#!/usr/bin/env bash
# The whole GPU check in one command, for the GPU machine (device tool: carry [".gpu"], OUT set):
#   bash tools/cuda_device_check.sh [BUNDLE]
# Build the bundle here first: make gpu-bundle. Writes tests.log, results.md/json, gemv.txt and gemm.txt to $OUT.
set -uo pipefail
BUNDLE="${1:-.gpu}"
OUT="${OUT:-/tmp/qcompile-gpu}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/$BUNDLE/site" TVM_USE_RUNTIME_LIB=1 PYTHONUNBUFFERED=1 QCOMPILE_GPU_BUNDLE="$PWD/$BUNDLE"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -m pytest -m gpu tests/gpu -q -p no:cacheprovider 2>&1 | tee "$OUT/tests.log"
python3 bench/cuda.py "$BUNDLE" --out "$OUT"
python3 bench/cuda_int4_gemv.py run "$BUNDLE/gemv" 2>&1 | tee "$OUT/gemv.txt"
python3 bench/cuda_gemm.py run "$BUNDLE/gemm" 2>&1 | tee "$OUT/gemm.txt"
