"""What a first call of `mambabook.kernels.selective_scan` costs (chapter 7): compiling.

cold_start: in a fresh process with an empty Triton cache, the wall time of the first
forward, then the first forward+backward at the same shape, then a first forward and a
first forward+backward at a second shape (another B, D and L; same dtype and N), in float32
and bfloat16. One call each, so these are wall-clock times of single calls (the GPU
synchronised), not medians: a cold call happens once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import torch

from ..bench import Record, suite

_FIRST_CALLS = r"""
import json, sys, time
import torch
from mambabook.kernels import selective_scan
from mambabook.suites.selective_scan import make_scan_inputs

dtype = getattr(torch, sys.argv[1])
shapes = json.loads(sys.argv[2])
device = "cuda" if torch.cuda.is_available() else "cpu"


def timed(fn):
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


out = {}
for tag, (B, D, L, N) in zip(("first", "second_shape"), shapes):
    x = make_scan_inputs(B, D, L, N, dtype, device, requires_grad=True)
    out[tag + "_fwd"] = timed(lambda: selective_scan(**x, delta_softplus=True))
    dout = torch.randn(B, D, L, device=device, dtype=dtype)
    out[tag + "_fwd_bwd"] = timed(lambda: torch.autograd.grad(
        selective_scan(**x, delta_softplus=True), list(x.values()), dout))
print(json.dumps(out))
"""


def first_calls(dtype: str, shapes: list[tuple[int, int, int, int]]) -> dict[str, float]:
    """Seconds of each first call, measured in a new process with an empty Triton cache."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, TRITON_CACHE_DIR=cache)
        done = subprocess.run([sys.executable, "-c", _FIRST_CALLS, dtype, json.dumps(shapes)],
                              env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode:
        raise RuntimeError(f"the first calls failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@suite("cold_start")
def cold_start_suite(quick: bool, device, progress: bool = False) -> list[Record]:
    gpu = torch.device(device).type == "cuda" and not quick
    if gpu:  # the suite's scan shape, then a smaller model at an L that is no power of 2
        shapes = [(8, 1536, 4096, 16), (4, 768, 3000, 16)]
    else:  # the interpreter: nothing to compile, tiny shapes
        shapes = [(1, 4, 16, 4), (1, 3, 13, 4)]
    records = []
    for dtype in ("float32", "bfloat16"):
        seconds = first_calls(dtype, shapes)
        for call, s in seconds.items():
            records.append(Record("cold_start", "triton", dict(call=call, dtype=dtype),
                                  s * 1e3, extra=dict(seconds=s, shapes=shapes)))
    return records
