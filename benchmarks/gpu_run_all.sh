#!/usr/bin/env bash
# The consolidated GPU run (device tool, NVIDIA H200): GPU tests, then every benchmark suite.
# Usage there:  MAMBABOOK_COMMIT=<sha> bash benchmarks/gpu_run_all.sh [suite ...]
# Writes under $OUT: gpu_tests.log, suites.log, results.tar.gz (results/<device>/<suite>.json).
# Copy the JSON back into benchmarks/results/nvidia-h200/ and commit it.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/mambabook-out}
mkdir -p "$OUT/results"
# The machine has torch and triton but no internet: no `pip install -e .`. Lay the package
# out as it installs (lib/ -> mambabook, kernels/ -> mambabook.kernels) on PYTHONPATH.
PKG=$(mktemp -d)
cp -r lib "$PKG/mambabook" && cp -r kernels "$PKG/mambabook/kernels"
export PYTHONPATH="$PKG" MAMBABOOK_RESULTS="$OUT/results"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv > "$OUT/nvidia-smi.txt" 2>&1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" | tee "$OUT/suites.log"

SUITES=("$@")
if [ ${#SUITES[@]} -eq 0 ]; then
  SUITES=(generation_memory attention_scaling rnn_loop decode_step scan selective_state_update selective_scan generation_latency generation_throughput lm_training)
fi
TEST_BUDGET=${TEST_BUDGET:-150}
timeout "$TEST_BUDGET" python3 -m pytest -m gpu tests/kernels tests/lib -q -p no:cacheprovider \
  --continue-on-collection-errors -x 2>&1 | tail -n 60 > "$OUT/gpu_tests.log"
echo "gpu tests: $(tail -n 1 "$OUT/gpu_tests.log")" | tee -a "$OUT/suites.log"
for s in "${SUITES[@]}"; do
  budget=${SUITE_BUDGET:-120}
  echo "== $s (limit ${budget}s)" | tee -a "$OUT/suites.log"
  timeout "$budget" python3 -m mambabook.bench --suite "$s" >> "$OUT/suites.log" 2>&1 \
    || echo "!! suite $s failed or timed out (exit $?)" | tee -a "$OUT/suites.log"
done
tar czf "$OUT/results.tar.gz" -C "$OUT" results
ls -R "$OUT/results" | tee -a "$OUT/suites.log"
