"""The loop forward of the selective scan (chapter 7, step 2 made general): one time step
per loop iteration, the state (BLOCK_D, N) of a block of channels in registers.

The forward for states too large for the lanes and states forwards (N > 32) and the one
the interpreter runs by default. L is cut into segments run by separate programs (more
independent recurrences for the GPU), stitched through their maps h -> exp(A S) h + H.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import (
    INTERPRET,
    _channel_block,
    _softplus,
    bc_operands,
    cut,
    forward_buffers,
    row_strides,
    scan_dims,
)

SEGMENT_TARGET = 2_000_000  # independent recurrences (B x D x N x segments) to aim for


@triton.jit
def _scan_fwd_loop_kernel(
    # pointers (B and C time-varying: (B, [G,] L, N), N contiguous); D, z, bias, ckpt and
    # the initial state h0 (B, D, N): None when absent
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, last_ptr, ckpt_ptr,
    h0_ptr, seg_h_ptr, seg_s_ptr,
    # dimensions: L in n_seg segments of seg_len steps (a multiple of CHUNK)
    L, dim, dstate, dpg, seg_len, n_seg,
    # strides
    s_u_b, s_u_d, s_dt_b, s_dt_d, s_z_b, s_z_d, s_o_b, s_o_d,
    s_B_b, s_B_g, s_B_t, s_C_b, s_C_g, s_C_t,
    # meta-parameters
    SOFTPLUS: tl.constexpr, VARYING_BC: tl.constexpr, CHUNK: tl.constexpr,
    PASS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """PASS 1 runs each segment but the last from a zero state and stores its end state H
    and the sum S of its deltas: the segment maps h to exp(A S) h + H. PASS 2 starts
    segment k from the composition of the maps before it, runs it and writes the outputs,
    the state before every CHUNK steps (ckpt_ptr, for the backward) and the last state."""
    grp, offs_d, mask_d = _channel_block(dpg, BLOCK_D)  # channels (BLOCK_D,)
    pid_b = tl.program_id(1).to(tl.int64)  # batch row
    seg = tl.program_id(2)  # segment of the sequence
    offs_n = tl.arange(0, BLOCK_N)  # state indices, (BLOCK_N,)
    mask_n = offs_n < dstate
    mask_dn = mask_d[:, None] & mask_n[None, :]
    dn_offs = offs_d[:, None] * dstate + offs_n[None, :]  # into (D, N), (BLOCK_D, BLOCK_N)
    # A in base-2 units: exp(delta A) = exp2(delta A log2 e)
    A2 = tl.load(A_ptr + dn_offs, mask=mask_dn, other=0.0) * 1.4426950408889634
    if VARYING_BC:
        B_p = B_ptr + pid_b * s_B_b + grp * s_B_g + offs_n  # (BLOCK_N,) pointers at t = 0
        C_p = C_ptr + pid_b * s_C_b + grp * s_C_g + offs_n
    else:
        Bt = tl.load(B_ptr + dn_offs, mask=mask_dn, other=0.0).to(tl.float32)
        Ct = tl.load(C_ptr + dn_offs, mask=mask_dn, other=0.0).to(tl.float32)
    u_p = u_ptr + pid_b * s_u_b + offs_d * s_u_d  # (BLOCK_D,) pointers at t = 0
    dt_p = delta_ptr + pid_b * s_dt_b + offs_d * s_dt_d
    o_p = out_ptr + pid_b * s_o_b + offs_d * s_o_d
    # per-segment summaries: H (B, D, n_seg, N) and S (B, D, n_seg)
    sh_p = seg_h_ptr + ((pid_b * dim + offs_d[:, None]) * n_seg) * dstate + offs_n[None, :]
    ss_p = seg_s_ptr + (pid_b * dim + offs_d) * n_seg
    t0 = seg * seg_len
    t1 = tl.minimum(t0 + seg_len, L)
    h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)  # the state
    S = tl.zeros((BLOCK_D,), dtype=tl.float32)  # PASS 1: the segment's delta sum
    if PASS == 2:
        if h0_ptr is not None:  # the state entering the sequence
            h = tl.load(h0_ptr + (pid_b * dim + offs_d[:, None]) * dstate + offs_n[None, :],
                        mask=mask_dn, other=0.0)
        for j in range(0, seg):  # the state entering this segment
            S_j = tl.load(ss_p + j, mask=mask_d, other=0.0)
            h = tl.exp2(S_j[:, None] * A2) * h + tl.load(sh_p + j * dstate, mask=mask_dn,
                                                         other=0.0)
    for t in range(t0, t1):
        if ckpt_ptr is not None and PASS == 2:
            if t % CHUNK == 0:  # the state before chunk t / CHUNK: ckpt (B, D, L / CHUNK, N)
                ck_p = ckpt_ptr + (pid_b * dim + offs_d[:, None]) * tl.cdiv(L, CHUNK) * dstate
                tl.store(ck_p + (t // CHUNK) * dstate + offs_n[None, :], h, mask=mask_dn)
        u = tl.load(u_p + t, mask=mask_d, other=0.0).to(tl.float32)  # (BLOCK_D,)
        dt = tl.load(dt_p + t, mask=mask_d, other=0.0).to(tl.float32)
        if bias_ptr is not None:
            dt += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0)
        if SOFTPLUS:
            dt = _softplus(dt)
        if VARYING_BC:
            Bt = tl.load(B_p + t * s_B_t, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        h = tl.exp2(dt[:, None] * A2) * h + (dt * u)[:, None] * Bt  # (BLOCK_D, BLOCK_N)
        if PASS == 1:
            S += dt
        else:
            if VARYING_BC:
                Ct = tl.load(C_p + t * s_C_t, mask=mask_n, other=0.0).to(tl.float32)[None, :]
            y = tl.sum(h * Ct, axis=1)  # (BLOCK_D,)
            if D_ptr is not None:
                y += tl.load(D_ptr + offs_d, mask=mask_d, other=0.0) * u
            if z_ptr is not None:
                zz = tl.load(z_ptr + pid_b * s_z_b + offs_d * s_z_d + t, mask=mask_d,
                             other=0.0).to(tl.float32)
                y *= zz * tl.sigmoid(zz)
            tl.store(o_p + t, y.to(out_ptr.dtype.element_ty), mask=mask_d)
    if PASS == 1:
        tl.store(sh_p + seg * dstate, h, mask=mask_dn)
        tl.store(ss_p + seg, S, mask=mask_d)
    elif seg == n_seg - 1:
        tl.store(last_ptr + (pid_b * dim + offs_d[:, None]) * dstate + offs_n[None, :], h,
                 mask=mask_dn)


def scan_forward_loop(u, delta, A, B, C, D, z, delta_bias, softplus: bool, chunk: int | None,
                      h0=None, block_d: int | None = None, n_seg: int | None = None):
    """Launch the loop forward on checked inputs (`selective_scan`'s conventions); `chunk`:
    the checkpoint interval (None: no checkpoints); `h0` the state entering the sequence
    ((B, D, N) float32, None: zeros). `block_d` channels a program (default:
    about 128 state values a program, 4 under the interpreter) and `n_seg` segments of L
    (default: about SEGMENT_TARGET recurrences side by side). Returns out, the last state
    and the checkpoints (or None)."""
    bsz, dim, length, dstate, groups, dpg = scan_dims(u, A, B)
    block_n = triton.next_power_of_2(dstate)
    block_d = block_d or (4 if INTERPRET else max(1, min(16, 128 // block_n)))
    every = chunk or 16  # segment boundaries fall on checkpoints
    want = n_seg or max(1, min(SEGMENT_TARGET // (bsz * dim * dstate), triton.cdiv(length, 256)))
    seg_len, n_seg = cut(length, want, every)
    Af, Df, bias, out, last, ckpt = forward_buffers(u, A, D, delta_bias, chunk)
    if B.dim() > 2:  # (B, [G,] N, L) -> (B, [G,] L, N): one contiguous row of N per step
        B, C = B.transpose(-1, -2).contiguous(), C.transpose(-1, -2).contiguous()
        sB = (B.stride(0), B.stride(1) if B.dim() == 4 else 0, B.stride(-2))
        sC = (C.stride(0), C.stride(1) if C.dim() == 4 else 0, C.stride(-2))
    else:
        B, C, sB, sC = bc_operands(B, C)
    seg_h = u.new_empty(bsz, dim, n_seg, dstate, dtype=last.dtype)
    seg_s = u.new_empty(bsz, dim, n_seg, dtype=last.dtype)
    zz = z if z is not None else u
    args = (u, delta, Af, B, C, Df, z, bias, out, last, ckpt, h0, seg_h, seg_s,
            length, dim, dstate, dpg, seg_len, n_seg, *row_strides(u, delta, zz, out), *sB, *sC)
    for pass_, segs in ((1, n_seg - 1), (2, n_seg)):
        if segs:
            grid = (groups * triton.cdiv(dpg, block_d), bsz, segs)
            _scan_fwd_loop_kernel[grid](*args, SOFTPLUS=bool(softplus),
                                        VARYING_BC=B.dim() > 2, CHUNK=every, PASS=pass_,
                                        BLOCK_D=block_d, BLOCK_N=block_n, num_warps=1)
    return out, last, ckpt
