# ruff: noqa: B023  (each lambda is timed inside its own loop iteration)
"""The loop forward against the tile forward of the Triton selective scan, side by side (ch. 7).

B=8, D=1536, N=16 (the selective_scan suite's shape), with D, z, delta_bias and softplus,
forward only (no checkpoints: what inference runs), L in 2K/4K/16K/64K, fp32 and bf16.
Each variant is checked against the other (max relative error of out and of the last
state), timed with mambabook.bench.time_fn, and compared with the scan's floor and
mamba_ssm's recorded CUDA time. With --ckpt it also times the forward that autograd runs
(checkpoints saved every CHUNK steps; the tile is then CHUNK long) at L=4096.

    .venv/bin/python benchmarks/compare_scan_forward.py --out /tmp/compare_scan_forward.json

Prints a table and writes JSON (rows + provenance + the tile configurations the autotuner
picked). Budget: < 120 s on an H200, compilation and autotuning included.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import mambabook.kernels.selective_scan_kernel as ss
from mambabook.bench import provenance, time_fn
from mambabook.suites.selective_scan import (
    DTYPES,
    MAMBA_SSM_H200_MS,
    SHAPE,
    make_scan_inputs,
    scan_floor,
)


def max_rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want|, in float32 (a scale-free distance between two runs)."""
    got, want = got.float(), want.float()
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-30))


def forward(x: dict, method: str, save_ckpt: bool = False):
    """One forward through the internal launcher (the public function picks the method by
    MAMBABOOK_SCAN_FORWARD; here both are called directly). Returns out, last state."""
    out, last, _ = ss._scan_fwd(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"],
                                x["delta_bias"], True, save_ckpt, method=method)
    return out, last


def best_config(kernel) -> str | None:
    cfg = getattr(kernel, "best_config", None)
    return str(cfg) if cfg is not None else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--lengths", default="2048,4096,16384,65536")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--ckpt", action="store_true",
                    help="also time the checkpointing forward (autograd's) at L=4096")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes on any device (run with TRITON_INTERPRET=1 on a CPU)")
    args = ap.parse_args()
    if args.smoke:
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        B, D, N = 1, 8, 4
        args.lengths = "40"
    elif not torch.cuda.is_available():
        raise SystemExit("compare_scan_forward.py needs a CUDA device (or --smoke)")
    else:
        dev = torch.device("cuda")
        B, D, N = SHAPE["B"], SHAPE["D"], SHAPE["N"]
    start = time.perf_counter()  # the script's own run time (not a measurement)
    rows = []
    cases = [(dt, int(L), False) for dt in args.dtypes.split(",")
             for L in args.lengths.split(",")]
    if args.ckpt:
        cases += [(dt, 40 if args.smoke else 4096, True) for dt in args.dtypes.split(",")]
    for dtype, L, ckpt in cases:
        x = make_scan_inputs(B, D, L, N, DTYPES[dtype], dev)
        with torch.no_grad():
            out_loop, last_loop = forward(x, "loop", ckpt)
            out_tile, last_tile = forward(x, "tile", ckpt)
            ms = {m: time_fn(lambda m=m: forward(x, m, ckpt), dev) for m in ("loop", "tile")}
        floor = scan_floor(B, D, L, N, x["u"].element_size())["floor_ms"]
        row = dict(dtype=dtype, L=L, ckpt=ckpt, loop_ms=ms["loop"], tile_ms=ms["tile"],
                   speedup=ms["loop"] / ms["tile"], floor_ms=floor,
                   tile_floor_frac=floor / ms["tile"],
                   mamba_ssm_ms=(MAMBA_SSM_H200_MS.get(("fwd", dtype), {}).get(L)
                                 if (B, D, N) == (SHAPE["B"], SHAPE["D"], SHAPE["N"]) else None),
                   out_max_rel_err=max_rel_err(out_tile, out_loop),
                   last_max_rel_err=max_rel_err(last_tile, last_loop),
                   tile_config=best_config(ss._tile_ckpt_kernel_tuned if ckpt
                                           else ss._tile_kernel_tuned),
                   elapsed_s=time.perf_counter() - start)
        rows.append(row)
        print(json.dumps(row), flush=True)
    head = (f"{'dtype':5} {'L':>6} {'ckpt':>4} {'loop ms':>8} {'tile ms':>8} {'speedup':>7} "
            f"{'floor':>6} {'mamba':>6} {'err out':>8} {'err h':>8}")
    print(head)
    for r in rows:
        mamba = f"{r['mamba_ssm_ms']:6.3f}" if r["mamba_ssm_ms"] else f"{'-':>6}"
        print(f"{r['dtype']:5} {r['L']:6d} {str(r['ckpt'])[0]:>4} {r['loop_ms']:8.3f} "
              f"{r['tile_ms']:8.3f} {r['speedup']:7.2f} {r['floor_ms']:6.3f} {mamba} "
              f"{r['out_max_rel_err']:8.1e} {r['last_max_rel_err']:8.1e}")
    with open(args.out, "w") as f:
        json.dump(dict(rows=rows, provenance=provenance(dev), shape=dict(B=B, D=D, N=N),
                       total_s=time.perf_counter() - start), f, indent=1)
    print(f"wrote {args.out} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
