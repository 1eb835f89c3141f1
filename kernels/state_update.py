"""One decoding step of the selective SSM as a Triton kernel (chapter 7).

h <- exp(dt A) h + dt B x,  out = (C h + D x) * silu(z), with the state (B, D, N) updated in
place: the conventions of `mambabook.selective.selective_state_update_ref` and mamba_ssm's
`selective_state_update`. The step is memory-bound: the state is read and written once.
dt arrives projected (dt = W_dt dt_low, one GEMM before): folded in here, each program
would read its (BLOCK_D, R) block of W_dt once per batch row, 128 MB per block at the 1.4B
row and batch 128 (D = 4096, R = 128, bfloat16) against the state's 64 MB; the GEMM reads
W_dt (1 MB) once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..checks import check_state_update_args
from .common import LOG2E, _softplus, bc_strides, check_kernel_inputs

MAX_DSTATE = 256  # largest N the kernel supports


@triton.jit
def _selective_state_update_kernel(
    # pointers
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr,
    # dimensions
    dim, dstate, dpg,
    # strides
    s_h_b, s_h_d, s_h_n, s_x_b, s_x_d, s_dt_b, s_dt_d, s_A_d, s_A_n,
    s_B_b, s_B_g, s_B_n, s_C_b, s_C_g, s_C_n, s_z_b, s_z_d, s_o_b, s_o_d,
    # meta-parameters (D_ptr, z_ptr and bias_ptr are None when absent)
    SOFTPLUS: tl.constexpr, A_LOG: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_d = tl.program_id(0)  # block of channels
    pid_b = tl.program_id(1).to(tl.int64)  # batch row
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # channel indices, (BLOCK_D,)
    mask_d = offs_d < dim
    offs_n = tl.arange(0, BLOCK_N)  # state indices, (BLOCK_N,)
    mask_n = offs_n < dstate
    mask_dn = mask_d[:, None] & mask_n[None, :]
    grp = offs_d // dpg  # group of each channel, (BLOCK_D,)

    # every load first and the stores last: ptxas moves no load past a store it cannot prove
    # apart (the other order measured 12% slower: benchmarks/selective_scan_notes.md)
    h_ptrs = state_ptr + pid_b * s_h_b + offs_d[:, None] * s_h_d + offs_n[None, :] * s_h_n
    h = tl.load(h_ptrs, mask=mask_dn, other=0.0).to(tl.float32)  # (BLOCK_D, BLOCK_N)
    A = tl.load(A_ptr + offs_d[:, None] * s_A_d + offs_n[None, :] * s_A_n, mask=mask_dn, other=0.0)
    Bv = tl.load(B_ptr + pid_b * s_B_b + grp[:, None] * s_B_g + offs_n[None, :] * s_B_n,
                 mask=mask_dn, other=0.0).to(tl.float32)  # (BLOCK_D, BLOCK_N)
    Cv = tl.load(C_ptr + pid_b * s_C_b + grp[:, None] * s_C_g + offs_n[None, :] * s_C_n,
                 mask=mask_dn, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + pid_b * s_x_b + offs_d * s_x_d, mask=mask_d, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + pid_b * s_dt_b + offs_d * s_dt_d, mask=mask_d, other=0.0).to(tl.float32)
    if bias_ptr is not None:
        dt += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if D_ptr is not None:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if z_ptr is not None:
        z = tl.load(z_ptr + pid_b * s_z_b + offs_d * s_z_d, mask=mask_d, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = _softplus(dt)
    A = A.to(tl.float32)
    if A_LOG:  # A given as A_log: A = -exp(A_log)
        A = -tl.exp(A)
    h = tl.exp2(dt[:, None] * A * LOG2E) * h + (dt * x)[:, None] * Bv
    out = tl.sum(h * Cv, axis=1)  # (BLOCK_D,)
    if D_ptr is not None:
        out += x * Dv
    if z_ptr is not None:
        out *= z * tl.sigmoid(z)
    tl.store(h_ptrs, h.to(state_ptr.dtype.element_ty), mask=mask_dn)
    tl.store(out_ptr + pid_b * s_o_b + offs_d * s_o_d, out.to(out_ptr.dtype.element_ty), mask=mask_d)


def _check_state_update_args(state, x, dt, A, B, C, D, z, dt_bias):
    """Validate the step's inputs; returns (batch, dim, N, groups) with groups 1 for (B, N)."""
    bsz, dim, dstate = check_state_update_args(state, x, dt, A, B, C, D, z, dt_bias)
    check_kernel_inputs(state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)
    if dstate > MAX_DSTATE:
        raise ValueError(f"state must have shape (B, D, N) with N <= {MAX_DSTATE} for this "
                         f"kernel, got N = {dstate}")
    return bsz, dim, dstate, (B.shape[1] if B.dim() == 3 else 1)


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                           dt_softplus=False, A_is_log=False):
    """One decoding step; `state` (B, D, N) is updated in place.

    x, dt, z: (B, D); A: (D, N); B, C: (B, N) or (B, G, N); D, dt_bias: (D,).
    h <- exp(dt A) h + dt B x;  out = C h + D x, times silu(z). Returns out: (B, D) in x's
    dtype. With A_is_log, `A` holds Mamba's parameter A_log and the kernel takes
    A = -exp(A_log) itself (no launches to compute A first). Same semantics as
    mambabook.selective.selective_state_update_ref.
    """
    bsz, dim, dstate, groups = _check_state_update_args(state, x, dt, A, B, C, D, z, dt_bias)
    out = torch.empty_like(x)
    # the kernel reads D and dt_bias at unit stride: a strided view (D[::2]) is copied
    D = D.contiguous() if D is not None else None
    dt_bias = dt_bias.contiguous() if dt_bias is not None else None
    block_n = triton.next_power_of_2(dstate)
    # 1024 state values per program, 2 warps: 26.4 us (85% of the HBM floor) at B=128,
    # D=5120, N=16 on the H200; 512 values and 4 warps (the first launch) took 28.5 us
    block_d = max(1, min(64, 1024 // block_n))
    sB, sC = (bc_strides(M, grouped=M.dim() == 3) for M in (B, C))  # (B, [G,] N)
    sz = z.stride() if z is not None else (0, 0)
    _selective_state_update_kernel[(triton.cdiv(dim, block_d), bsz)](
        state, x, dt, A, B, C, D, z, dt_bias, out, dim, dstate, dim // groups,
        state.stride(0), state.stride(1), state.stride(2), x.stride(0), x.stride(1),
        dt.stride(0), dt.stride(1), A.stride(0), A.stride(1), *sB, *sC, *sz,
        out.stride(0), out.stride(1), SOFTPLUS=bool(dt_softplus), A_LOG=bool(A_is_log),
        BLOCK_D=block_d, BLOCK_N=block_n, num_warps=2,
    )
    return out

