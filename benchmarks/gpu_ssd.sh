#!/bin/bash
# Chapter 9's SSD on a GPU machine: the `gpu` tests of ssd_chunk_scan, then the `ssd` suite
# (results in $OUT/results/<device>/ssd.json). From the repository root:
#   MAMBA_SRC=.scratch/mamba bash benchmarks/gpu_ssd.sh
# MAMBA_SRC (optional, not part of the repository): a folder holding mamba_ssm's source as
# mamba_ssm/, and einops as a wheel (*.whl), for the `mamba_chunk_scan_combined` anchor. Its
# package __init__ imports the compiled CUDA scan, so only its subpackages are put on the
# path (under an empty top-level __init__); its Triton SSD needs no build.
source "$(dirname "$0")/gpu_common.sh"
PYPATH=$PKG_PATH
if [ -n "${MAMBA_SRC:-}" ] && [ -d "$MAMBA_SRC/mamba_ssm" ]; then
  cp -r "$MAMBA_SRC/mamba_ssm" /tmp/pkg/mamba_ssm && : > /tmp/pkg/mamba_ssm/__init__.py
  for w in "$MAMBA_SRC"/*.whl; do [ -e "$w" ] && PYPATH="$PYPATH:$(realpath "$w")"; done
fi
export PYTHONPATH=$PYPATH
python3 -c "from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined; \
print('mamba_chunk_scan_combined: imports')" 2>&1 | tail -n 1 | tee -a "$OUT/gpu.txt"
timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -m gpu tests/kernels/test_ssd_chunk_scan.py \
  tests/lib/test_ssd.py -p no:cacheprovider -n "${WORKERS:-4}" -q --durations=8 2>&1 \
  | tee "$OUT/pytest_gpu_ssd.log" | tail -n 15
timeout "${SUITE_TIMEOUT:-300}" python3 -m mambabook.bench --suite ssd 2>&1 \
  | tee "$OUT/bench_ssd.log" | tail -n 30
