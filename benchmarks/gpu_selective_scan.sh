#!/bin/bash
# The selective scan on a GPU machine: GPU tests, the cold-start suite, and the suites that
# time the kernel side by side with its anchors. From the repository root:
#   STEP=tests|suites bash benchmarks/gpu_selective_scan.sh
# Optional anchors, when present (not part of the repository): mamba_ssm's CUDA scan built
# into $MAMBA_BUILD (importable as selective_scan_cuda), and an earlier mambabook in
# $MAMBABOOK_PREVIOUS (a folder holding it as mambabook_prev). Logs and JSON go to $OUT.
source "$(dirname "$0")/gpu_common.sh"
export PYTHONPATH=$PKG_PATH${MAMBA_BUILD:+:$MAMBA_BUILD}
case "${STEP:-tests}" in
  tests)
    timeout "${TEST_TIMEOUT:-420}" python3 -m pytest -m gpu tests/kernels -p no:cacheprovider \
      -n "${WORKERS:-8}" -q --durations=8 2>&1 | tee "$OUT/pytest_gpu.log" | tail -n 25
    timeout 300 python3 -m mambabook.bench --suite cold_start --out "$OUT/results" 2>&1 \
      | tee "$OUT/cold_start.log" | tail -n 15 ;;
  suites)
    timeout 120 python3 benchmarks/selective_scan_anchors.py --out "$OUT/anchors.json" \
      > "$OUT/anchors.log" 2>&1; tail -n 5 "$OUT/anchors.log"
    timeout 60 python3 -m mambabook.bench --suite selective_state_update \
      --out "$OUT/results" 2>&1 | tee "$OUT/bench_state_update.log" | tail -n 8
    timeout "${SUITE_TIMEOUT:-300}" python3 -m mambabook.bench --suite selective_scan \
      --out "$OUT/results" 2>&1 | tee "$OUT/bench.log" | tail -n 40 ;;
esac
