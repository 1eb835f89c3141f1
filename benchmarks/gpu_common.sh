# Sourced by the benchmarks/gpu_*.sh scripts: the GPU machine's common setup. $OUT for logs
# and JSON (default /tmp/out), the package staged in /tmp/pkg without pip install -e
# (mambabook -> lib, mambabook.kernels -> kernels; $PKG_PATH is the path to put first),
# and the device and versions recorded in $OUT/gpu.txt.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT/results"
rm -rf /tmp/pkg && mkdir -p /tmp/pkg && cp -r lib /tmp/pkg/mambabook \
  && rm -rf /tmp/pkg/mambabook/kernels && cp -r kernels /tmp/pkg/mambabook/kernels
PKG_PATH=/tmp/pkg
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,memory.used --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print(torch.__version__, triton.__version__)" | tee -a "$OUT/gpu.txt"
export MAMBABOOK_RESULTS="$OUT/results"
