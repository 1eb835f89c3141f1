"""Checks that sit beside the selective_scan suite on a GPU (results go to the notes):
how far mambabook's outputs and gradients are from mamba_ssm's CUDA kernel on the same
inputs, and the float32 lanes forward's launch (channels per warp) timed side by side.

Usage (GPU machine, mamba_ssm's extension importable as `selective_scan_cuda`):
    python benchmarks/selective_scan_anchors.py --out anchors.json
"""

from __future__ import annotations

import argparse
import json

import torch

from mambabook.bench import provenance, time_fn
from mambabook.kernels import selective_scan
from mambabook.kernels.scan_lanes import scan_forward_lanes
from mambabook.suites.selective_scan import make_scan_inputs, mamba_ssm_cuda

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def agreement(B=8, D=1536, L=4096, N=16) -> list[dict]:
    """Largest |ours - theirs| of the output and of every input's gradient, and the same
    relative to the largest |theirs|, per dtype."""
    theirs = mamba_ssm_cuda()
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        x = make_scan_inputs(B, D, L, N, dtype, "cuda", requires_grad=True)
        dout = torch.randn(B, D, L, device="cuda", dtype=dtype)
        got, want = {}, {}
        for store, fn in ((got, selective_scan), (want, theirs)):
            out = fn(**x, delta_softplus=True)
            store["out"] = out.detach()
            for name, g in zip(NAMES, torch.autograd.grad(out, [x[k] for k in NAMES], dout)):
                store["d" + name] = g
        row = dict(dtype=str(dtype).replace("torch.", ""), B=B, D=D, L=L, N=N)
        for k in got:
            diff = (got[k].float() - want[k].float()).abs().max().item()
            row[k] = dict(max_abs=diff, max_rel=diff / want[k].float().abs().max().item())
        rows.append(row)
    return rows


def lanes_launches(B=8, D=1536, N=16) -> list[dict]:
    """The float32 lanes forward at CPW = 2, 4, 8 (128 registers), without and with
    checkpoints, interleaved in one run."""
    rows = []
    for L in (2048, 4096, 16384):
        x = make_scan_inputs(B, D, L, N, torch.float32, "cuda")
        for chunk in (None, 32):
            for cpw in (2, 4, 8):
                ms = time_fn(lambda cpw=cpw, chunk=chunk, x=x: scan_forward_lanes(
                    *x.values(), True, chunk, cpw=cpw), "cuda")
                rows.append(dict(L=L, chunk=chunk, cpw=cpw, ms=ms))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    result = dict(provenance=provenance(), lanes_launches=lanes_launches())
    if mamba_ssm_cuda() is not None:
        result["agreement_with_mamba_ssm_cuda"] = agreement()
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1)[-3000:])


if __name__ == "__main__":
    main()
