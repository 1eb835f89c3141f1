#!/bin/bash
# The H200 run of issue 5's kernels: GPU tests, (optionally) a block-size sweep, the suites.
# Usage on the device machine, from the repository root: TUNE=1 bash benchmarks/gpu_selective_scan.sh
# (TESTS=all|fast|million|none picks the GPU tests; SUITES=0 skips the suites)
# (MAMBABOOK_SCAN_PROVIDERS=triton re-measures only the kernel in the selective_scan suite)
# Writes logs and JSON under $OUT (default /tmp/out).
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
# the package without pip install -e: mambabook -> lib, mambabook.kernels -> kernels
rm -rf /tmp/pkg && mkdir -p /tmp/pkg && cp -r lib /tmp/pkg/mambabook \
  && rm -rf /tmp/pkg/mambabook/kernels && cp -r kernels /tmp/pkg/mambabook/kernels
export PYTHONPATH=/tmp/pkg
if ! python3 -c "import pytest, hypothesis" 2>/dev/null && [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/pkg:/tmp/site
fi
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,memory.used --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print(torch.__version__, triton.__version__)" | tee -a "$OUT/gpu.txt"
if [ "${TUNE:-0}" = 1 ]; then
  timeout 200 python3 benchmarks/tune_selective_scan.py --out "$OUT/tune.json" 2>&1 | tee "$OUT/tune.log"
fi
# The GPU tests compile many launches (each autotuned forward per shape, the lanes backward
# ~1-2 minutes): one after another they take longer than a device call. With pytest-xdist
# (on the H200 image) they run in WORKERS processes: all 31 in 324 s with 12 (session 6).
# TESTS=all (default with xdist) | fast (all but the two L = 1,000,000 tests; default
# without) | million (only those) | none.
if python3 -c "import xdist" 2>/dev/null; then
  PAR="-n ${WORKERS:-12}"; DEFAULT=all
else
  PAR=""; DEFAULT=fast
fi
TESTS=${TESTS:-$DEFAULT}
case "$TESTS" in
  all) K=() ;;
  fast) K=(-k "not million") ;;
  million) K=(-k million) ;;
  *) TESTS=none ;;
esac
if [ "$TESTS" != none ]; then
  timeout "${TEST_TIMEOUT:-420}" python3 -m pytest -m gpu tests/kernels -v -p no:cacheprovider \
    $PAR --durations=10 ${K[@]+"${K[@]}"} 2>&1 | tee "$OUT/pytest_gpu_$TESTS.log" | grep -E "PASS|FAIL|ERROR|passed|failed"
fi
# results land in $OUT/results/nvidia-h200/ (the selective_scan suite also saves after each
# provider, so a run cut short keeps what it measured); copy them to benchmarks/results/
mkdir -p "$OUT/results/nvidia-h200"
export MAMBABOOK_RESULTS="$OUT/results"
if [ "${SUITES:-1}" = 1 ]; then
  timeout 60 python3 -m mambabook.bench --suite selective_state_update \
    --out "$OUT/results/nvidia-h200" 2>&1 | tee "$OUT/bench_state_update.log"
  timeout "${SUITE_TIMEOUT:-270}" python3 -m mambabook.bench --suite selective_scan \
    --out "$OUT/results/nvidia-h200" 2>&1 | tee "$OUT/bench.log"
fi
