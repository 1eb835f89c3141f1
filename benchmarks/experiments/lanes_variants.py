# ruff: noqa: B023  (each lambda is timed inside its own loop iteration)
"""Variants of the lanes forward timed side by side with the library's (issue 5, session 7;
benchmarks/selective_scan_notes.md). A variant is a copy of kernels/selective_scan_kernel.py
loaded from a file; each probe times one fixed launch at B=8, D=1536, N=16, L=4096 (time-
varying B and C, D, z, delta_bias, softplus) and checks it against the loop forward.
Session 7's two variants:

    git show 88fa41e:kernels/selective_scan_kernel.py > /tmp/rerun.py   # "rerun"
    cp kernels/selective_scan_kernel.py /tmp/v2.py                       # "v2"
    patch /tmp/v2.py benchmarks/experiments/lanes_v2.patch
    python3 benchmarks/experiments/lanes_variants.py --out /tmp/variants.json \\
        --variant rerun=/tmp/rerun.py --variant v2=/tmp/v2.py \\
        --probes bf16:base:16x2r128,bf16:rerun:16x2r128:8:0,bf16:v2:16x2r128

A probe is DTYPE:VARIANT:LAUNCH[:V[:WIDEN]]: LAUNCH as in lanes_forward.py (TxCPWrMAXNREG),
V the elements per load (empty or left out: 16 bytes of the widest stream), WIDEN 0/1 sets
the variant's LANES_WIDEN_BC where it has one (e.g. bf16:rerun:16x2r128::1). "base" is the library's kernel. Needs a GPU.
With --save-ckpt every probe saves the backward's checkpoints, as the forward of forward +
backward does, and they are checked too (session 9's ckpt_vec4.patch, timed in session 10 and
applied in 36d11ed: `git show baacae5:benchmarks/experiments/ckpt_vec4.patch`;
`--save-ckpt --variant vec4=/tmp/vec4.py --probes fp32:base:16x4r128,fp32:vec4:16x4r128,...`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys

import torch
from forward_layouts import DTYPES, max_rel_err  # this folder's sibling scripts
from lanes_forward import ARGS, forward, parse
from triton.testing import do_bench

import mambabook.kernels.selective_scan_kernel as ss
from mambabook.bench import provenance
from mambabook.suites.selective_scan import make_scan_inputs


def load_variant(name: str, path: str):
    """A copy of the kernel module from path, importable beside the library's."""
    spec = importlib.util.spec_from_file_location(f"mambabook.kernels.variant_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--variant", action="append", default=[], help="NAME=PATH (repeatable)")
    ap.add_argument("--probes", required=True, help="DTYPE:VARIANT:LAUNCH[:V[:WIDEN]],...")
    ap.add_argument("--save-ckpt", action="store_true",
                    help="time the forward that saves the backward's checkpoints (as in forward "
                         "+ backward) and check them against the loop forward's")
    args = ap.parse_args()
    modules = {"base": ss}
    for spec in args.variant:
        name, path = spec.split("=", 1)
        modules[name] = load_variant(name, path)
    # each probe starts from the module's own choices (a probe's V or WIDEN does not carry over)
    defaults = {name: (mod._lanes_vector, getattr(mod, "LANES_WIDEN_BC", None))
                for name, mod in modules.items()}
    inputs = {}
    rows = []
    for probe in args.probes.split(","):
        dname, vname, launch, *rest = probe.split(":")
        mod = modules[vname]
        if dname not in inputs:
            torch.manual_seed(0)
            x = make_scan_inputs(8, 1536, 4096, 16, DTYPES[dname], "cuda")
            inputs[dname] = ([x[k] for k in ARGS], forward(x, "loop", ckpt=args.save_ckpt))
        xs, (ref_out, ref_last, ref_ckpt) = inputs[dname]
        mod.LANES_FIXED, _ = parse(launch)
        vector, widen = defaults[vname]
        mod._lanes_vector = (lambda *tensors, v=int(rest[0]): v) if rest and rest[0] else vector
        if widen is not None:
            mod.LANES_WIDEN_BC = rest[1] == "1" if len(rest) > 1 else widen
        run = lambda: mod._scan_fwd(*xs, True, args.save_ckpt, method="lanes")
        out, last, ckpt = run()
        row = dict(probe=probe, dtype=dname, variant=vname, config=launch,
                   save_ckpt=args.save_ckpt, ms=do_bench(run, warmup=25, rep=100),
                   err_out=max_rel_err(out, ref_out), err_last=max_rel_err(last, ref_last))
        if args.save_ckpt:
            row["err_ckpt"] = max_rel_err(ckpt, ref_ckpt)
        rows.append(row)
        print(json.dumps(row), flush=True)
        json.dump(dict(provenance=provenance(), rows=rows), open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()
