# ruff: noqa: B023  (each closure is timed inside its own loop iteration)
"""The selective scan's backward on the H200: the chunk backward against the rows backward
(several launch shapes and numbers of segments) and, with --lanes, the lanes backward's
launches; forward + backward through autograd with each; gradients of every variant
checked against the chunk backward.

B=8, D=1536, N=16, time-varying B and C, with D, z, delta_bias and softplus; needs a GPU.

    python3 benchmarks/experiments/backward_layouts.py --out /tmp/backward_layouts.json

A launch is BLOCK_D x num_warps, optionally followed by :T<steps per piece>, :R<pieces per
tile>, :M<register cap>, :P<PREFETCH value>, :B<0 or 1> (BCL: B and C through shuffles; left
out, the wrapper's default: on) and :W<0 or 1> (WIDE, in a copy with rows_wide_stores.patch),
e.g. 32x1:T4:R2:M168 (P2: the states in pairs of experiments/rows_pairs.patch, removed
after session 9 timed it: `git show 4849a59:benchmarks/experiments/rows_pairs.patch`). --baseline times the rows backward of a copy of the
kernel module (e.g. `git show HEAD~3:kernels/selective_scan_kernel.py`) at its own launch
beside them, on the same inputs, and --baseline-launches at those launches too (each at
every --segments); --reference baseline checks gradients against it instead of the chunk
backward (which takes a minute to compile).
"""

from __future__ import annotations

import argparse
import json
import os

import torch
from lanes_variants import load_variant  # this folder's sibling script

import mambabook.kernels.selective_scan_kernel as ss
from mambabook.bench import provenance, time_fn
from mambabook.suites.selective_scan import make_scan_inputs

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def grads_close(got, want) -> float:
    """Largest |got - want| / (|want|_max) over the gradients (None entries skipped)."""
    worst = 0.0
    for g, w in zip(got, want):
        if w is None:
            continue
        worst = max(worst, ((g.float() - w.float()).abs().max() / w.float().abs().max().clamp_min(1e-30)).item())
    return worst


def parse_launch(spec: str, variant: str) -> dict:
    """BLOCK_D x num_warps[:T<n>][:R<n>][:M<n>][:P<n>][:B<n>][:W<n>] and the PREFETCH, BFLY bits ->
    a BWD_ROWS dict (:P sets PREFETCH to n, :B sets BCL)."""
    head, *opts = spec.split(":")
    bd, w = head.split("x")
    launch = dict(BLOCK_D=int(bd), T=4, num_warps=int(w), PREFETCH=variant[0] == "1",
                  BFLY=variant[1] == "1")
    for o in opts:
        launch[{"T": "T", "R": "R", "M": "maxnreg", "P": "PREFETCH", "B": "BCL",
                "W": "WIDE"}[o[0]]] = int(o[1:])
    return launch


