"""Session 10's experiment (issue 5; benchmarks/selective_scan_notes.md): the lanes forward with
its chunk loop software-pipelined by Triton. `tl.range(..., num_stages=S)` on the chunk loop
makes Triton's pipeliner load the next chunk's u, delta and z with cp.async into shared memory
while the current chunk computes (no registers held, unlike session 6's PREF). B and C (and A)
stay out of the pipeline unless asked: the pipeliner skips loads inside an `if`, so they move
into a runtime-true one. Writes a copy of the kernel module for lanes_variants.py:

    python3 benchmarks/experiments/lanes_pipelined.py kernels/selective_scan_kernel.py /tmp/p2.py 2
    python3 benchmarks/experiments/lanes_variants.py --out /tmp/pipe.json --variant p2=/tmp/p2.py \\
        --probes bf16:base:16x2r128,bf16:p2:16x2r128,fp32:base:16x8r128,fp32:p2:16x8r128

Measured on the H200 (results/nvidia-h200/lanes_forward.json, session 10): every pipelined
launch slower, e.g. bf16 16x2r128 0.94 ms against 0.63, fp32 16x8r128 1.41 against 0.90.

Usage: lanes_pipelined.py SRC DST STAGES [BC]   (BC=1 pipelines B and C too)
"""

from __future__ import annotations

import sys


def pipelined(src: str, stages: int, bc: bool) -> str:
    s = src
    old = ("    for c in range(0, tl.cdiv(L, LT * T)):\n        t0 = c * (LT * T)\n"
           "        us = _lanes_load(u_row")
    assert old in s, "the lanes forward's chunk loop has changed"
    s = s.replace(old, f"    for c in tl.range(0, tl.cdiv(L, LT * T), num_stages={stages}):\n"
                       "        t0 = c * (LT * T)\n        us = _lanes_load(u_row")
    if bc:
        return s
    load_a = ("tl.load(A_ptr + d3 * dstate + n, mask=m3, other=0.0) * 1.4426950408889634\n")
    old = ("            A2n = " + load_a +
           "            if VARYING_BC:\n"
           "                Bx = _lanes_load(B_row + n * s_B_n, t0, m3, L, LT, R, V, EVEN, PAIRS)\n"
           "                Cx = _lanes_load(C_row + n * s_C_n, t0, m3, L, LT, R, V, EVEN, PAIRS)\n"
           "            else:\n")
    assert old in s, "the lanes forward's state loads have changed"
    new = ("            A2n = tl.zeros((CPW, 1, 1), dtype=tl.float32)\n"
           "            if VARYING_BC:\n"
           "                if dstate > 0:  # runtime-true: keeps these loads out of the pipeline\n"
           "                    A2n = " + load_a +
           "                    Bx = _lanes_load(B_row + n * s_B_n, t0, m3, L, LT, R, V, EVEN, PAIRS)\n"
           "                    Cx = _lanes_load(C_row + n * s_C_n, t0, m3, L, LT, R, V, EVEN, PAIRS)\n"
           "                else:\n"
           "                    Bx = dts\n"
           "                    Cx = dts\n"
           "            else:\n"
           "                A2n = " + load_a)
    return s.replace(old, new)


if __name__ == "__main__":
    src, dst, stages = sys.argv[1], sys.argv[2], int(sys.argv[3])
    bc = len(sys.argv) > 4 and sys.argv[4] == "1"
    with open(src) as f:
        text = f.read()
    with open(dst, "w") as f:
        f.write(pipelined(text, stages, bc))
