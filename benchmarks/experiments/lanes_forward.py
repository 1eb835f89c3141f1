# ruff: noqa: B023  (each lambda is timed inside its own loop iteration)
"""The lanes forward (lanes along time, CPW channels per warp) against the rows forward on
the H200, issue 5; chapter 7 and benchmarks/selective_scan_notes.md.

Times, side by side in one run, at B=8, D=1536, N=16, time-varying B and C, with D, z,
delta_bias and softplus: the lanes forward's launches (runs of T steps per lane, CPW
channels per warp, a register cap) at 4K; the best of them and the rows forward at the
other lengths; both with the backward's checkpoints at 4K; and forward+backward at 4K
(autograd.grad, the rows backward) with each forward. Every lanes result is checked against
the loop forward (outputs, last state, checkpoints). Needs a CUDA GPU.

    python3 benchmarks/experiments/lanes_forward.py --out /tmp/lanes_forward.json
"""

from __future__ import annotations

import argparse
import json
import os

import torch
from forward_layouts import DTYPES, max_rel_err  # this folder's sibling script

import mambabook.kernels.selective_scan_kernel as ss
from mambabook.bench import provenance
from mambabook.kernels import selective_scan
from mambabook.suites.selective_scan import make_scan_inputs

ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def forward(x, method, ckpt=False):
    return ss._scan_fwd(*(x[k] for k in ARGS), True, ckpt, method=method)


def parse(cfg):
    """"16x8r128np" -> (LANES_FIXED, widen): runs of 16 steps, 8 channels per warp, at most
    128 registers, no int32 pairs for bfloat16; "auto" -> None (the library's autotuning).
    A trailing "bc" widens B and C to float32 before each call (inside the timing), so the
    kernel reads float32 B and C: the experiment of the notes' "What is left"."""
    widen = cfg.endswith("bc")
    cfg = cfg.removesuffix("bc")
    if cfg == "auto":
        return None, widen
    run, rest = cfg.split("x")
    no_pairs = rest.endswith("np")
    cpw, _, mr = rest.removesuffix("np").partition("r")
    out = dict(T=int(run), CPW=int(cpw), maxnreg=int(mr) if mr else None)
    return (dict(out, PAIRS=False) if no_pairs else out), widen


def recorder(path):
    """(rows, record): record(**row) appends a row, prints it and saves every row so far with
    the provenance to path, so that a run cut short keeps what it measured."""
    rows = []

    def record(**r):
        rows.append(r)
        print(json.dumps(r), flush=True)
        json.dump(dict(provenance=provenance(), rows=rows), open(path, "w"), indent=1)
    return rows, record


def widened(x):
    """x with B and C as float32 (a new dict; the copies are made at each call)."""
    return dict(x, B=x["B"].float(), C=x["C"].float())


def main():
    from triton.testing import do_bench

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--lengths", default="2048,16384,65536", help="besides 4096")
    ap.add_argument("--configs", default="auto,16x8r128,16x4r128,16x4,16x2r128,16x8r168",
                    help="lanes launches at 4K: TxCPW[rMAXNREG][np][bc], or auto[bc]")
    ap.add_argument("--quick", action="store_true", help="only the launches at 4K")
    ap.add_argument("--dtypes", default="fp32,bf16")
    args = ap.parse_args()
    bench = lambda f: do_bench(f, warmup=25, rep=100)
    rows, record = recorder(args.out)

    for name in args.dtypes.split(","):
        dtype = DTYPES[name]
        torch.manual_seed(0)
        x = make_scan_inputs(8, 1536, 4096, 16, dtype, "cuda")
        ref_out, ref_last, _ = forward(x, "loop")
        best = None
        for cfg in args.configs.split(","):
            ss.LANES_FIXED, widen = parse(cfg)
            run = (lambda: forward(widened(x), "lanes")) if widen else (lambda: forward(x, "lanes"))
            out, last, _ = run()
            ms = bench(run)
            chosen = ([str(c) for c in ss._lanes_kernel_tuned.cache.values()]
                      if ss.LANES_FIXED is None else None)
            record(dtype=name, L=4096, provider="lanes", config=cfg, ms=ms, autotuned=chosen,
                   err_out=max_rel_err(out, ref_out), err_last=max_rel_err(last, ref_last))
            if best is None or ms < best[1]:
                best = (cfg, ms)
        ss.LANES_FIXED, best_widen = parse(best[0])
        prep = widened if best_widen else (lambda x: x)  # the best launch's B and C
        record(dtype=name, L=4096, provider="rows", ms=bench(lambda: forward(x, "rows")))
        if args.quick:
            continue
        for length in map(int, filter(None, args.lengths.split(","))):
            torch.manual_seed(0)
            x = make_scan_inputs(8, 1536, length, 16, dtype, "cuda")
            ref_out, ref_last, _ = forward(x, "loop")
            out, last, _ = forward(prep(x), "lanes")
            record(dtype=name, L=length, provider="lanes", config=best[0],
                   ms=bench(lambda: forward(prep(x), "lanes")),
                   err_out=max_rel_err(out, ref_out), err_last=max_rel_err(last, ref_last))
            record(dtype=name, L=length, provider="rows", ms=bench(lambda: forward(x, "rows")))
        torch.manual_seed(0)
        x = make_scan_inputs(8, 1536, 4096, 16, dtype, "cuda")
        _, _, ref_ck = forward(x, "loop", True)
        for method in ("rows", "lanes"):
            _, _, ck = forward(x, method, True)
            record(dtype=name, L=4096, provider=method + "+checkpoints", config=best[0],
                   ms=bench(lambda: forward(x, method, True)), err_ckpt=max_rel_err(ck, ref_ck))
        xg = make_scan_inputs(8, 1536, 4096, 16, dtype, "cuda", requires_grad=True)
        dout = torch.randn_like(xg["u"])
        inputs = [xg[k] for k in ARGS]
        for method in ("rows", "lanes"):
            os.environ[ss.FORWARD_ENV] = method

            def fwd_bwd():
                out = selective_scan(*inputs, delta_softplus=True)
                return torch.autograd.grad(out, inputs, dout)

            record(dtype=name, L=4096, provider=f"fwd+bwd ({method} forward)", config=best[0],
                   ms=bench(fwd_bwd))
        os.environ.pop(ss.FORWARD_ENV)
    json.dump(dict(provenance=provenance(), rows=rows), open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()
