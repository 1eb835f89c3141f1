# ruff: noqa: B023  (each lambda is timed inside its own loop iteration)
"""The lanes forward (one warp per channel, lanes along time) against the rows and tile
forwards on the H200, issue 5; chapter 7 and benchmarks/selective_scan_notes.md.

Times, side by side in one run, at B=8, D=1536, N=16, time-varying B and C, with D, z,
delta_bias and softplus: the forward without checkpoints at each L, the forward with the
backward's checkpoints at 4K, and forward+backward at 4K (autograd.grad, the rows
backward) with each forward; the lanes forward with runs of 16 or 32 steps per lane and
with the next chunk's loads issued early or not. Every lanes result is checked against the
loop forward (outputs, last state, checkpoints). Needs a CUDA GPU.

    python3 benchmarks/experiments/lanes_forward.py --out /tmp/lanes_forward.json
"""

from __future__ import annotations

import argparse
import json
import os

import torch

import mambabook.kernels.selective_scan_kernel as ss
from mambabook.bench import provenance
from mambabook.kernels import selective_scan
from mambabook.suites.selective_scan import make_scan_inputs

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def forward(x, method, ckpt=False):
    return ss._scan_fwd(*(x[k] for k in ARGS), True, ckpt, method=method)


def max_rel_err(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-6)).item()


def main():
    from triton.testing import do_bench

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--lengths", default="2048,4096,16384,65536")
    ap.add_argument("--runs", default="16,32", help="steps per lane (LANES_T) to try")
    args = ap.parse_args()
    bench = lambda f: do_bench(f, warmup=25, rep=100)
    variants = [(int(t), pf) for t in args.runs.split(",") for pf in (True, False)]
    rows = []

    def record(**r):
        rows.append(r)
        print(json.dumps(r), flush=True)

    for name, dtype in DTYPES.items():
        for length in map(int, args.lengths.split(",")):
            torch.manual_seed(0)
            x = make_scan_inputs(8, 1536, length, 16, dtype, "cuda")
            ref_out, ref_last, _ = forward(x, "loop")
            for method in ("rows", "tile"):
                record(dtype=name, L=length, provider=method, ms=bench(lambda: forward(x, method)))
            for run, pf in variants:
                ss.LANES_T, ss.LANES_PREFETCH = run, pf
                out, last, _ = forward(x, "lanes")
                record(dtype=name, L=length, provider="lanes", T=run, prefetch=pf,
                       ms=bench(lambda: forward(x, "lanes")),
                       err_out=max_rel_err(out, ref_out), err_last=max_rel_err(last, ref_last))
            ss.LANES_T, ss.LANES_PREFETCH = 16, True
        torch.manual_seed(0)
        x = make_scan_inputs(8, 1536, 4096, 16, dtype, "cuda")
        _, _, ref_ck = forward(x, "loop", True)
        for method in ("rows", "tile", "lanes"):
            _, _, ck = forward(x, method, True)
            record(dtype=name, L=4096, provider=method + "+checkpoints",
                   ms=bench(lambda: forward(x, method, True)), err_ckpt=max_rel_err(ck, ref_ck))
        xg = make_scan_inputs(8, 1536, 4096, 16, dtype, "cuda", requires_grad=True)
        dout = torch.randn_like(xg["u"])
        inputs = [xg[k] for k in ARGS]
        for method in ("rows", "tile", "lanes"):
            os.environ[ss.FORWARD_ENV] = method

            def fwd_bwd():
                out = selective_scan(*inputs, delta_softplus=True)
                return torch.autograd.grad(out, inputs, dout)

            record(dtype=name, L=4096, provider=f"fwd+bwd ({method} forward)", ms=bench(fwd_bwd))
        os.environ.pop(ss.FORWARD_ENV)
    json.dump(dict(provenance=provenance(), rows=rows), open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()