def sweep(mod, launches, segments, splits, run, want, log, head, err_key, dev, **extra):
    """Time run() (the rows backward of kernel module mod) at every launch, number of
    segments and PASS 1 split (None: the module's own, and no split or layout_checks in the
    record), checking its gradients against want; a launch that fails is logged as a result
    too. The module's launch, segments and split are restored afterwards."""
    saved = (mod.BWD_ROWS, mod.BWD_SEGMENTS, getattr(mod, "BWD_SPLIT", None))
    for launch in launches:
        mod.BWD_ROWS = {4: launch, 2: launch}  # whichever the dtype
        for segs, split in [(s, f) for s in segments for f in splits]:
            mod.BWD_SEGMENTS = segs
            rec = dict(head, launch=launch, segments=segs)
            if split is not None:
                mod.BWD_SPLIT = split
                rec["split"] = split
                mod._BFLY_LAYOUT_OK.clear()  # which shuffle layout checks this launch passed
            try:
                err = grads_close(run(), want)
                rec.update(ms=time_fn(run, dev), **{err_key: err}, **extra)
                if split is not None:
                    rec["layout_checks"] = list(mod._BFLY_LAYOUT_OK.values())
            except Exception as e:  # noqa: BLE001 - a launch that fails is a result too
                rec["error"] = repr(e)[:300]
            log(rec)
    mod.BWD_ROWS, mod.BWD_SEGMENTS = saved[:2]
    if saved[2] is not None:
        mod.BWD_SPLIT = saved[2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--lengths", default="4096")
    ap.add_argument("--segments", default="1,2,4,8")
    ap.add_argument("--splits", default=str(ss.BWD_SPLIT),
                    help="sub-segments per segment in PASS 1 (BWD_SPLIT) for the library's launches")
    ap.add_argument("--launches", default="32x1,64x2,64x1,128x4",
                    help="BLOCK_D x num_warps of the rows backward")
    ap.add_argument("--variants", default="11",
                    help="PREFETCH and BFLY bits of the rows backward, e.g. 11,10,01,00")
    ap.add_argument("--lanes", default="",
                    help="launches of the lanes backward to time, CPW x warps x T, e.g. "
                         "4x8x8,8x1x8,4x1x8 (empty: none)")
    ap.add_argument("--baseline", default="", help="a copy of the kernel module to time beside")
    ap.add_argument("--baseline-launches", default="",
                    help="launches to time the baseline module at (as --launches), each at "
                         "every --segments")
    ap.add_argument("--reference", default="chunk", choices=["chunk", "baseline"])
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--fwdbwd", default="chunk,rows",
                    help="backwards to time through autograd (forward + backward)")
    ap.add_argument("--record", action="store_true",
                    help="then record the selective_scan suite (triton provider) with the "
                         "fastest launch at 4K (MAMBABOOK_SCAN_PROVIDERS=triton to skip others)")
    args = ap.parse_args()
    dev = torch.device("cuda")
    B, D, N = 8, 1536, 16
    records = []

    def log(rec):
        records.append(rec)
        print(json.dumps(rec), flush=True)
        with open(args.out, "w") as f:
            json.dump({"provenance": provenance(dev), "shape": dict(B=B, D=D, N=N),
                       "records": records}, f, indent=1)

    launches = [parse_launch(x, v) for x in args.launches.split(",")
                for v in args.variants.split(",")]
    base_launches = [parse_launch(x, v) for x in args.baseline_launches.split(",") if x
                     for v in args.variants.split(",")]
    segments = [int(x) for x in args.segments.split(",")]
    base = load_variant("baseline", args.baseline) if args.baseline else None
    for L in [int(x) for x in args.lengths.split(",")]:
        for dname in args.dtypes.split(","):
            dtype = DTYPES[dname]
            x = make_scan_inputs(B, D, L, N, dtype, dev)
            fwd_args = (x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], True)
            out, _, ckpt = ss._scan_fwd(*fwd_args, save_ckpt=True, method="rows")
            dout = torch.randn_like(out)
            bwd = lambda m: ss._scan_bwd(dout, *fwd_args, ckpt, method=m)
            if base is not None:
                base_bwd = lambda: base._scan_bwd(dout, *fwd_args, ckpt, method="rows")
                got = base_bwd()
                log(dict(L=L, dtype=dname, what="bwd", method="rows", launch="baseline",
                         baseline=args.baseline, baseline_launch=base.BWD_ROWS,
                         ms=time_fn(base_bwd, dev)))
                sweep(base, base_launches, segments, [None], base_bwd, got, log,
                      dict(L=L, dtype=dname, what="bwd", method="rows", module="baseline",
                           baseline=args.baseline), "rel_err_vs_baseline", dev)
            if args.reference == "chunk":
                want = bwd("chunk")
                ms = time_fn(lambda: bwd("chunk"), dev)
                log(dict(L=L, dtype=dname, what="bwd", method="chunk", ms=ms))
            else:
                want = got
            sweep(ss, launches, segments, [int(f) for f in args.splits.split(",")],
                  lambda: bwd("rows"), want, log,
                  dict(L=L, dtype=dname, what="bwd", method="rows"), "rel_err", dev,
                  reference=args.reference)
            default_lanes = dict(ss.BWD_LANES)
            for spec in filter(None, args.lanes.split(",")):
                cpw, w, t = (int(v) for v in spec.split("x"))
                ss.BWD_LANES = dict(CPW=cpw, T=t, num_warps=w)
                try:
                    err = grads_close(bwd("lanes"), want)
                    ms = time_fn(lambda: bwd("lanes"), dev)
                except Exception as e:  # noqa: BLE001 - a launch that fails is a result too
                    log(dict(L=L, dtype=dname, what="bwd", method="lanes", launch=ss.BWD_LANES,
                             error=repr(e)[:300]))
                    continue
                log(dict(L=L, dtype=dname, what="bwd", method="lanes", launch=ss.BWD_LANES,
                         ms=ms, rel_err_vs_chunk=err))
            ss.BWD_LANES = default_lanes
            # forward + backward through autograd, as a user calls it
            leaves = make_scan_inputs(B, D, L, N, dtype, dev, requires_grad=True)
            for m in [m for m in args.fwdbwd.split(",") if m] + (["lanes"] if args.lanes else []):
                os.environ[ss.BACKWARD_ENV] = m

                def step():
                    o = ss.selective_scan(**leaves, delta_softplus=True)
                    o.backward(dout)

                log(dict(L=L, dtype=dname, what="fwd+bwd", method=m, ms=time_fn(step, dev)))
            os.environ.pop(ss.BACKWARD_ENV, None)
    if args.record:  # each dtype's fastest launch
        best = {}
        for r in records:
            if isinstance(r.get("launch"), dict) and "ms" in r and "module" not in r:
                size = DTYPES[r["dtype"]].itemsize
                if size not in best or r["ms"] < best[size][0]:
                    best[size] = (r["ms"], r["launch"])
        ss.BWD_ROWS = {**ss.BWD_ROWS, **{size: launch for size, (_, launch) in best.items()}}
        print("recording with", ss.BWD_ROWS, flush=True)
        from mambabook.bench import main as bench_main

        bench_main(["--suite", "selective_scan", *(["--out", os.environ["RECORD_OUT"]]
                                                   if "RECORD_OUT" in os.environ else [])])


if __name__ == "__main__":
    main()
