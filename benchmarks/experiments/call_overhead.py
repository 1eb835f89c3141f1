"""The library's Python cost per selective_scan call against its GPU time, issue 5
(benchmarks/selective_scan_notes.md, session 13).

At small L the kernel is short enough that the Python around it (argument checks, the
autograd Function, the forward's choice, the launch) can set the pace. Each call is timed
twice in bfloat16 at B=8, D=1536, N=16 with the states forward: 200 calls enqueued behind a
long GPU sleep (so the GPU never waits and the wall time is the CPU's), and do_bench's
median (the GPU's time, or the CPU's where that is longer). Needs a CUDA GPU.

    python3 benchmarks/experiments/call_overhead.py /tmp/call_overhead.json
"""

# ruff: noqa: B023  (each lambda is timed inside its own loop iteration)
import json
import os
import sys
import time

import torch
from lanes_forward import ARGS, forward  # this folder's sibling script
from triton.testing import do_bench

import mambabook.kernels.selective_scan_kernel as ss
from mambabook.kernels import selective_scan
from mambabook.suites.selective_scan import make_scan_inputs


def main():
    os.environ[ss.FORWARD_ENV] = "states"
    rows = []
    for length in (2048, 4096):
        x = make_scan_inputs(8, 1536, length, 16, torch.bfloat16, "cuda")
        calls = {"selective_scan": lambda: selective_scan(*(x[k] for k in ARGS),
                                                          delta_softplus=True),
                 "_scan_fwd": lambda: forward(x, "states")}
        for name, f in calls.items():
            f()
            torch.cuda.synchronize()
            torch.cuda._sleep(int(1e9))  # ~0.5 s of GPU cycles ahead of the calls
            t = time.perf_counter()
            for _ in range(200):
                f()
            cpu = (time.perf_counter() - t) / 200 * 1e3
            torch.cuda.synchronize()
            rows.append(dict(L=length, call=name, cpu_ms_per_call=cpu,
                             do_bench_ms=do_bench(f, warmup=25, rep=100)))
            print(json.dumps(rows[-1]))
    json.dump(rows, open(sys.argv[1], "w"), indent=1)


if __name__ == "__main__":
    main()
