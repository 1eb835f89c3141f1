"""A copy of the kernel module against the library's lanes forward, on the CPU under Triton's
interpreter: outputs, last states and the backward's checkpoints must be equal bit for bit
(small shapes: N = 4, 6, 8, 16; L a multiple of the interpreter's chunk run and not; the
three layouts of B and C). For patches that change how the lanes forward computes or stores
something, not what (e.g. session 10's pipelined chunk loop):

    python3 benchmarks/experiments/lanes_pipelined.py kernels/selective_scan_kernel.py /tmp/p2.py 2
    python3 benchmarks/experiments/check_lanes_variant.py /tmp/p2.py
"""

from __future__ import annotations

import os
import sys

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import torch  # noqa: E402
from lanes_variants import load_variant  # noqa: E402  (this folder's sibling script)

import mambabook.kernels.selective_scan_kernel as ss  # noqa: E402


def small_chunks(dstate, backward):
    """Checkpoints every 8 steps, so short sequences hold several."""
    return dict(BLOCK_D=4, BLOCK_N=16, CHUNK=8, num_warps=4)


def main() -> None:
    alt = load_variant("check", sys.argv[1])
    torch.manual_seed(0)
    ok = True
    for b, d, L, n, layout in [(2, 5, 37, 4, "BNL"), (1, 4, 64, 8, "BGNL"), (2, 3, 29, 6, "BNL"),
                               (1, 2, 40, 16, "DN")]:
        u, z = torch.randn(b, d, L), torch.randn(b, d, L)
        delta = 0.5 * torch.rand(b, d, L) - 0.2
        A = -(0.5 + torch.rand(d, n))
        shape = {"DN": (d, n), "BNL": (b, n, L), "BGNL": (b, 1, n, L)}[layout]
        B, C = torch.randn(shape), torch.randn(shape)
        args = (u, delta, A, B, C, torch.randn(d), z, 0.3 * torch.randn(d), True)
        got = {}
        for name, mod in (("library", ss), ("variant", alt)):
            mod._config = small_chunks
            got[name] = mod._scan_fwd(*args, save_ckpt=True, method="lanes")
        same = [torch.equal(x, y) for x, y in zip(got["library"], got["variant"])]
        ok &= all(same)
        print(f"B={b} D={d} L={L} N={n} {layout}: out, last, checkpoints equal: {same}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
