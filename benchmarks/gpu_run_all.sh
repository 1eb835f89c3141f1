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

# suite:seconds, most needed first (a suite past its limit is stopped and the run goes on)
SUITES=("$@")
if [ ${#SUITES[@]} -eq 0 ]; then
  SUITES=(generation_memory:40 attention_scaling:60 generation_throughput:90 generation_latency:60
          lm_training:170 scan:60 decode_step:40 rnn_loop:40 scan_width:40
          selective_state_update:60 selective_scan:240)
fi
TEST_BUDGET=${TEST_BUDGET:-150}
timeout "$TEST_BUDGET" python3 -m pytest -m gpu tests/kernels tests/lib -q -p no:cacheprovider \
  --continue-on-collection-errors 2>&1 | tail -n 60 > "$OUT/gpu_tests.log"
echo "gpu tests: $(tail -n 1 "$OUT/gpu_tests.log")" | tee -a "$OUT/suites.log"
for entry in "${SUITES[@]}"; do
  s=${entry%%:*}; budget=${entry#*:}; [ "$budget" = "$entry" ] && budget=120
  echo "== $s (limit ${budget}s) $(date +%T)" | tee -a "$OUT/suites.log"
  timeout "$budget" python3 -m mambabook.bench --suite "$s" >> "$OUT/suites.log" 2>&1 \
    || echo "!! suite $s failed or timed out (exit $?)" | tee -a "$OUT/suites.log"
  tar czf "$OUT/results.tar.gz" -C "$OUT" results  # after each suite: a killed run keeps what it made
done
ls -R "$OUT/results" | tee -a "$OUT/suites.log"
