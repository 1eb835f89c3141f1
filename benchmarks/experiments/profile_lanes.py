"""Run a lanes kernel twice at B=8, D=1536, N=16, L=4096, for Nsight Compute to profile the
second launch: the lanes forward (``fwd``, its fastest bf16 launch unless a JSON launch is
given), the opt-in lanes backward (``bwd``, BWD_LANES unless given) or the states forward
(``states``, NL=4, T=16 unless given; ``--kernel-name regex:fwd_states``), in fp32 or bf16.
Session 6's profiles (benchmarks/results/nvidia-h200/profile_lanes.json) came from

    NCU="ncu --clock-control none --launch-skip 1 --launch-count 1 --section SourceCounters \\
         --section WarpStateStats --section LaunchStats --section Occupancy \\
         --section SpeedOfLight --section ComputeWorkloadAnalysis \\
         --section MemoryWorkloadAnalysis --import-source no"
    $NCU --kernel-name regex:fwd_lanes -o fwd_bf16 python3 benchmarks/experiments/profile_lanes.py fwd bf16
    ncu -i fwd_bf16.ncu-rep --page details > fwd_bf16_details.txt
    ncu -i fwd_bf16.ncu-rep --page source --print-source sass --csv > fwd_bf16_sass.csv
    python3 benchmarks/experiments/ncu_summary.py fwd_bf16_details.txt fwd_bf16_sass.csv

(and the same with ``regex:bwd_lanes`` and ``bwd fp32``). Session 7's profiles of the fp32
forward and two variants of it (``lanes_variants.py``) used the same NCU line, with

    python3 benchmarks/experiments/profile_lanes.py fwd fp32 - [/tmp/rerun.py | /tmp/v2.py]

(``-``: the default launch, CPW=2, runs of 16, 128 registers).
"""

import json
import sys

import torch
from forward_layouts import DTYPES  # this folder's sibling scripts
from lanes_forward import ARGS

import mambabook.kernels.selective_scan_kernel as ss
from mambabook.suites.selective_scan import make_scan_inputs

kind, dname = sys.argv[1], sys.argv[2]
launch = json.loads(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[3] != "-" else None
if len(sys.argv) > 4:  # a variant of the kernel module (lanes_variants.py), forward only
    from lanes_variants import load_variant

    ss = load_variant("profiled", sys.argv[4])
x = make_scan_inputs(8, 1536, 4096, 16, DTYPES[dname], "cuda")
args = (*(x[k] for k in ARGS), True)  # softplus
if kind == "states":  # the states forward (session 12): launch {"NL": .., "T": ..}
    ss.STATES_FIXED = launch or dict(NL=4, T=16)
    for _ in range(2):
        ss._scan_fwd(*args, save_ckpt=False, method="states")
elif kind == "fwd":
    ss.LANES_FIXED = launch or dict(CPW=2, T=16, maxnreg=128)
    for _ in range(2):
        ss._scan_fwd(*args, save_ckpt=False, method="lanes")
else:
    ss.BWD_LANES = launch or ss.BWD_LANES
    out, _, ckpt = ss._scan_fwd(*args, save_ckpt=True, method="rows")
    dout = torch.randn_like(out)
    for _ in range(2):
        ss._scan_bwd(dout, *args, ckpt, method="lanes")
torch.cuda.synchronize()
