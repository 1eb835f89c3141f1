# ruff: noqa: B023  (each lambda is timed inside its own loop iteration)
"""The states forward (a channel's states across lanes) against the lanes forward on the
H200, issue 5; benchmarks/selective_scan_notes.md (session 12).

Side by side in one run, at B=8, D=1536, N=16, time-varying B and C, with D, z, delta_bias
and softplus: the states forward's launches (NL rows per channel, chunks of T steps, a
register cap) and the lanes forward (the library's autotuned launch) at 4K, in two
interleaved rounds; the best states launch with the backward's checkpoints; both at other
lengths; forward+backward at 4K with each forward. Every states result is checked against
the loop forward (outputs, last state, checkpoints). Needs a CUDA GPU.

    python3 benchmarks/experiments/states_forward.py --out /tmp/states_forward.json
"""

from __future__ import annotations

import argparse
import json
import os

import torch
from forward_layouts import DTYPES, max_rel_err  # this folder's sibling scripts
from lanes_forward import ARGS, forward, recorder

import mambabook.kernels.selective_scan_kernel as ss
from mambabook.bench import provenance
from mambabook.kernels import selective_scan
from mambabook.suites.selective_scan import make_scan_inputs


def parse(cfg):
    """"8x8r72q2e1p" -> STATES_FIXED: 8 rows (lanes) per channel, chunks of 8 steps, at most
    72 registers ("8x8": no cap), two chunks in flight ("q1": PIPE 1, the chunk's u and z
    held for its output; "q2": PIPE 2, loaded again; none: one chunk), the exp2 of a row's
    first 1 state on the FMA pipe ("e1": POLY), loads issued a step early ("p": PREF), each
    chunk's u loaded whole by every row ("u": UWHOLE, with q2; the library's launch since
    session 14 is "4x16q2u").
    Session 12's "w" launches (B and C widened to float32 before the kernel, BC32 in commit
    52d995e) were measured slower and removed."""
    pref = "p" in cfg  # (anywhere after the NLxT: "4x16pe1" as "4x16e1p")
    uwhole = "u" in cfg
    cfg = cfg.replace("p", "").replace("u", "")
    cfg, _, poly = cfg.partition("e")
    cfg, _, pipe = cfg.partition("q")
    nl, rest = cfg.split("x")
    t, _, mr = rest.partition("r")
    return dict(NL=int(nl), T=int(t), PREF=pref, PIPE=int(pipe or 0), POLY=int(poly or 0),
                UWHOLE=uwhole,
                **({"maxnreg": int(mr)} if mr else {}))


def main():
    from triton.testing import do_bench

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--lengths", default="2048,16384,65536", help="besides 4096")
    ap.add_argument("--configs", default="8x8,8x8r72,8x16,4x8,4x16,16x16",
                    help="states launches at 4K: NLxT[rMAXNREG][qPIPE][ePOLY][p] (parse)")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-fwdbwd", action="store_true")
    args = ap.parse_args()
    bench = lambda f: do_bench(f, warmup=25, rep=100)
    rows, record = recorder(args.out)

    for name in args.dtypes.split(","):
        dtype = DTYPES[name]
        torch.manual_seed(0)
        x = make_scan_inputs(8, 1536, 4096, 16, dtype, "cuda")
        ref_out, ref_last, _ = forward(x, "loop")
        best = {}
        for rnd in range(args.rounds):
            ss.STATES_FIXED = None
            record(dtype=name, L=4096, provider="lanes", round=rnd,
                   ms=bench(lambda: forward(x, "lanes")))
            for cfg in args.configs.split(","):
                ss.STATES_FIXED = parse(cfg)
                try:
                    out, last, _ = forward(x, "states")
                except Exception as err:  # noqa: BLE001 - a launch that fails is recorded
                    record(dtype=name, L=4096, provider="states", config=cfg, error=repr(err)[:300])
                    continue
                ms = bench(lambda: forward(x, "states"))
                record(dtype=name, L=4096, provider="states", config=cfg, round=rnd, ms=ms,
                       err_out=max_rel_err(out, ref_out), err_last=max_rel_err(last, ref_last))
                best[cfg] = min(best.get(cfg, ms), ms)
        if not best:
            continue
        top = min(best, key=best.get)
        ss.STATES_FIXED = parse(top)
        _, _, ref_ck = forward(x, "loop", True)
        for method in ("lanes", "states"):
            try:
                _, _, ck = forward(x, method, True)
            except Exception as err:  # noqa: BLE001
                record(dtype=name, L=4096, provider=method + "+checkpoints", error=repr(err)[:300])
                continue
            record(dtype=name, L=4096, provider=method + "+checkpoints", config=top,
                   ms=bench(lambda: forward(x, method, True)), err_ckpt=max_rel_err(ck, ref_ck))
        if not args.no_fwdbwd:
            xg = make_scan_inputs(8, 1536, 4096, 16, dtype, "cuda", requires_grad=True)
            dout = torch.randn_like(xg["u"])
            inputs = [xg[k] for k in ARGS]
            for method in ("lanes", "states", "lanes", "states"):
                os.environ[ss.FORWARD_ENV] = method

                def fwd_bwd():
                    out = selective_scan(*inputs, delta_softplus=True)
                    return torch.autograd.grad(out, inputs, dout)

                record(dtype=name, L=4096, provider=f"fwd+bwd ({method} forward)", config=top,
                       ms=bench(fwd_bwd))
            os.environ.pop(ss.FORWARD_ENV)
        for length in map(int, filter(None, args.lengths.split(","))):
            torch.manual_seed(0)
            x = make_scan_inputs(8, 1536, length, 16, dtype, "cuda")
            ref_out, ref_last, _ = forward(x, "loop")
            out, last, _ = forward(x, "states")
            record(dtype=name, L=length, provider="states", config=top,
                   ms=bench(lambda: forward(x, "states")),
                   err_out=max_rel_err(out, ref_out), err_last=max_rel_err(last, ref_last))
            record(dtype=name, L=length, provider="lanes", ms=bench(lambda: forward(x, "lanes")))
    json.dump(dict(provenance=provenance(), rows=rows), open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()
