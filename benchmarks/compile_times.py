"""What a first call compiles: each shipped selective-scan launch compiled for sm_90 on this
machine (no GPU needed), with its compile time, the share of Triton's Coalesce pass, PTX
lines, registers, spilled bytes and SASS instructions (results go to the notes).

Usage (any machine with the package installed; one process per launch, empty cache):
    python benchmarks/compile_times.py [--out compile_times.json] [name ...]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile

_COMPILE = r"""
import importlib, json, os, re, subprocess, sys, tempfile, time, collections
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

const = json.loads(sys.argv[1])
kernel = getattr(importlib.import_module(const.pop("_module")), const.pop("_kernel"))
half = set(const.pop("_bf16", ()))
opts = dict(num_warps=1, **({"maxnreg": const.pop("_maxnreg")} if "_maxnreg" in const else {}))
sig = {n: "constexpr" if n in const else ("*bf16" if n in half else "*fp32")
       if n.endswith("_ptr") else "i32" for n in kernel.arg_names}
src = ASTSource(fn=kernel, signature=sig,
                constexprs={(kernel.arg_names.index(k),): v for k, v in const.items()})
t0 = time.perf_counter()
compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts)
seconds = time.perf_counter() - t0
tools = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
    f.write(compiled.asm["cubin"])
dump = lambda flag: subprocess.run([os.path.join(tools, "cuobjdump"), flag, f.name],
                                   capture_output=True, text=True).stdout
usage = re.search(r"REG:(\d+).*?STACK:(\d+)", dump("-res-usage"))
ops = collections.Counter(m.group(1) for m in re.finditer(
    r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", dump("-sass")))
print(json.dumps(dict(seconds=seconds, ptx_lines=compiled.asm["ptx"].count("\n"),
                      registers=int(usage.group(1)), spill_bytes=int(usage.group(2)),
                      sass=sum(ops.values()), sass_ops=dict(ops))))
"""

HALF = ["u_ptr", "delta_ptr", "B_ptr", "C_ptr", "z_ptr", "out_ptr", "dout_ptr", "du_ptr",
        "ddelta_ptr", "dz_ptr"]
KERN = "mambabook.kernels."
LANES = dict(_module=KERN + "scan_lanes", _kernel="_scan_fwd_lanes_kernel", SOFTPLUS=True,
             VARYING_BC=True, N=16, CPW=2, T=16, V=4, PAIRS=False, CHUNK=32, _maxnreg=128)
STATES = dict(_module=KERN + "scan_states", _kernel="_scan_fwd_states_kernel", SOFTPLUS=True,
              VARYING_BC=True, NL=4, T=16, PTX=True, N=16, CHUNK=16, _bf16=HALF)
BWD = dict(_module=KERN + "scan_backward", _kernel="_scan_bwd_kernel", SOFTPLUS=True,
           VARYING_BC=True, BLOCK_D=32, R=2, BFLY=32, _maxnreg=168)
# the launches of the cold_start suite's first calls (B=8, D=1536, L=4096, N=16; then
# L=3000, which is not a multiple of the tiles: the unmasked EVEN case is off)
LAUNCHES = {
    "lanes fp32": dict(LANES, EVEN=True),
    # a first forward without autograd: no checkpoints, no initial state (None pointers)
    "lanes fp32, inference": dict(LANES, EVEN=True, CHUNK=16, ckpt_ptr=None, h0_ptr=None),
    "lanes fp32, masked": dict(LANES, EVEN=False),
    "states bf16": dict(STATES, EVEN=True, PAIRS=True),
    "states bf16, masked": dict(STATES, EVEN=False, PAIRS=False),
    "backward fp32 pass 1": dict(BWD, T=4, CHUNK=32, PASS=1, EVEN=True, BCL=0),
    "backward fp32 pass 2": dict(BWD, T=4, CHUNK=32, PASS=2, EVEN=True, BCL=1),
    "backward bf16 pass 1": dict(BWD, T=8, CHUNK=16, PASS=1, EVEN=True, BCL=0, _bf16=HALF),
    "backward bf16 pass 2": dict(BWD, T=8, CHUNK=16, PASS=2, EVEN=True, BCL=2, _bf16=HALF),
}


def compile_one(spec: dict) -> dict:
    """Compile one launch in a fresh process with an empty cache; its figures, plus the
    Coalesce pass's seconds from MLIR's pass timing."""
    with tempfile.TemporaryDirectory() as cache:
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env.update(TRITON_CACHE_DIR=cache, MLIR_ENABLE_TIMING="1")
        done = subprocess.run([sys.executable, "-c", _COMPILE, json.dumps(spec)], env=env,
                              capture_output=True, text=True, timeout=900)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    row = json.loads(done.stdout.strip().splitlines()[-1])
    passes = collections.Counter()
    for seconds, name in re.findall(r"^\s+([\d.]+) \(\s*[\d.]+%\)\s+(\w+)\s*$",
                                    done.stdout + done.stderr, re.M):
        passes[name] += float(seconds)
    row["coalesce_seconds"] = passes.get("TritonGPUCoalesce", 0.0)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"launches (default all): {list(LAUNCHES)}")
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args()
    rows = []
    for name in args.names or LAUNCHES:
        row = dict(launch=name, **compile_one(LAUNCHES[name]))
        rows.append(row)
        print(f"{name:22s} {row['seconds']:6.1f} s (Coalesce {row['coalesce_seconds']:5.1f} s)"
              f"  {row['ptx_lines']:6d} PTX lines  {row['registers']} registers"
              f"  {row['spill_bytes']:5d} B spilled  {row['sass']:6d} SASS", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
