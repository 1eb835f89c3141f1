# ruff: noqa: B023  (each lambda is timed inside its own loop iteration)
"""Forward layouts that were measured on the H200 and not kept (chapter 7, issue 5 notes).

The selective scan's forward with the N states of each channel split over NG warps
(`split_kernel`: y summed across warps through shared memory) or over NG neighbouring lanes
(`splitl_kernel`: y summed with shuffles), each thread keeping T steps of its channel; timed
next to the library's loop, tile and rows forwards (the rows forward with 1 to 8
segments), all checked against the loop forward. B=8, D=1536, N=16, time-varying B and C,
with D, z, delta_bias and softplus; needs a CUDA GPU.

    python3 benchmarks/experiments/forward_layouts.py --out /tmp/forward_layouts.json

The split kernels assume D % BLOCK_D == 0 and L % T == 0 (no masks on every load), which the
shapes here satisfy; they are experiments, not library code.
"""

from __future__ import annotations

import argparse
import json

import torch
import triton
import triton.language as tl

import mambabook.kernels.selective_scan_kernel as ss
from mambabook.bench import provenance
from mambabook.kernels.selective_scan_kernel import _combine_fwd, _softplus
from mambabook.suites.selective_scan import make_scan_inputs


@triton.jit
def split_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, last_ptr, ckpt_ptr,
    L, dim, dstate, dpg,
    s_u_b, s_u_d, s_dt_b, s_dt_d, s_z_b, s_z_d, s_o_b, s_o_d,
    s_B_b, s_B_g, s_B_n, s_C_b, s_C_g, s_C_n,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    VARYING_BC: tl.constexpr, SAVE_CKPT: tl.constexpr, N: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, T: tl.constexpr, NG: tl.constexpr,
):
    # NG groups of states (one per warp), BLOCK_D rows (one per lane), T steps in each thread
    NPG: tl.constexpr = BLOCK_N // NG
    pid_gd = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    nblk = tl.cdiv(dpg, BLOCK_D)
    grp = pid_gd // nblk
    d_in_grp = (pid_gd % nblk) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = d_in_grp < dpg
    offs_d = (grp * dpg + d_in_grp).to(tl.int64)
    offs_g = tl.arange(0, NG)
    offs_j = tl.arange(0, NPG)
    offs_t = tl.arange(0, T)
    # 3-D index helpers, (NG, BLOCK_D, T)
    g3 = offs_g[:, None, None]
    d3 = offs_d[None, :, None]
    t3 = offs_t[None, None, :]
    is_last = t3 == T - 1
    is_first = t3 == 0
    n_first = g3 * NPG  # first state of each group, (NG, 1, 1)
    A3 = tl.load(A_ptr + d3 * dstate + n_first + offs_j[None, None, :]) * 1.4426950408889634  # (NG, BLOCK_D, NPG)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0)
    u_base = u_ptr + pid_b * s_u_b + offs_d[:, None] * s_u_d
    dt_base = delta_ptr + pid_b * s_dt_b + offs_d[:, None] * s_dt_d
    o_base = out_ptr + pid_b * s_o_b + offs_d[:, None] * s_o_d
    if HAS_Z:
        z_base = z_ptr + pid_b * s_z_b + offs_d[:, None] * s_z_d
    B_base = B_ptr + pid_b * s_B_b + grp * s_B_g + n_first * s_B_n  # (NG, 1, 1)
    C_base = C_ptr + pid_b * s_C_b + grp * s_C_g + n_first * s_C_n
    n_tiles = tl.cdiv(L, T)
    hc = tl.zeros((NG, BLOCK_D, NPG), dtype=tl.float32)
    for c in range(0, n_tiles):
        t = c * T + offs_t
        mask_t = t < L
        mask_dt = mask_d[:, None] & mask_t[None, :]
        u = tl.load(u_base + t[None, :], mask=mask_dt, other=0.0).to(tl.float32)
        dt = tl.load(dt_base + t[None, :], mask=mask_dt, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt += bias[:, None]
        if SOFTPLUS:
            dt = _softplus(dt)
        dt = tl.where(mask_dt, dt, 0.0)
        dtu = dt * u
        dt3 = dt[None, :, :]
        dtu3 = dtu[None, :, :]
        mask3 = mask_t[None, None, :]
        yp = tl.zeros((NG, BLOCK_D, T), dtype=tl.float32)
        for j in tl.static_range(NPG):
            sel = (offs_j == j)[None, None, :]
            A2j = tl.sum(tl.where(sel, A3, 0.0), axis=2)  # (NG, BLOCK_D)
            Bj = tl.load(tl.broadcast_to(B_base + j * s_B_n + c * T + t3, (NG, BLOCK_D, T)), mask=mask3, other=0.0).to(tl.float32)
            Cj = tl.load(tl.broadcast_to(C_base + j * s_C_n + c * T + t3, (NG, BLOCK_D, T)), mask=mask3, other=0.0).to(tl.float32)
            a = tl.exp2(dt3 * A2j[:, :, None])
            carry = tl.sum(tl.where(sel, hc, 0.0), axis=2)  # (NG, BLOCK_D)
            b = tl.where(is_first, a * carry[:, :, None], 0.0) + dtu3 * Bj
            _, h = tl.associative_scan((a, b), axis=2, combine_fn=_combine_fwd)
            yp += h * Cj
            h_end = tl.sum(tl.where(is_last, h, 0.0), axis=2)
            hc = tl.where(sel, h_end[:, :, None], hc)
        y = tl.sum(yp, axis=0)  # (BLOCK_D, T)
        if HAS_D:
            y += Dv[:, None] * u
        if HAS_Z:
            zz = tl.load(z_base + t[None, :], mask=mask_dt, other=0.0).to(tl.float32)
            y *= zz * tl.sigmoid(zz)
        tl.store(o_base + t[None, :], y.to(out_ptr.dtype.element_ty), mask=mask_dt)
    tl.store(last_ptr + ((pid_b * dim + d3) * dstate + n_first + offs_j[None, None, :]), hc)



@triton.jit
def splitl_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, last_ptr, ckpt_ptr,
    L, dim, dstate, dpg,
    s_u_b, s_u_d, s_dt_b, s_dt_d, s_z_b, s_z_d, s_o_b, s_o_d,
    s_B_b, s_B_g, s_B_n, s_C_b, s_C_g, s_C_n,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    VARYING_BC: tl.constexpr, SAVE_CKPT: tl.constexpr, N: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, T: tl.constexpr, NG: tl.constexpr,
):
    # (BLOCK_D, NG, T): NG groups of states on neighbouring lanes, T steps in each thread;
    # u, delta, z loaded straight into that layout (each group's lane loads its row)
    NPG: tl.constexpr = BLOCK_N // NG
    pid_gd = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    nblk = tl.cdiv(dpg, BLOCK_D)
    grp = pid_gd // nblk
    d_in_grp = (pid_gd % nblk) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_d = (grp * dpg + d_in_grp).to(tl.int64)
    offs_g = tl.arange(0, NG)
    offs_j = tl.arange(0, NPG)
    offs_t = tl.arange(0, T)
    d3 = offs_d[:, None, None]
    g3 = offs_g[None, :, None]
    t3 = offs_t[None, None, :]
    is_last = t3 == T - 1
    is_first = t3 == 0
    n_first = g3 * NPG
    A3 = tl.load(A_ptr + d3 * dstate + n_first + offs_j[None, None, :]) * 1.4426950408889634  # (BLOCK_D, NG, NPG)
    Dv = tl.load(D_ptr + d3)
    bias = tl.load(bias_ptr + d3)
    zero3 = g3 * 0  # (1, NG, 1): puts u, delta, z in the 3-D layout
    u_base = u_ptr + pid_b * s_u_b + d3 * s_u_d + zero3
    dt_base = delta_ptr + pid_b * s_dt_b + d3 * s_dt_d + zero3
    z_base = z_ptr + pid_b * s_z_b + d3 * s_z_d + zero3
    o_base = out_ptr + pid_b * s_o_b + offs_d[:, None] * s_o_d
    B_base = B_ptr + pid_b * s_B_b + grp * s_B_g + n_first * s_B_n  # (1, NG, 1)
    C_base = C_ptr + pid_b * s_C_b + grp * s_C_g + n_first * s_C_n
    n_tiles = tl.cdiv(L, T)
    hc = tl.zeros((BLOCK_D, NG, NPG), dtype=tl.float32)
    for c in range(0, n_tiles):
        t = c * T + t3
        u = tl.load(u_base + t).to(tl.float32)  # (BLOCK_D, NG, T)
        dt = tl.load(dt_base + t).to(tl.float32) + bias
        dt = _softplus(dt)
        dtu = dt * u
        yp = tl.zeros((BLOCK_D, NG, T), dtype=tl.float32)
        for j in tl.static_range(NPG):
            sel = (offs_j == j)[None, None, :]
            A2j = tl.sum(tl.where(sel, A3, 0.0), axis=2)  # (BLOCK_D, NG)
            Bj = tl.load(tl.broadcast_to(B_base + j * s_B_n + t, (BLOCK_D, NG, T))).to(tl.float32)
            Cj = tl.load(tl.broadcast_to(C_base + j * s_C_n + t, (BLOCK_D, NG, T))).to(tl.float32)
            a = tl.exp2(dt * A2j[:, :, None])
            carry = tl.sum(tl.where(sel, hc, 0.0), axis=2)
            b = tl.where(is_first, a * carry[:, :, None], 0.0) + dtu * Bj
            _, h = tl.associative_scan((a, b), axis=2, combine_fn=_combine_fwd)
            yp += h * Cj
            h_end = tl.sum(tl.where(is_last, h, 0.0), axis=2)
            hc = tl.where(sel, h_end[:, :, None], hc)
        yp = yp + tl.where(g3 == 0, Dv * u, 0.0)
        y = tl.sum(yp, axis=1)  # (BLOCK_D, T)
        zz = tl.sum(tl.where(g3 == 0, tl.load(z_base + t).to(tl.float32), 0.0), axis=1)
        y *= zz * tl.sigmoid(zz)
        tl.store(o_base + c * T + offs_t[None, :], y.to(out_ptr.dtype.element_ty))
    tl.store(last_ptr + ((pid_b * dim + d3) * dstate + n_first + offs_j[None, None, :]), hc)


