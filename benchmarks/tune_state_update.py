"""Sweep the selective_state_update launch configuration on a GPU (issue 5's decoding shape).

B=128, D=5120, N=16, fp32 state and inputs, with D, z, dt_bias, softplus. Each configuration
(state values per program and row, batch rows per program, warps) is checked against the
ref and timed eagerly and replayed from a CUDA graph (no Python launch cost), against the
HBM floor (state read and written once, plus the small inputs):

    python3 benchmarks/tune_state_update.py --out /tmp/tune_state_update.json
"""

from __future__ import annotations

import argparse
import json

import torch

import mambabook.kernels.state_update_kernel as su
from mambabook.bench import provenance, time_fn
from mambabook.selective import selective_state_update_ref
from mambabook.suites.selective_scan import state_update_floor

CONFIGS = [None, (4096, 1, 4), (4096, 2, 4), (4096, 8, 4), (2048, 4, 4), (8192, 4, 8),
           (8192, 2, 4), (2048, 1, 2), (512, 1, 4)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    B, D, N = 128, 5120, 16
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    r = lambda *s: torch.randn(*s, device=dev, generator=g)
    x = dict(x=r(B, D), dt=0.5 * r(B, D) - 3, A=-torch.rand(D, N, device=dev, generator=g) - 0.5,
             B=r(B, N), C=r(B, N), D=r(D), z=r(B, D), dt_bias=0.3 * r(D))
    state0 = r(B, D, N)
    floor = state_update_floor(B, D, N)
    rows = []
    for cfg in CONFIGS:
        su.STATE_UPDATE_CONFIG = cfg
        launch = su._launch_config(B, D, N)
        s1, s2 = state0.clone(), state0.clone()
        out = su.selective_state_update(s1, **x, dt_softplus=True)
        ref = selective_state_update_ref(s2, **x, dt_softplus=True)
        err = float(max((out - ref).abs().max(), (s1 - s2).abs().max()))
        state = state0.clone()
        step = lambda state=state: su.selective_state_update(state, **x, dt_softplus=True)
        eager = time_fn(step, dev)
        step()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        graphed = time_fn(graph.replay, dev)
        row = dict(config=cfg, launch=launch, max_abs_err=err, eager_ms=eager,
                   graph_ms=graphed, floor_ms=floor["floor_ms"],
                   graph_fraction_of_floor=floor["floor_ms"] / graphed)
        print(json.dumps(row), flush=True)
        rows.append(row)
    su.STATE_UPDATE_CONFIG = None
    json.dump(dict(provenance=provenance(), shape=dict(B=B, D=D, N=N), rows=rows),
              open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()
