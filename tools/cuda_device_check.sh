#!/usr/bin/env bash
# The whole GPU check in one command, for the GPU machine (device tool: carry [".gpu"], OUT set):
#   bash tools/cuda_device_check.sh [BUNDLE]
# Build the bundle here first: make gpu-bundle. Writes gpu.txt, gemm.txt, gemv.txt, tests.log and e2e.log
# to $OUT (and probe.log, ncu_*.txt when PROBE or NCU name cases or kernels). The Must-show kernels come
# first; every step has its own time limit (STEP_S seconds), so that one slow step leaves the others' results.
set -uo pipefail
BUNDLE="${1:-.gpu}"
OUT="${OUT:-/tmp/qcompile-gpu}"
STEP_S="${STEP_S:-120}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD/$BUNDLE/site" TVM_USE_RUNTIME_LIB=1 PYTHONUNBUFFERED=1 QCOMPILE_GPU_BUNDLE="$PWD/$BUNDLE"
# TVM's CUDA runtime needs libcudart.so.13: the toolkit's, or the one torch's wheels bring.
CUDART_DIRS=$(python3 -c "import glob, os, site; print(':'.join(sorted({os.path.dirname(p) for d in site.getsitepackages() + ['/usr/local/cuda/lib64', '/usr/local/cuda/lib'] for p in glob.glob(d + '/libcudart.so.13') + glob.glob(d + '/nvidia/**/libcudart.so.13', recursive=True)})))")
export LD_LIBRARY_PATH="${CUDART_DIRS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

STEPS="${STEPS:-gemm gemv tests e2e}"  # which of the steps below to run

step() {  # step NAME LOG COMMAND...: run with a time limit, log its output and its seconds
    local name=$1 log=$2 start=$SECONDS
    shift 2
    [[ " $STEPS probe ncu " == *" ${log%%[._]*} "* ]] || return 0
    echo "== $name"
    timeout "$STEP_S" "$@" 2>&1 | tee -a "$OUT/$log"
    echo "== $name: exit ${PIPESTATUS[0]}, $((SECONDS - start)) s" | tee -a "$OUT/$log"
}

nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv | tee "$OUT/gpu.txt"
echo "libcudart dirs: $CUDART_DIRS" | tee -a "$OUT/gpu.txt"
step "int8 GEMM" gemm.txt python3 bench/cuda/gemm.py run "$BUNDLE/gemm"
step "weight-only GEMV" gemv.txt python3 bench/cuda/int4_gemv.py run "$BUNDLE/gemv"
step "gpu tests" tests.log python3 -m pytest -m gpu tests/gpu -q -rfE -p no:cacheprovider -n 4
if [ -n "${PROBE:-}" ]; then  # cases to run step by step (tools/cuda_probe.py); a crash is rerun under cuda-gdb
    step "probe" probe.log python3 tools/cuda_probe.py $PROBE
    if [ "$(tail -1 "$OUT/probe.log" | grep -o 'exit [0-9]*')" != "exit 0" ]; then
        step "probe backtrace" probe.log cuda-gdb -q -batch -ex run -ex bt --args python3 tools/cuda_probe.py $PROBE
    fi
fi
step "end to end" e2e.log python3 bench/cuda/end_to_end.py "$BUNDLE"
if [ -n "${NCU:-}" ]; then  # Nsight Compute on the first kernel of each named bench run: NCU="gemm:NAME gemv:NAME"
    declare -A BENCH=([gemm]=bench/cuda/gemm.py [gemv]=bench/cuda/int4_gemv.py)
    for spec in $NCU; do
        step "ncu $spec" "ncu_${spec%%:*}.txt" ncu --clock-control none --section SpeedOfLight --section Occupancy \
            --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis_Tables \
            --section ComputeWorkloadAnalysis -k regex:main_kernel -c 1 \
            python3 "${BENCH[${spec%%:*}]}" run "$BUNDLE/${spec%%:*}" --only "${spec#*:}" --number 1 --repeat 1
    done
fi