KERNELS = {"split": split_kernel, "splitl": splitl_kernel}
# (kind, T, BLOCK_D, NG, warps), per input dtype: the configurations of the recorded sweeps
CONFIGS = {
    "bf16": [("split", 8, 32, 2, 2), ("split", 8, 32, 4, 4), ("split", 8, 64, 2, 4),
             ("split", 16, 32, 4, 4), ("split", 8, 32, 8, 8), ("splitl", 8, 32, 2, 2),
             ("splitl", 8, 32, 2, 1), ("splitl", 8, 64, 2, 2), ("splitl", 8, 16, 2, 1),
             ("splitl", 8, 32, 4, 4), ("splitl", 8, 16, 4, 2)],
    "fp32": [("split", 4, 32, 2, 2), ("split", 4, 32, 4, 4), ("split", 8, 32, 4, 4),
             ("split", 4, 64, 2, 4), ("split", 4, 32, 8, 8), ("splitl", 4, 32, 2, 2),
             ("splitl", 4, 16, 2, 1), ("splitl", 4, 32, 4, 4)],
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def launch_split(kind, x, T, block_d, ng, warps):
    """One forward through a split kernel: out (B, D, L) and the last state (B, D, N)."""
    u, dl, B, C, z = x["u"], x["delta"], x["B"], x["C"], x["z"]
    bsz, dim, length = u.shape
    dstate = x["A"].shape[1]
    out = torch.empty_like(u)
    last = u.new_empty(bsz, dim, dstate, dtype=torch.float32)
    KERNELS[kind][(triton.cdiv(dim, block_d), bsz)](
        u, dl, x["A"], B, C, x["D"], z, x["delta_bias"], out, last, last, length, dim, dstate,
        dim, u.stride(0), u.stride(1), dl.stride(0), dl.stride(1), z.stride(0), z.stride(1),
        out.stride(0), out.stride(1), B.stride(0), 0, B.stride(1), C.stride(0), 0, C.stride(1),
        HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, VARYING_BC=True, SAVE_CKPT=False,
        N=dstate, BLOCK_N=triton.next_power_of_2(dstate), BLOCK_D=block_d, T=T, NG=ng,
        num_warps=warps)
    return out, last


def library_forward(x, method, save_ckpt=False):
    out, last, _ = ss._scan_fwd(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"],
                                x["delta_bias"], True, save_ckpt, method=method)
    return out, last


def max_rel_err(got, want) -> float:
    got, want = got.float(), want.float()
    return float((got - want).abs().max() / want.abs().max())


def main():
    from triton.testing import do_bench

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--length", type=int, default=4096)
    args = ap.parse_args()
    rows = []
    bench = lambda f: do_bench(f, warmup=25, rep=100)
    for name, dtype in DTYPES.items():
        torch.manual_seed(0)
        x = make_scan_inputs(8, 1536, args.length, 16, dtype, "cuda")
        ref_out, ref_last = library_forward(x, "loop")
        for method in ("loop", "tile"):
            ms = bench(lambda m=method: library_forward(x, m))
            rows.append(dict(dtype=name, provider=method, ms=ms))
        for segments in (1, 2, 4, 6, 8):
            ss.ROWS_SEGMENTS = segments
            out, last = library_forward(x, "rows")
            rows.append(dict(dtype=name, provider="rows", segments=segments,
                             ms=bench(lambda: library_forward(x, "rows")),
                             err_out=max_rel_err(out, ref_out),
                             err_last=max_rel_err(last, ref_last)))
            if segments in (1, 4):
                rows.append(dict(dtype=name, provider="rows+checkpoints", segments=segments,
                                 ms=bench(lambda: library_forward(x, "rows", True))))
        ss.ROWS_SEGMENTS = None
        for kind, T, block_d, ng, warps in CONFIGS[name]:
            cfg = (T, block_d, ng, warps)
            out, last = launch_split(kind, x, *cfg)
            rows.append(dict(dtype=name, provider=kind, T=T, BLOCK_D=block_d, NG=ng, warps=warps,
                             ms=bench(lambda k=kind, c=cfg: launch_split(k, x, *c)),
                             err_out=max_rel_err(out, ref_out),
                             err_last=max_rel_err(last, ref_last)))
        for r in rows:
            if r["dtype"] == name:
                print(json.dumps(r), flush=True)
    json.dump(dict(provenance=provenance(), length=args.length, rows=rows), open(args.out, "w"),
              indent=1)


if __name__ == "__main__":
    main()
