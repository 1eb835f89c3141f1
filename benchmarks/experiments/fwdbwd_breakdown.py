"""Where the time of one forward + backward goes: every GPU kernel of
`mambabook.kernels.selective_scan(...).backward(dout)` at B=8, D=1536, N=16 (time-varying B and
C, D, z, delta_bias, softplus), timed by torch.profiler over several steps; needs a GPU.

    python3 benchmarks/experiments/fwdbwd_breakdown.py --out /tmp/breakdown.json

Each record is one kernel name with its mean time per step (CUDA time), so the forward, the
two passes of the backward and the glue (transposes, zeroing, the partial sums' reductions,
casts) can be read apart. The profiler adds a little per launch; do_bench of the whole step
is logged beside it for scale.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import torch
from backward_layouts import grads_close  # this folder's sibling script
from torch.profiler import ProfilerActivity, profile

import mambabook.kernels.selective_scan_kernel as ss
from mambabook.bench import provenance, time_fn
from mambabook.suites.selective_scan import make_scan_inputs

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--lengths", default="4096")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--splits", default=str(ss.BWD_SPLIT),
                    help="values of BWD_SPLIT (PASS 1's sub-segments) to profile at")
    ap.add_argument("--chunks", default="0",
                    help="checkpoint intervals (BWD_CHUNK) to profile at; 0: the library's")
    args = ap.parse_args()
    dev = torch.device("cuda")
    B, D, N = 8, 1536, 16
    records = []
    reference = {}
    default_chunks = dict(ss.BWD_CHUNK)
    for L, dname, split, chunk in [(int(x), d, int(f), int(c))
                                   for x in args.lengths.split(",")
                                   for d in args.dtypes.split(",")
                                   for f in args.splits.split(",")
                                   for c in args.chunks.split(",")]:
        ss.BWD_SPLIT = split
        ss.BWD_CHUNK = {4: chunk, 2: chunk} if chunk else default_chunks
        chunk = ss._ckpt_chunk(N, DTYPES[dname].itemsize)
        torch.manual_seed(0)  # the same inputs for every record of an (L, dtype)
        leaves = make_scan_inputs(B, D, L, N, DTYPES[dname], dev, requires_grad=True)
        dout = torch.randn_like(leaves["u"])

        def step(leaves=leaves, dout=dout):  # as the suite times it: no .grad accumulated
            return torch.autograd.grad(ss.selective_scan(**leaves, delta_softplus=True),
                                       list(leaves.values()), dout)

        ms = time_fn(step, dev)
        # gradients against the first record's of this (L, dtype): a checkpoint interval or
        # split changes the order of sums, not the result
        grads = step()
        grad_err = grads_close(grads, reference.setdefault((L, dname), grads))
        step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(args.steps):
                step()
            torch.cuda.synchronize()
        per = defaultdict(lambda: [0.0, 0])
        seq = []  # (name, ms) of every launch, in order: the rows backward's two passes apart
        for ev in prof.events():
            if ev.device_type == torch.autograd.DeviceType.CUDA:
                per[ev.name][0] += ev.device_time_total / 1000.0  # us -> ms
                per[ev.name][1] += 1
                seq.append((ev.name, ev.device_time_total / 1000.0))
        n_step = len(seq) // args.steps
        launches = [dict(name=seq[i][0][:60],
                         ms=sum(seq[i + k * n_step][1] for k in range(args.steps)) / args.steps)
                    for i in range(n_step)]
        kernels = sorted(((name, t / args.steps, c / args.steps) for name, (t, c) in per.items()),
                         key=lambda x: -x[1])
        rec = dict(L=L, dtype=dname, split=split, chunk=chunk, step_ms_do_bench=ms,
                   grad_err_vs_first=grad_err,
                   sum_kernel_ms=sum(k[1] for k in kernels),
                   kernels=[dict(name=k[0][:120], ms=k[1], launches=k[2]) for k in kernels],
                   launches_in_order=launches)
        records.append(rec)
        print(L, dname, f"split {split}", f"chunk {chunk}", f"step {ms:.3f} ms (do_bench)",
              f"grad err {grad_err:.1e}",
              " | ".join(f"{x['name'][:32]} {x['ms']:.3f}" for x in launches), flush=True)
        with open(args.out, "w") as f:  # after every record: a run cut short keeps its results
            json.dump({"provenance": provenance(dev), "shape": dict(B=B, D=D, N=N),
                       "command": "python3 benchmarks/experiments/fwdbwd_breakdown.py",
                       "records": records}, f, indent=1)


if __name__ == "__main__":
    main()
