# ruff: noqa: B023  (each lambda is timed inside its own loop iteration)
"""Time a few block configurations of the selective-scan kernels on the GPU (chapter 7).

Run on the H200 by benchmarks/gpu_selective_scan.sh; prints a table and writes JSON. The
chosen configuration goes into kernels/selective_scan_kernel.py:_config. Timing: mambabook.bench.
"""

from __future__ import annotations

import argparse
import json

import torch

import mambabook.kernels.selective_scan_kernel as ss
from mambabook.bench import provenance, time_fn
from mambabook.suites.selective_scan import SHAPE, make_scan_inputs, scan_floor

FWD = [(1, 64, 2), (1, 128, 4), (1, 256, 8), (2, 64, 4), (2, 128, 4), (2, 256, 8), (4, 32, 4),
       (4, 64, 4), (4, 64, 8), (4, 128, 8), (8, 32, 4), (8, 64, 8)]
BWD = [(1, 32, 2), (2, 32, 4), (2, 64, 4), (4, 16, 4), (4, 32, 4), (4, 32, 8), (8, 16, 4),
       (8, 32, 8), (16, 16, 8)]


def cfg(bd, chunk, warps):
    return dict(BLOCK_D=bd, BLOCK_N=16, CHUNK=chunk, num_warps=warps)


def timed(fn, dev):
    """time_fn, or inf when a configuration fails to compile or run."""
    try:
        return time_fn(fn, dev)
    except Exception as err:  # noqa: BLE001 - one bad configuration must not end the sweep
        print("failed:", type(err).__name__, str(err)[:200], flush=True)
        return float("inf")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--L", type=int, default=4096)
    args = ap.parse_args()
    B, D, N, L = SHAPE["B"], SHAPE["D"], SHAPE["N"], args.L
    dev = torch.device("cuda")
    rows = []
    default = ss._config
    for dtype in (torch.float32, torch.bfloat16):
        x = make_scan_inputs(B, D, L, N, dtype, dev)
        fl = scan_floor(B, D, L, N, x["u"].element_size())["floor_ms"]
        for bd, chunk, warps in FWD:
            ss._config = lambda dstate, backward, c=cfg(bd, chunk, warps): c
            ms = timed(lambda: ss.selective_scan_assoc(**x, delta_softplus=True), dev)
            rows.append(dict(kind="fwd", dtype=str(dtype), cfg=[bd, chunk, warps], ms=ms,
                             floor_frac=fl / ms if ms else 0))
            print(rows[-1], flush=True)
        ms = timed(lambda: ss.selective_scan(**x, delta_softplus=True), dev)  # autotuned
        rows.append(dict(kind="loop", dtype=str(dtype), cfg=None, ms=ms, floor_frac=fl / ms))
        print(rows[-1], flush=True)
        xg = make_scan_inputs(B, D, L, N, dtype, dev, requires_grad=True)
        leaves = list(xg.values())
        dout = torch.randn(B, D, L, device=dev, dtype=dtype)
        flb = scan_floor(B, D, L, N, x["u"].element_size(), backward=True)["floor_ms"]
        for bd, chunk, warps in BWD:
            c_b = cfg(bd, chunk, warps)
            c_f = cfg(4, chunk, 4)
            ss._config = lambda dstate, backward, c_b=c_b, c_f=c_f: c_b if backward else c_f
            fn = lambda: torch.autograd.grad(ss.selective_scan(**xg, delta_softplus=True),
                                             leaves, dout)
            ms = timed(fn, dev)
            rows.append(dict(kind="fwd+bwd", dtype=str(dtype), cfg=[bd, chunk, warps], ms=ms,
                             floor_frac=flb / ms if ms else 0))
            print(rows[-1], flush=True)
        ss._config = default
    with open(args.out, "w") as f:
        json.dump(dict(provenance=provenance(dev), L=L, shape=SHAPE, rows=rows), f, indent=1)
    for kind in ("fwd", "loop", "fwd+bwd"):
        for dt in ("torch.float32", "torch.bfloat16"):
            rs = sorted((r for r in rows if r["kind"] == kind and r["dtype"] == dt),
                        key=lambda r: r["ms"])
            print(kind, dt, "best:", [(r["cfg"], round(r["ms"], 3)) for r in rs[:3]])


if __name__ == "__main__":
    main()
