"""What the default forward (MAMBABOOK_SCAN_FORWARD=auto) picks on this GPU, and how long a
user's call then takes: B=8, D=1536, N=16, time-varying B and C, D, z, delta_bias,
softplus, without checkpoints (no autograd) and with them (inputs that require grad), next
to each of the five forwards forced (auto's time is that of the forward it picked). Needs a GPU.

    python3 benchmarks/experiments/auto_choice.py --out /tmp/auto_choice.json [--dtypes bf16]
"""

from __future__ import annotations

import argparse
import json

import torch
from forward_layouts import DTYPES  # this folder's sibling scripts
from lanes_forward import ARGS

import mambabook.kernels.selective_scan_kernel as ss
from mambabook.bench import provenance, time_fn
from mambabook.suites.selective_scan import make_scan_inputs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--lengths", default="2048,4096,16384")
    ap.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated: " + ", ".join(DTYPES))
    args = ap.parse_args()
    dev = torch.device("cuda")
    rows = []
    for name in args.dtypes.split(","):
        dtype = DTYPES[name]
        for length in map(int, args.lengths.split(",")):
            x = make_scan_inputs(8, 1536, length, 16, dtype, dev)
            fwd = [x[k] for k in ARGS]
            for ckpt in (False, True):
                before = set(ss._FORWARD_CHOICE)
                ss._scan_fwd(*fwd, True, ckpt, method=ss._pick_forward(*fwd, True, ckpt))
                key = (set(ss._FORWARD_CHOICE) - before).pop()
                row = dict(dtype=name, L=length, checkpoints=ckpt, auto=ss._FORWARD_CHOICE[key])
                for m in ("loop", "tile", "rows", "lanes", "states"):  # auto's: its choice's
                    row[m + "_ms"] = time_fn(
                        lambda m=m, fwd=fwd, ckpt=ckpt: ss._scan_fwd(*fwd, True, ckpt, method=m), dev)
                rows.append(row)
                print(json.dumps(row), flush=True)
                json.dump(dict(provenance=provenance(dev), rows=rows), open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()
