"""Run the rows backward twice at B=8, D=1536, N=16, L=4096 (fp32 unless --bf16), for Nsight
Compute to profile its second PASS 2 launch (launches: PASS 1, PASS 2, PASS 1, PASS 2):

    ncu --clock-control none --kernel-name regex:bwd_rows --launch-skip 3 --launch-count 1 \\
        --section SpeedOfLight --section WarpStateStats --section SchedulerStats \\
        --section MemoryWorkloadAnalysis --section InstructionStats --print-details all \\
        python3 benchmarks/experiments/profile_backward.py [--bf16] [--module COPY.py] \\
        [--rows WIDE=1,maxnreg=168]

--rows overrides keys of the dtype's BWD_ROWS launch (integers; 0/1 for the flags).
"""

import importlib.util
import sys

import torch

import mambabook.kernels.selective_scan_kernel as ss
from mambabook.suites.selective_scan import make_scan_inputs

if "--module" in sys.argv:  # a copy of the kernel module instead (e.g. rows_nostore.patch applied)
    path = sys.argv[sys.argv.index("--module") + 1]
    spec = importlib.util.spec_from_file_location("mambabook.kernels.variant_profiled", path)
    ss = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = ss
    spec.loader.exec_module(ss)

dtype = torch.bfloat16 if "--bf16" in sys.argv else torch.float32
if "--rows" in sys.argv:  # e.g. WIDE=1,maxnreg=168 (rows_wide_stores.patch's flag and a cap)
    size = torch.tensor([], dtype=dtype).element_size()
    launch = dict(ss.BWD_ROWS[size])
    for kv in sys.argv[sys.argv.index("--rows") + 1].split(","):
        key, val = kv.split("=")
        launch[key] = int(val) if key in ("BLOCK_D", "T", "R", "num_warps", "maxnreg", "SEV", "LEV", "SCR") else bool(int(val))
    ss.BWD_ROWS = {**ss.BWD_ROWS, size: launch}
x = make_scan_inputs(8, 1536, 4096, 16, dtype, "cuda")
args = (x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], True)
out, _, ckpt = ss._scan_fwd(*args, save_ckpt=True, method="rows")
dout = torch.randn_like(out)
for _ in range(2):
    ss._scan_bwd(dout, *args, ckpt, method="rows")
torch.cuda.synchronize()
