"""Copies of the selective-scan kernel module timed beside the library's in one process (issue
5, session 11), at B=8, D=1536, N=16, L=4096 with D, z, delta_bias and softplus (H200).

    python3 benchmarks/experiments/module_variants.py --out OUT.json \
        --variant NAME=PATH[:KEY=VAL,...] ... [--dtypes fp32,bf16] [--what bwd,fwdbwd,fwd]

PATH is a module copy (e.g. kernels/selective_scan_kernel.py with a patch from this folder
applied) or "lib"; KEY=VAL override keys of the copy's BWD_ROWS launch for the dtype's
element size (integers, True/False, else strings: WIDE=False,STORE_EV=,maxnreg=0 drops
the cap). Every variant runs in --rounds interleaved rounds; bwd_ms times the rows backward
from the lanes forward's checkpoints, fwdbwd_ms forward + backward through autograd,
fwd_ms / fwd_ckpt_ms the lanes forward without / with checkpoints. Each variant's
gradients are compared with the library's (max |diff| / max |ref|). --warm NAME compiles
one variant without timing: run one per variant in parallel first (each compile takes
20-60 s on the device machine), then time them all in one process. Run with this folder on
PYTHONPATH (it imports its sibling scripts). Session 11's runs:
results/nvidia-h200/backward_rows_sweep.json, "session11_wide_stores_and_hints"."""

import argparse
import json
import sys

import torch
from backward_layouts import grads_close  # this folder's sibling scripts
from lanes_variants import load_variant
from triton.testing import do_bench

import mambabook.kernels.selective_scan_kernel as lib
from mambabook.suites.selective_scan import make_scan_inputs

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
LEAVES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
FLAGS = ("WIDE", "BCL", "PREFETCH", "BFLY")


def parse_variant(text: str) -> tuple[str, str, dict]:
    """NAME=PATH[:KEY=VAL,...] -> (name, path, overrides)."""
    name, rest = text.split("=", 1)
    path, _, spec = rest.partition(":")
    over = {}
    for item in filter(None, spec.split(",")):
        key, val = item.split("=", 1)
        over[key] = (int(val) if val.lstrip("-").isdigit()
                     else {"True": True, "False": False}.get(val, val))
    return name, path, over


_MODULES: dict = {}


def load(path: str):
    """The library's module for "lib", else a copy of it loaded once under its own name."""
    if path == "lib":
        return lib
    if path not in _MODULES:
        _MODULES[path] = load_variant(str(len(_MODULES)), path)
    return _MODULES[path]


def launch_for(size: int, over: dict) -> dict:
    """The library's BWD_ROWS launch for element size `size` with the overrides."""
    launch = dict(lib.BWD_ROWS[size])
    launch.update({k: bool(v) if k in FLAGS else v for k, v in over.items()})
    if over.get("maxnreg") == 0:
        launch.pop("maxnreg")
    return launch


def measure(module, x: dict, dout, what: set, timed: bool, want):
    """One variant's record: errors against the library's outputs / gradients, and times."""
    args = tuple(x[k] for k in LEAVES) + (True,)
    rec = {}
    bench = (lambda fn: do_bench(fn, warmup=25, rep=200)) if timed else (lambda fn: None)
    if "fwd" in what:
        out = module._scan_fwd(*args, save_ckpt=False, method="lanes")[0]
        ref = lib._scan_fwd(*args, save_ckpt=False, method="lanes")[0]
        rec["fwd_err"] = float((out.float() - ref.float()).abs().max())
        rec["fwd_ms"] = bench(lambda: module._scan_fwd(*args, save_ckpt=False, method="lanes"))
        rec["fwd_ckpt_ms"] = bench(lambda: module._scan_fwd(*args, save_ckpt=True,
                                                            method="lanes"))
    if "bwd" in what:
        ckpt = module._scan_fwd(*args, save_ckpt=True, method="lanes")[2]
        grads = module._scan_bwd(dout, *args, ckpt, method="rows")
        want = want if want is not None else grads
        rec["rel_err"] = grads_close(grads, want)
        rec["bwd_ms"] = bench(lambda: module._scan_bwd(dout, *args, ckpt, method="rows"))
    if "fwdbwd" in what:
        xs = {k: v.detach().requires_grad_(k in LEAVES) for k, v in x.items()}
        leaves = [xs[k] for k in LEAVES]

        def step():
            out = module.selective_scan(**xs, delta_softplus=True)
            return torch.autograd.grad(out, leaves, dout)
        step()
        rec["fwdbwd_ms"] = bench(step)
    return {k: v for k, v in rec.items() if v is not None}, want


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", action="append", default=[])
    ap.add_argument("--warm", default=None)
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--what", default="bwd,fwdbwd")
    ap.add_argument("--L", type=int, default=4096)
    ap.add_argument("--B", type=int, default=8)
    ap.add_argument("--D", type=int, default=1536)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    variants = [("lib", "lib", {})] + [parse_variant(v) for v in a.variant]
    todo = [v for v in variants if a.warm in (None, v[0])]
    rows = []
    for dname in a.dtypes.split(","):
        dtype = DTYPES[dname]
        size = torch.tensor([], dtype=dtype).element_size()
        torch.manual_seed(0)
        x = make_scan_inputs(a.B, a.D, a.L, 16, dtype, device)
        dout = torch.randn_like(x["u"])
        want = None
        for rnd in range(1 if a.warm else a.rounds):
            for name, path, over in todo:
                module = load(path)
                launch = launch_for(size, over)
                module.BWD_ROWS = {**lib.BWD_ROWS, size: launch}
                rec, want = measure(module, x, dout, set(a.what.split(",")),
                                    timed=a.warm is None and device == "cuda", want=want)
                rows.append(dict(dtype=dname, variant=name, path=path, launch=launch,
                                 round=rnd, **rec))
                print(json.dumps(rows[-1]), flush=True)
    if a.out:
        from mambabook.bench import provenance
        with open(a.out, "w") as f:
            json.dump(dict(provenance=provenance(), rows=rows, argv=sys.argv), f, indent=1)


if __name__ == "__main__":
    main()
