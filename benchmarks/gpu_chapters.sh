#!/bin/bash
# The chapters executed as notebooks on a GPU machine, each in a fresh kernel with an empty
# Triton cache (a reader's first run); seconds per chapter in $OUT/chapters_gpu.json. The
# chapters read the recorded results in benchmarks/results. From the repository root, with
# the notebook packages as wheels in .whl (jupytext, nbclient, ipykernel, ipywidgets and
# their dependencies that the machine lacks: see the device notes):
#   bash benchmarks/gpu_chapters.sh chapters/07_triton_kernel.md chapters/09_ssd.md
source "$(dirname "$0")/gpu_common.sh"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="$PKG_PATH:/tmp/site" MAMBABOOK_RESULTS="$PWD/benchmarks/results" MPLBACKEND=Agg
timeout "${CHAPTERS_TIMEOUT:-560}" python3 benchmarks/execute_chapters.py \
  --out "$OUT/chapters_gpu.json" "$@" 2>&1 | tee "$OUT/chapters_gpu.log" | tail -n 20
