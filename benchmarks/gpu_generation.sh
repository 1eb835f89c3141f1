#!/bin/bash
# Chapter 8's generation runs on a GPU machine, all at one commit. STEP=map: the `gpu` tests
# of the decoding attention and the models, then the generation_map suite (its cost model:
# about 4 minutes on an H200, 6 at most). STEP=suites: generation_throughput,
# generation_latency and generation_memory re-recorded. Logs in $OUT, JSON in
# $OUT/results/<device>/. STEP=all: both in one call, the suites in what is left of
# DEADLINE seconds (default 585). From the repository root (the copied tree has no .git: the
# commit for the records' provenance comes from MAMBABOOK_COMMIT):
#   MAMBABOOK_COMMIT=<commit> STEP=map bash benchmarks/gpu_generation.sh
#   MAMBABOOK_COMMIT=<commit> STEP=suites bash benchmarks/gpu_generation.sh
source "$(dirname "$0")/gpu_common.sh"
export PYTHONPATH=$PKG_PATH
if [ "${STEP:-map}" = all ]; then
  end=$((SECONDS + ${DEADLINE:-585}))
  STEP=map TEST_TIMEOUT=${TEST_TIMEOUT:-90} SUITE_TIMEOUT=400 bash "$0"
  for suite in generation_throughput generation_latency generation_memory; do
    left=$((end - SECONDS)); [ $left -gt 20 ] || { echo "no time left for $suite"; continue; }
    timeout $left python3 -m mambabook.bench --suite "$suite" 2>&1 \
      | tee -a "$OUT/bench_generation_suites.log" | tail -n 12
  done
  exit
fi
case "${STEP:-map}" in
  map)
    timeout "${TEST_TIMEOUT:-150}" python3 -m pytest -m gpu tests/kernels/test_decode_attention.py \
      tests/lib/test_models.py -p no:cacheprovider -n "${WORKERS:-4}" -q --durations=8 2>&1 \
      | tee "$OUT/pytest_gpu_generation.log" | tail -n 15
    timeout "${SUITE_TIMEOUT:-420}" python3 -m mambabook.bench --suite generation_map 2>&1 \
      | tee "$OUT/bench_generation_map.log" | tail -n 20 ;;
  suites)
    for suite in generation_throughput generation_latency generation_memory; do
      timeout "${SUITE_TIMEOUT:-240}" python3 -m mambabook.bench --suite "$suite" 2>&1 \
        | tee -a "$OUT/bench_generation_suites.log" | tail -n 20
    done ;;
esac
