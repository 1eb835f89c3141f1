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
map_step() {  # the GPU tests of decoding attention and the models, then the map
  timeout "${TEST_TIMEOUT:-150}" python3 -m pytest -m gpu tests/kernels/test_decode_attention.py \
    tests/lib/test_models.py -p no:cacheprovider -n "${WORKERS:-4}" -q --durations=8 2>&1 \
    | tee "$OUT/pytest_gpu_generation.log" | tail -n 15
  timeout "${SUITE_TIMEOUT:-420}" python3 -m mambabook.bench --suite generation_map 2>&1 \
    | tee "$OUT/bench_generation_map.log" | tail -n 20
}
suites_step() {  # each suite gets SUITE_TIMEOUT seconds, or what is left before $end
  for suite in generation_throughput generation_latency generation_memory; do
    limit=${SUITE_TIMEOUT:-240}
    [ -z "${end:-}" ] || limit=$((end - SECONDS))
    [ "$limit" -gt 20 ] || { echo "no time left for $suite"; continue; }
    timeout "$limit" python3 -m mambabook.bench --suite "$suite" 2>&1 \
      | tee -a "$OUT/bench_generation_suites.log" | tail -n 20
  done
}
case "${STEP:-map}" in
  map) map_step ;;
  suites) suites_step ;;
  all)
    end=$((SECONDS + ${DEADLINE:-585}))
    TEST_TIMEOUT=${TEST_TIMEOUT:-90} SUITE_TIMEOUT=400 map_step
    suites_step ;;
esac
