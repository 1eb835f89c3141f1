"""The shipped lanes forward against a candidate version of kernels/scan_lanes.py, in one
process on the same inputs, repeats interleaved (float32, B=8, D=1536, N=16, with D, z,
delta_bias and softplus; L = 4K, 16K, 64K; without and with checkpoints). Prints one JSON
row per case (both medians, all repeats, whether the outputs are identical) and the worst
candidate / shipped ratio. On a GPU machine, with the package staged as the
benchmarks/gpu_*.sh scripts do:
    git show <commit>:kernels/scan_lanes.py > /tmp/candidate.py   # on this machine
    python benchmarks/lanes_ab.py /tmp/candidate.py
"""

from __future__ import annotations

import importlib.util
import json
import sys

import torch

import mambabook.kernels.scan_lanes as shipped
from mambabook import bench
from mambabook.kernels.common import ckpt_chunk
from mambabook.suites.selective_scan import make_scan_inputs


def load_candidate(path: str):
    """The candidate file as a module of mambabook.kernels (its relative imports resolve)."""
    spec = importlib.util.spec_from_file_location("mambabook.kernels.scan_lanes_candidate",
                                                  path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def compare(candidate, L: int, chunk: int | None, repeats: int = 3) -> dict:
    x = make_scan_inputs(8, 1536, L, 16, torch.float32, "cuda")
    args = (x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], True,
            chunk)
    outs = [m.scan_forward_lanes(*args) for m in (shipped, candidate)]
    pairs = [(a, b) for a, b in zip(*outs) if a is not None]
    times = {"shipped": [], "candidate": []}
    for _ in range(repeats):
        for name, m in (("shipped", shipped), ("candidate", candidate)):
            times[name].append(bench.time_fn(lambda m=m: m.scan_forward_lanes(*args), "cuda"))
    row = dict(L=L, chunk=chunk, shipped_ms=min(times["shipped"]),
               candidate_ms=min(times["candidate"]), repeats_ms=times,
               identical=all(torch.equal(a, b) for a, b in pairs),
               max_diff=max((a - b).abs().max().item() for a, b in pairs))
    row["ratio"] = row["candidate_ms"] / row["shipped_ms"]
    return row


def main():
    candidate = load_candidate(sys.argv[1])
    rows = []
    for L in (4096, 16384, 65536):
        for chunk in (None, ckpt_chunk(16, 4)):
            rows.append(compare(candidate, L, chunk))
            print(json.dumps(rows[-1]), flush=True)
    print("WORST_RATIO", max(r["ratio"] for r in rows))


if __name__ == "__main__":
    main()
