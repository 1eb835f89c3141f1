"""The selective scan (S6) as fused Triton kernels, forward and backward (chapter 7).

h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t,  y_t = C_t h_t + D u_t,  out = y * silu(z):
the semantics of `mambabook.selective.selective_scan_ref` (and mamba_ssm's
`selective_scan_fn`). Forward: one program per (batch, block of channels, segment of L)
loops over time with the state (BLOCK_D, N) in registers; segments are stitched through
their maps h -> exp(A S) h + H (two passes), so nothing of size (B, D, L, N) reaches memory.
`selective_scan_assoc` is the other forward: a `tl.associative_scan` over chunks of time.
Backward: per chunk, in reverse, recompute the states from checkpoints (B, D, L/CHUNK, N)
and the state gradient backwards: the "chunk" backward with associative scans over (channel,
state, step) tiles, the "rows" one (default) in the rows forward's layout, through segments
(MAMBABOOK_SCAN_BACKWARD=chunk|rows).
The "tile" forward loads T steps of BLOCK_D channels at once and runs one 2-D associative
scan per state n over the tile (the carry between tiles in registers); it saves the same
checkpoints (then T = CHUNK). The "rows" forward keeps each channel's T steps (one 16-byte
load) in one thread, so its scan is a sequential loop in registers, with no shuffles.
The "lanes" forward lays a warp's lanes along time (runs scanned in registers, then across
lanes); the "states" forward lays a channel's states across lanes (each lane's states walked
through time, y summed over the lanes by shuffles): the fastest in float32 and in 2-byte
types respectively on the H200.
MAMBABOOK_SCAN_FORWARD=loop|tile|rows|lanes|states|auto picks the forward that
selective_scan runs; auto (the default) times them once per shape on CUDA.
"""

from __future__ import annotations

import json
import os
import re
import warnings

import torch
import triton
import triton.language as tl

from ..selective import check_selective_scan_args
from . import check_runnable

MAX_DSTATE = 64  # largest N the kernels support (registers hold BLOCK_D x N x CHUNK)
LOG2E = 1.4426950408889634


@triton.jit
def _combine_fwd(a_l, b_l, a_r, b_r):
    """(a, b) o (a', b') = (a a', a' b + b'): apply the left step, then the right one."""
    return a_l * a_r, a_r * b_l + b_r


@triton.jit
def _combine_bwd(fa_r, pe_r, v_r, fa_l, pe_l, v_l):
    """Reverse scan for g_t = c_t + a_{t+1} g_{t+1}; a segment is (its first a, the product
    of its other a's, its g with no carry). tl.associative_scan(reverse=True) passes the
    right (later) segment first."""
    w = pe_l * fa_r
    return fa_l, w * pe_r, v_l + w * v_r


@triton.jit
def _softplus(x):
    # torch.nn.functional.softplus with threshold 20
    return tl.where(x <= 20.0, tl.log(1.0 + tl.exp(x)), x)


@triton.jit
def _unpack_bf16(x):
    """int32 holding two bfloat16 (the low one first in memory) as two float32: a bfloat16
    is the top half of a float32, so one shift or one AND each (Triton's own conversion
    spends about 1.5 instructions per value)."""
    return (x << 16).to(tl.float32, bitcast=True), (x & -65536).to(tl.float32, bitcast=True)


@triton.jit
def _channel_block(dpg, BLOCK_D: tl.constexpr):
    """Program axis 0 is (group, block of BLOCK_D channels inside the group): the group, the
    block's channel indices (int64, (BLOCK_D,)) and their mask (channels past the group)."""
    pid_gd = tl.program_id(0)
    nblk = tl.cdiv(dpg, BLOCK_D)  # blocks of channels per group
    grp = pid_gd // nblk
    d_in_grp = (pid_gd % nblk) * BLOCK_D + tl.arange(0, BLOCK_D)
    return grp, (grp * dpg + d_in_grp).to(tl.int64), d_in_grp < dpg


@triton.jit
def _selective_scan_fwd_assoc_kernel(
    # pointers
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, last_ptr, ckpt_ptr,
    # dimensions
    L, dim, dstate, dpg,
    # strides (the last dimension of u, delta, z, out, B, C is contiguous)
    s_u_b, s_u_d, s_dt_b, s_dt_d, s_z_b, s_z_d, s_o_b, s_o_d,
    s_B_b, s_B_g, s_B_n, s_C_b, s_C_g, s_C_n,
    # meta-parameters
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    VARYING_BC: tl.constexpr, SAVE_LAST: tl.constexpr, SAVE_CKPT: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
):
    grp, offs_d, mask_d = _channel_block(dpg, BLOCK_D)  # channels (BLOCK_D,)
    pid_b = tl.program_id(1).to(tl.int64)  # batch row
    offs_n = tl.arange(0, BLOCK_N)  # state indices, (BLOCK_N,)
    mask_n = offs_n < dstate
    mask_dn = mask_d[:, None] & mask_n[None, :]
    offs_t = tl.arange(0, CHUNK)  # time inside a chunk, (CHUNK,)

    # A in base-2 units: exp(delta A) = exp2(delta * A log2 e), (BLOCK_D, BLOCK_N)
    A2 = tl.load(A_ptr + offs_d[:, None] * dstate + offs_n[None, :], mask=mask_dn, other=0.0) * 1.4426950408889634
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0)
    if not VARYING_BC:
        Bc = tl.load(B_ptr + offs_d[:, None] * dstate + offs_n[None, :], mask=mask_dn, other=0.0).to(tl.float32)
        Cc = tl.load(C_ptr + offs_d[:, None] * dstate + offs_n[None, :], mask=mask_dn, other=0.0).to(tl.float32)

    u_base = u_ptr + pid_b * s_u_b + offs_d[:, None] * s_u_d  # (BLOCK_D, 1) pointers
    dt_base = delta_ptr + pid_b * s_dt_b + offs_d[:, None] * s_dt_d
    o_base = out_ptr + pid_b * s_o_b + offs_d[:, None] * s_o_d
    if HAS_Z:
        z_base = z_ptr + pid_b * s_z_b + offs_d[:, None] * s_z_d
    if VARYING_BC:
        B_base = B_ptr + pid_b * s_B_b + grp * s_B_g + offs_n[:, None] * s_B_n  # (BLOCK_N, 1)
        C_base = C_ptr + pid_b * s_C_b + grp * s_C_g + offs_n[:, None] * s_C_n
    n_chunks = tl.cdiv(L, CHUNK)
    ck_base = ckpt_ptr + ((pid_b * dim + offs_d[:, None]) * n_chunks) * dstate + offs_n[None, :]

    h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)  # the state, carried across chunks
    for c in range(0, n_chunks):
        t = c * CHUNK + offs_t  # absolute time, (CHUNK,)
        mask_t = t < L
        mask_dt = mask_d[:, None] & mask_t[None, :]  # (BLOCK_D, CHUNK)
        u = tl.load(u_base + t[None, :], mask=mask_dt, other=0.0).to(tl.float32)
        dt = tl.load(dt_base + t[None, :], mask=mask_dt, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt += bias[:, None]
        if SOFTPLUS:
            dt = _softplus(dt)
        dt = tl.where(mask_dt, dt, 0.0)  # padded steps: a = 1, b = 0, the state passes through
        if SAVE_CKPT:
            tl.store(ck_base + c * dstate, h, mask=mask_dn)
        if VARYING_BC:
            mask_nt = mask_n[:, None] & mask_t[None, :]
            Bt = tl.load(B_base + t[None, :], mask=mask_nt, other=0.0).to(tl.float32)  # (BLOCK_N, CHUNK)
            Ct = tl.load(C_base + t[None, :], mask=mask_nt, other=0.0).to(tl.float32)
            dBu = (dt * u)[:, None, :] * Bt[None, :, :]  # (BLOCK_D, BLOCK_N, CHUNK)
        else:
            dBu = (dt * u)[:, None, :] * Bc[:, :, None]
        dA = tl.exp2(dt[:, None, :] * A2[:, :, None])  # (BLOCK_D, BLOCK_N, CHUNK)
        aa, bb = tl.associative_scan((dA, dBu), axis=2, combine_fn=_combine_fwd)
        hs = aa * h[:, :, None] + bb  # h_t for every t of the chunk, (BLOCK_D, BLOCK_N, CHUNK)
        if VARYING_BC:
            y = tl.sum(hs * Ct[None, :, :], axis=1)  # (BLOCK_D, CHUNK)
        else:
            y = tl.sum(hs * Cc[:, :, None], axis=1)
        h = tl.sum(tl.where((offs_t == CHUNK - 1)[None, None, :], hs, 0.0), axis=2)  # last step
        if HAS_D:
            y += Dv[:, None] * u
        if HAS_Z:
            zz = tl.load(z_base + t[None, :], mask=mask_dt, other=0.0).to(tl.float32)
            y *= zz * tl.sigmoid(zz)
        tl.store(o_base + t[None, :], y.to(out_ptr.dtype.element_ty), mask=mask_dt)
    if SAVE_LAST:
        tl.store(last_ptr + (pid_b * dim + offs_d[:, None]) * dstate + offs_n[None, :], h, mask=mask_dn)


@triton.jit
def _selective_scan_fwd_tile_kernel(
    # pointers (B and C in their given layouts: (B, [G,] N, L), L contiguous, or (D, N))
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, last_ptr, ckpt_ptr,
    # dimensions (dpg: channels per group of B and C)
    L, dim, dstate, dpg,
    # strides (the last dimension of u, delta, z, out, B, C is contiguous)
    s_u_b, s_u_d, s_dt_b, s_dt_d, s_z_b, s_z_d, s_o_b, s_o_d,
    s_B_b, s_B_g, s_B_n, s_C_b, s_C_g, s_C_n,
    # meta-parameters (SAVE_CKPT needs T = the backward's CHUNK: one checkpoint per tile)
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    VARYING_BC: tl.constexpr, SAVE_CKPT: tl.constexpr, N: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, T: tl.constexpr,
):
    """The "tile" forward: T time steps of BLOCK_D channels per iteration, one state at a time.

    Per tile, u, delta, z are loaded once as (BLOCK_D, T) tiles (coalesced along L) and delta
    gets its bias and softplus once. Then, for each state n (unrolled, N constexpr): a_n =
    exp(delta A[:, n]), b_n = delta u B[n, :], both (BLOCK_D, T); a 2-D tl.associative_scan
    along time gives (prod a, h from a zero state); adding (prod a) * carry_n gives h_n
    at every step; y += h_n C[n, :]. carry_n (the state at the tile's end) lives in column n
    of a (BLOCK_D, BLOCK_N) register tensor. Every load of a tile is independent of the
    recurrence, so memory latency overlaps with the arithmetic of the scans (the loop forward
    waits one latency per time step instead).
    """
    grp, offs_d, mask_d = _channel_block(dpg, BLOCK_D)  # channels (BLOCK_D,)
    pid_b = tl.program_id(1).to(tl.int64)  # batch row
    offs_n = tl.arange(0, BLOCK_N)  # state indices, (BLOCK_N,)
    mask_dn = mask_d[:, None] & (offs_n < dstate)[None, :]
    offs_t = tl.arange(0, T)  # time inside a tile, (T,)
    is_last = (offs_t == T - 1)[None, :]  # the tile's last step, (1, T)

    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0)  # (BLOCK_D,)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0)
    u_base = u_ptr + pid_b * s_u_b + offs_d[:, None] * s_u_d  # (BLOCK_D, 1): row of u at t = 0
    dt_base = delta_ptr + pid_b * s_dt_b + offs_d[:, None] * s_dt_d
    o_base = out_ptr + pid_b * s_o_b + offs_d[:, None] * s_o_d
    if HAS_Z:
        z_base = z_ptr + pid_b * s_z_b + offs_d[:, None] * s_z_d
    if VARYING_BC:
        B_base = B_ptr + pid_b * s_B_b + grp * s_B_g  # B[b, g, 0, 0]: state n at + n * s_B_n
        C_base = C_ptr + pid_b * s_C_b + grp * s_C_g
    n_tiles = tl.cdiv(L, T)
    # checkpoints (B, D, n_tiles, N): the state before each tile, for the backward
    ck_base = ckpt_ptr + ((pid_b * dim + offs_d[:, None]) * n_tiles) * dstate + offs_n[None, :]

    hc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)  # carries: the state after each tile
    for c in range(0, n_tiles):
        t = c * T + offs_t  # absolute time, (T,)
        mask_t = t < L
        mask_dt = mask_d[:, None] & mask_t[None, :]  # (BLOCK_D, T)
        u = tl.load(u_base + t[None, :], mask=mask_dt, other=0.0).to(tl.float32)
        dt = tl.load(dt_base + t[None, :], mask=mask_dt, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt += bias[:, None]
        if SOFTPLUS:
            dt = _softplus(dt)
        dt = tl.where(mask_dt, dt, 0.0)  # padded steps: a = 1, b = 0, the state passes through
        dtu = dt * u
        if SAVE_CKPT:
            tl.store(ck_base + c * dstate, hc, mask=mask_dn)
        y = tl.zeros((BLOCK_D, T), dtype=tl.float32)
        for n in tl.static_range(N):
            sel = (offs_n == n)[None, :]  # column n of the carries, (1, BLOCK_N)
            A2n = tl.load(A_ptr + offs_d * dstate + n, mask=mask_d, other=0.0) * 1.4426950408889634
            if VARYING_BC:
                # B[b, g, n, t] for every channel of the block, (BLOCK_D, T): the same T values
                # in each row (served by L1), loaded straight into the tiles' layout (a (T,)
                # load would be moved across threads through shared memory, per n)
                Bn = tl.load(tl.broadcast_to(B_base + n * s_B_n + t[None, :], (BLOCK_D, T)),
                             mask=mask_dt, other=0.0).to(tl.float32)
                Cn = tl.load(tl.broadcast_to(C_base + n * s_C_n + t[None, :], (BLOCK_D, T)),
                             mask=mask_dt, other=0.0).to(tl.float32)
            else:
                Bn = tl.load(B_ptr + offs_d * dstate + n, mask=mask_d, other=0.0).to(tl.float32)[:, None]  # (BLOCK_D, 1)
                Cn = tl.load(C_ptr + offs_d * dstate + n, mask=mask_d, other=0.0).to(tl.float32)[:, None]
            a = tl.exp2(dt * A2n[:, None])  # exp(delta_t A[d, n]), (BLOCK_D, T)
            b = dtu * Bn  # delta_t u_t B_t[n], (BLOCK_D, T)
            aa, bb = tl.associative_scan((a, b), axis=1, combine_fn=_combine_fwd)
            carry = tl.sum(tl.where(sel, hc, 0.0), axis=1)  # state n before the tile, (BLOCK_D,)
            h = aa * carry[:, None] + bb  # state n at every step of the tile, (BLOCK_D, T)
            y += h * Cn
            h_end = tl.sum(tl.where(is_last, h, 0.0), axis=1)  # (BLOCK_D,)
            hc = tl.where(sel, h_end[:, None], hc)
        if HAS_D:
            y += Dv[:, None] * u
        if HAS_Z:
            zz = tl.load(z_base + t[None, :], mask=mask_dt, other=0.0).to(tl.float32)
            y *= zz * tl.sigmoid(zz)
        tl.store(o_base + t[None, :], y.to(out_ptr.dtype.element_ty), mask=mask_dt)
    tl.store(last_ptr + (pid_b * dim + offs_d[:, None]) * dstate + offs_n[None, :], hc, mask=mask_dn)


@triton.jit
def _selective_scan_fwd_rows_kernel(
    # pointers and strides as in the tile forward, plus the per-segment summaries
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, last_ptr, ckpt_ptr,
    seg_h_ptr, seg_s_ptr,
    L, dim, dstate, dpg, seg_len, n_seg,
    s_u_b, s_u_d, s_dt_b, s_dt_d, s_z_b, s_z_d, s_o_b, s_o_d,
    s_B_b, s_B_g, s_B_n, s_C_b, s_C_g, s_C_n,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    VARYING_BC: tl.constexpr, SAVE_CKPT: tl.constexpr, N: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, T: tl.constexpr, CHUNK: tl.constexpr, PASS: tl.constexpr,
    EVEN: tl.constexpr,
):
    """The "rows" forward: the tile forward with each thread owning whole rows of a tile.

    T is one 16-byte load (4 fp32 or 8 bf16 steps), so the compiler keeps a row's T steps in
    one thread and the scan along them is a plain sequential loop in registers: no shuffles
    (the tile forward spends about half its instructions on them). The state entering the
    tile is folded into the first step (b_0 += a_0 h), A is loaded once, and the next tile's
    u, delta, z are loaded before this tile's arithmetic. With EVEN (L a multiple of T, the
    channels a multiple of BLOCK_D) no load or store is masked.

    One thread per channel leaves few warps (B x D threads), so L is cut into n_seg segments
    of seg_len steps (a multiple of CHUNK), as in the loop forward: PASS 1 runs each segment
    but the last from a zero state and stores its end state H_k and S_k, the sum of its
    deltas (the segment maps h to exp(A S_k) h + H_k; no outputs, no C, no z); PASS 2 starts
    segment k from the composition of the maps before it and writes the outputs, the state
    every CHUNK steps (SAVE_CKPT: the loop forward's checkpoints) and, in the last segment,
    the last state.
    """
    grp, offs_d, mask_d = _channel_block(dpg, BLOCK_D)  # channels (BLOCK_D,)
    pid_b = tl.program_id(1).to(tl.int64)  # batch row
    seg = tl.program_id(2)  # segment of the sequence
    offs_n = tl.arange(0, BLOCK_N)
    mask_dn = mask_d[:, None] & (offs_n < dstate)[None, :]
    offs_t = tl.arange(0, T)
    is_first = (offs_t == 0)[None, :]
    is_last = (offs_t == T - 1)[None, :]
    dn_offs = offs_d[:, None] * dstate + offs_n[None, :]  # into (D, N)
    A2 = tl.load(A_ptr + dn_offs, mask=mask_dn, other=0.0) * 1.4426950408889634
    if not VARYING_BC:
        Bc = tl.load(B_ptr + dn_offs, mask=mask_dn, other=0.0).to(tl.float32)
        Cc = tl.load(C_ptr + dn_offs, mask=mask_dn, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0)
    u_base = u_ptr + pid_b * s_u_b + offs_d[:, None] * s_u_d  # (BLOCK_D, 1)
    dt_base = delta_ptr + pid_b * s_dt_b + offs_d[:, None] * s_dt_d
    z_base = z_ptr + pid_b * s_z_b + offs_d[:, None] * s_z_d
    o_base = out_ptr + pid_b * s_o_b + offs_d[:, None] * s_o_d
    B_base = B_ptr + pid_b * s_B_b + grp * s_B_g  # B[b, g, 0, 0] (time-varying B only)
    C_base = C_ptr + pid_b * s_C_b + grp * s_C_g
    ck_base = ckpt_ptr + ((pid_b * dim + offs_d[:, None]) * tl.cdiv(L, CHUNK)) * dstate + offs_n[None, :]
    sh_base = seg_h_ptr + ((pid_b * dim + offs_d[:, None]) * n_seg) * dstate + offs_n[None, :]
    ss_base = seg_s_ptr + (pid_b * dim + offs_d) * n_seg
    hc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)  # the state after each tile
    if PASS == 2:
        for j in range(0, seg):  # the state entering this segment
            S_j = tl.load(ss_base + j, mask=mask_d, other=0.0)
            hc = tl.exp2(S_j[:, None] * A2) * hc + tl.load(sh_base + j * dstate, mask=mask_dn, other=0.0)
    else:
        S = tl.zeros((BLOCK_D,), dtype=tl.float32)  # sum of the segment's deltas
    c0 = (seg * seg_len) // T  # the segment's tiles: c0 .. c1 - 1
    c1 = tl.cdiv(tl.minimum(seg * seg_len + seg_len, L), T)
    # the first tile's loads; every iteration then loads the next tile before its arithmetic
    t_first = c0 * T + offs_t
    m0 = mask_d[:, None] & (t_first < L)[None, :]
    u_nx = _load_even(u_base + t_first[None, :], m0, EVEN)
    dt_nx = _load_even(dt_base + t_first[None, :], m0, EVEN)
    if HAS_Z and PASS == 2:
        z_nx = _load_even(z_base + t_first[None, :], m0, EVEN)
    for c in range(c0, c1):
        t = c * T + offs_t
        mask_dt = mask_d[:, None] & (t < L)[None, :]
        u = u_nx.to(tl.float32)
        dt = dt_nx.to(tl.float32)
        if HAS_Z and PASS == 2:
            zz = z_nx.to(tl.float32)
        c_nx = tl.where(c + 1 < c1, c + 1, c0)  # after the last tile: the first again (unused)
        tn = c_nx * T + offs_t
        mn = mask_d[:, None] & (tn < L)[None, :]
        u_nx = _load_even(u_base + tn[None, :], mn, EVEN)
        dt_nx = _load_even(dt_base + tn[None, :], mn, EVEN)
        if HAS_Z and PASS == 2:
            z_nx = _load_even(z_base + tn[None, :], mn, EVEN)
        if HAS_BIAS:
            dt += bias[:, None]
        if SOFTPLUS:
            dt = _softplus(dt)
        if not EVEN:
            dt = tl.where(mask_dt, dt, 0.0)  # padded steps: a = 1, b = 0
        dtu = dt * u
        if PASS == 1:
            S += tl.sum(dt, axis=1)
        if SAVE_CKPT and PASS == 2:
            if (c * T) % CHUNK == 0:
                tl.store(ck_base + ((c * T) // CHUNK) * dstate, hc, mask=mask_dn)
        y = tl.zeros((BLOCK_D, T), dtype=tl.float32)
        for n in tl.static_range(N):
            sel = (offs_n == n)[None, :]  # column n of the (BLOCK_D, BLOCK_N) tensors
            A2n = tl.sum(tl.where(sel, A2, 0.0), axis=1)  # in-thread: a register pick
            if VARYING_BC:
                Bn = _load_even(tl.broadcast_to(B_base + n * s_B_n + t[None, :], (BLOCK_D, T)),
                                mask_dt, EVEN).to(tl.float32)
            else:
                Bn = tl.sum(tl.where(sel, Bc, 0.0), axis=1)[:, None]
            a = tl.exp2(dt * A2n[:, None])  # (BLOCK_D, T)
            carry = tl.sum(tl.where(sel, hc, 0.0), axis=1)  # state n entering the tile
            b = tl.where(is_first, a * carry[:, None], 0.0) + dtu * Bn
            _, h = tl.associative_scan((a, b), axis=1, combine_fn=_combine_fwd)
            if PASS == 2:
                if VARYING_BC:
                    Cn = _load_even(tl.broadcast_to(C_base + n * s_C_n + t[None, :], (BLOCK_D, T)),
                                    mask_dt, EVEN).to(tl.float32)
                else:
                    Cn = tl.sum(tl.where(sel, Cc, 0.0), axis=1)[:, None]
                y += h * Cn
            hc = tl.where(sel, tl.sum(tl.where(is_last, h, 0.0), axis=1)[:, None], hc)
        if PASS == 2:
            if HAS_D:
                y += Dv[:, None] * u
            if HAS_Z:
                y *= zz * tl.sigmoid(zz)
            tl.store(o_base + t[None, :], y.to(out_ptr.dtype.element_ty), mask=None if EVEN else mask_dt)
    if PASS == 1:
        tl.store(sh_base + seg * dstate, hc, mask=mask_dn)
        tl.store(ss_base + seg, S, mask=mask_d)
    elif seg == n_seg - 1:
        tl.store(last_ptr + (pid_b * dim + offs_d[:, None]) * dstate + offs_n[None, :], hc, mask=mask_dn)


@triton.jit
def _lanes_load(row, t0, mask_d, L, LT: tl.constexpr, R: tl.constexpr, V: tl.constexpr,
                EVEN: tl.constexpr, PAIRS: tl.constexpr):
    """One chunk of CPW rows of a (B, D, L) tensor (row: (CPW, 1, 1) pointers; a (CPW, 1, 1)
    zero offset for B or C, the same for every channel), as R (CPW, LT, V) float32 pieces:
    lane (c, j) holds steps t0 + j R V .. t0 + j R V + R V - 1 of channel c, piece r the
    r-th V of them. Each piece is one 16-byte load per lane, so Triton keeps its V steps in
    one thread and lays the CPW x LT runs along the lanes.

    PAIRS (unmasked loads, even offsets): bfloat16 is read as int32 pairs and widened with
    one shift or one AND per value (a bfloat16 is the top half of a float32); Triton's own
    conversion spends about 1.5 instructions per value."""
    out = ()
    if PAIRS and row.dtype.element_ty == tl.bfloat16:
        row32 = row.to(tl.pointer_type(tl.int32), bitcast=True)
        t = (t0 // 2 + tl.arange(0, LT)[None, :, None] * (R * V // 2)
             + tl.arange(0, V // 2)[None, None, :])
        for r in tl.static_range(R):
            x = tl.load(row32 + t + r * (V // 2))
            lo, hi = _unpack_bf16(x)
            out = out + (tl.reshape(tl.join(lo, hi), (x.shape[0], LT, V)),)
    else:
        t = t0 + tl.arange(0, LT)[None, :, None] * (R * V) + tl.arange(0, V)[None, None, :]
        for r in tl.static_range(R):
            x = _load_even(row + t + r * V, mask_d & (t + r * V < L), EVEN)
            out = out + (x.to(tl.float32),)
    return out


@triton.jit
def _lanes_states(dts, dtus, Bx, A2n, h0, j, prev, last_lane, is_last, R: tl.constexpr,
                  VARYING_BC: tl.constexpr):
    """One state's h over a chunk of the lanes kernels, by the three phases: each lane's run
    from a zero state (P = product of a, H = partial state; 2 instructions per step), the
    runs' summaries (P, H at a run's end) scanned across a channel's lanes, then
    h = H + P h_in (1 per step).

    dts, dtus: R pieces (CPW, LT, V) of delta and delta u; Bx: R pieces of B (time-varying)
    or one (CPW, 1, 1) value; A2n: (CPW, 1, 1) A log2(e); h0: (CPW, LT) the state entering
    the chunk. Returns the pieces of a, b = delta u B and h, the state entering each piece
    of each lane's run (R of (CPW, LT); the first enters the run), and the state after the
    chunk (in every lane of a channel)."""
    As = ()
    bs = ()
    Ps = ()
    Hs = ()
    p_run = tl.full(h0.shape, 1.0, tl.float32)  # the run's summary so far
    h_run = tl.zeros(h0.shape, dtype=tl.float32)
    for r in tl.static_range(R):
        a = tl.exp2(dts[r] * A2n)
        if VARYING_BC:
            b = dtus[r] * Bx[r]
        else:
            b = dtus[r] * Bx
        P, H = tl.associative_scan((a, b), axis=2, combine_fn=_combine_fwd)
        p = tl.sum(tl.where(is_last, P, 0.0), axis=2)
        h_run = p * h_run + tl.sum(tl.where(is_last, H, 0.0), axis=2)
        p_run = p_run * p
        As = As + (a,)
        bs = bs + (b,)
        Ps = Ps + (P,)
        Hs = Hs + (H,)
    Pi, Hi = tl.associative_scan((p_run, h_run), axis=1, combine_fn=_combine_fwd)
    h_end = Pi * h0 + Hi  # the state after each lane's run
    h_run_in = tl.where(j == 0, h0, tl.gather(h_end, prev, axis=1))
    hs = ()
    h_ins = ()
    h_in = h_run_in
    for r in tl.static_range(R):
        h = Hs[r] + Ps[r] * h_in[:, :, None]
        hs = hs + (h,)
        h_ins = h_ins + (h_in,)
        h_in = tl.sum(tl.where(is_last, h, 0.0), axis=2)
    return As, bs, hs, h_ins, tl.gather(h_end, last_lane, axis=1)


@triton.jit
def _runs_in_rows(p, CPW: tl.constexpr, LT: tl.constexpr, R: tl.constexpr, V: tl.constexpr):
    """R (CPW, LT, V) pieces (lane j's piece r: steps j R V + r V ..) as (CPW, LT R, V) rows in
    time order (row j R + r)."""
    if R == 2:
        x = tl.join(p[0], p[1])  # (CPW, LT, V, 2)
        return x.permute(0, 1, 3, 2).reshape(CPW, LT * 2, V)
    else:  # R == 4: (p0, p2), (p1, p3) -> [.., k1, k2] = piece 2 k1 + k2
        x = tl.join(tl.join(p[0], p[2]), tl.join(p[1], p[3]))  # (CPW, LT, V, 2, 2)
        return x.permute(0, 1, 3, 4, 2).reshape(CPW, LT * 4, V)


@triton.jit
def _selective_scan_fwd_lanes_kernel(
    # pointers and strides as in the rows forward (no segments)
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, last_ptr, ckpt_ptr,
    L, dim, dstate, dpg,
    s_u_b, s_u_d, s_dt_b, s_dt_d, s_z_b, s_z_d, s_o_b, s_o_d,
    s_B_b, s_B_g, s_B_n, s_C_b, s_C_g, s_C_n,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    VARYING_BC: tl.constexpr, SAVE_CKPT: tl.constexpr, N: tl.constexpr, CHUNK: tl.constexpr,
    CPW: tl.constexpr, T: tl.constexpr, V: tl.constexpr, EVEN: tl.constexpr,
    PAIRS: tl.constexpr,
):
    """The "lanes" forward: one warp per CPW channels, its lanes along time.

    Each channel gets LT = 32 / CPW lanes. A chunk of LT T steps (T = R V: R loads of V
    elements, 16 bytes each) is cut into LT runs of T consecutive steps, one per lane. For
    each state a lane scans its run in registers from a zero state (the running product P
    of a and the partial state H: 2 instructions per step), the LT lanes of a channel scan
    their runs' summaries (P and H at the run's end) with shuffles, and each lane then adds
    what entered its run: h_t = H_t + P_t h_in, one FMA per step. The state entering the
    chunk (one (CPW, LT) tensor per state, the same value in a channel's lanes) is carried
    in a tuple; a channel's last lane's end state becomes the next chunk's.

    Unlike the rows forward (a thread per channel: too few threads unless L is cut into
    segments that are swept twice) every step is computed once, by B x D x LT threads. The
    CPW channels of a warp load the same B and C steps in the same instruction, so the
    cache serves each once; with CPW = 1 every channel reads all of B and C through L2 (at
    B=8, D=1536, L=4K, fp32: 6.4 GB, 5.5 TB/s over the 1.17 ms that launch took: most
    likely bound by L2, not profiled; 2-8 channels per warp ran in 0.81-0.95 ms). The state
    before every CHUNK steps is saved when SAVE_CKPT (CHUNK a multiple of T, or a multiple of
    V dividing T: then several per run, the states entering its pieces): the checkpoints
    of the other forwards. With EVEN (L a multiple of LT T, the channels a multiple of CPW)
    no load or store is masked.
    """
    LT: tl.constexpr = 32 // CPW
    R: tl.constexpr = T // V
    # checkpoints: CHUNK a multiple of T (CPR = 1: the state entering a run, where the run
    # starts a chunk) or of V dividing T (CPR = T / CHUNK per run, every STEP_R pieces)
    CPR: tl.constexpr = T // CHUNK if CHUNK < T else 1
    STEP_R: tl.constexpr = CHUNK // V if CHUNK < T else R
    G: tl.constexpr = 4 if N % 4 == 0 else 1  # states per checkpoint store
    ROWS_OUT: tl.constexpr = EVEN and (R == 2 or R == 4)  # output stored as rows (below)
    grp, offs_d, mask_d = _channel_block(dpg, CPW)  # channels (CPW,)
    pid_b = tl.program_id(1).to(tl.int64)  # batch row
    d3 = offs_d[:, None, None]
    m3 = mask_d[:, None, None]
    j = tl.arange(0, LT)[None, :]  # (1, LT): a lane's place along time
    zero2 = tl.zeros((CPW, LT), dtype=tl.int32)
    prev = tl.maximum(j - 1, 0) + zero2
    last_lane = (LT - 1) + zero2
    is_last = (tl.arange(0, V) == V - 1)[None, None, :]
    steps = tl.arange(0, LT)[None, :, None] * T + tl.arange(0, V)[None, None, :]  # (1, LT, V)
    if HAS_D:
        Dv = tl.load(D_ptr + d3, mask=m3, other=0.0)
    bias = 0.0  # unused without HAS_BIAS
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d3, mask=m3, other=0.0)
    u_row = u_ptr + pid_b * s_u_b + d3 * s_u_d
    dt_row = delta_ptr + pid_b * s_dt_b + d3 * s_dt_d
    z_row = z_ptr + pid_b * s_z_b + d3 * s_z_d
    o_row = out_ptr + pid_b * s_o_b + d3 * s_o_d
    B_row = B_ptr + pid_b * s_B_b + grp * s_B_g + 0 * d3  # the same steps for every channel
    C_row = C_ptr + pid_b * s_C_b + grp * s_C_g + 0 * d3
    ck_row = ckpt_ptr + (pid_b * dim + offs_d[:, None]) * tl.cdiv(L, CHUNK) * N  # (CPW, 1)
    hc = ()  # per state: the state entering the chunk, in each of a channel's lanes
    for _n in tl.static_range(N):
        hc = hc + (tl.zeros((CPW, LT), dtype=tl.float32),)
    for c in range(0, tl.cdiv(L, LT * T)):
        t0 = c * (LT * T)
        us = _lanes_load(u_row, t0, m3, L, LT, R, V, EVEN, PAIRS)
        dts = _lanes_load(dt_row, t0, m3, L, LT, R, V, EVEN, PAIRS)
        dts_ = ()
        dtus = ()
        ys = ()
        for r in tl.static_range(R):
            dt, _ = _delta_of(dts[r], bias, t0 + r * V + steps < L, HAS_BIAS, SOFTPLUS, EVEN)
            dts_ = dts_ + (dt,)
            dtus = dtus + (dt * us[r],)
            if HAS_D:
                ys = ys + (Dv * us[r],)
            else:
                ys = ys + (tl.zeros_like(dt),)
        hc_new = ()
        ck_group = ()  # the states entering the runs' checkpointed pieces, G states (SAVE_CKPT)
        for n in tl.static_range(N):
            A2n = tl.load(A_ptr + d3 * dstate + n, mask=m3, other=0.0) * 1.4426950408889634
            if VARYING_BC:
                Bx = _lanes_load(B_row + n * s_B_n, t0, m3, L, LT, R, V, EVEN, PAIRS)
                Cx = _lanes_load(C_row + n * s_C_n, t0, m3, L, LT, R, V, EVEN, PAIRS)
            else:
                Bx = tl.load(B_ptr + d3 * dstate + n, mask=m3, other=0.0).to(tl.float32)
                Cx = tl.load(C_ptr + d3 * dstate + n, mask=m3, other=0.0).to(tl.float32)
            _, _, hs, h_ins, h_next = _lanes_states(dts_, dtus, Bx, A2n, hc[n], j, prev,
                                                    last_lane, is_last, R, VARYING_BC)
            hc_new = hc_new + (h_next,)
            if SAVE_CKPT:  # the states entering the run's CPR checkpointed pieces
                for q in tl.static_range(CPR):
                    ck_group = ck_group + (h_ins[q * STEP_R],)
                if n % G == G - 1:  # G states a store: one 16-byte store per lane when G = 4
                    for q in tl.static_range(CPR):
                        t_ck = t0 + j * T + q * CHUNK
                        ck_mask = mask_d[:, None] & ((t_ck % CHUNK) == 0) & (t_ck < L)
                        ck_at = ck_row + (t_ck // CHUNK) * N + (n - (G - 1))
                        if G == 4:
                            # join appends the new axis last: (a, c), (b, d) -> a, b, c, d
                            v = tl.join(tl.join(ck_group[q], ck_group[2 * CPR + q]),
                                        tl.join(ck_group[CPR + q], ck_group[3 * CPR + q]))
                            tl.store(ck_at[:, :, None] + tl.arange(0, 4)[None, None, :],
                                     v.reshape(CPW, LT, 4), mask=ck_mask[:, :, None])
                        else:
                            tl.store(ck_at, ck_group[q], mask=ck_mask)
                    ck_group = ()
            yn = ()
            for r in tl.static_range(R):
                if VARYING_BC:
                    yn = yn + (ys[r] + hs[r] * Cx[r],)
                else:
                    yn = yn + (ys[r] + hs[r] * Cx,)
            ys = yn
        hc = hc_new
        if HAS_Z:
            zs = _lanes_load(z_row, t0, m3, L, LT, R, V, EVEN, PAIRS)
        outs = ()
        for r in tl.static_range(R):
            y = ys[r]
            if HAS_Z:
                y *= zs[r] * tl.sigmoid(zs[r])
            if ROWS_OUT:
                outs = outs + (y.to(out_ptr.dtype.element_ty),)
            else:
                t = t0 + r * V + steps
                tl.store(o_row + t, y.to(out_ptr.dtype.element_ty),
                         mask=None if EVEN else m3 & (t < L))
        if ROWS_OUT:  # the chunk as LT R rows of V steps, in time order,
            # one row per lane: each store instruction writes 32 lanes' consecutive 16 bytes
            tr = t0 + (tl.arange(0, LT * R)[None, :, None] * V + tl.arange(0, V)[None, None, :])
            tr = tl.max_contiguous(tl.multiple_of(tr, [1, V, V]), [1, 1, V])
            tl.store(o_row + tr, _runs_in_rows(outs, CPW, LT, R, V))
    last_row = last_ptr + (pid_b * dim + offs_d[:, None]) * dstate + 0 * j  # (CPW, LT)
    for n in tl.static_range(N):
        tl.store(last_row + n, hc[n], mask=mask_d[:, None] & (j == 0))


@triton.jit
def _selective_scan_bwd_kernel(
    # pointers: inputs
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ckpt_ptr, dout_ptr,
    # pointers: gradients (dA_part, dD_part, dbias_part: per batch row, summed by the wrapper;
    # dB, dC: float32 accumulated with atomics when time-varying, per batch row otherwise)
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
    # dimensions
    L, dim, dstate, dpg,
    # strides (last dimensions contiguous; du, ddelta, dz share u's layout)
    s_u_b, s_u_d, s_dt_b, s_dt_d, s_z_b, s_z_d, s_do_b, s_do_d,
    s_B_b, s_B_g, s_B_n, s_C_b, s_C_g, s_C_n, s_dB_b, s_dB_g, s_dB_n,
    # meta-parameters
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    VARYING_BC: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
):
    grp, offs_d, mask_d = _channel_block(dpg, BLOCK_D)  # channels (BLOCK_D,)
    pid_b = tl.program_id(1).to(tl.int64)  # batch row
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < dstate
    mask_dn = mask_d[:, None] & mask_n[None, :]
    offs_t = tl.arange(0, CHUNK)
    dn_offs = offs_d[:, None] * dstate + offs_n[None, :]  # (BLOCK_D, BLOCK_N) into (D, N)

    A = tl.load(A_ptr + dn_offs, mask=mask_dn, other=0.0)
    A2 = A * 1.4426950408889634
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0)
    if not VARYING_BC:
        Bc = tl.load(B_ptr + dn_offs, mask=mask_dn, other=0.0).to(tl.float32)
        Cc = tl.load(C_ptr + dn_offs, mask=mask_dn, other=0.0).to(tl.float32)
        dB_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
        dC_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)

    row_u = pid_b * s_u_b + offs_d[:, None] * s_u_d  # (BLOCK_D, 1): u, du, ddelta (u's layout)
    row_dt = pid_b * s_dt_b + offs_d[:, None] * s_dt_d
    row_do = pid_b * s_do_b + offs_d[:, None] * s_do_d
    if HAS_Z:
        row_z = pid_b * s_z_b + offs_d[:, None] * s_z_d  # z and dz
    if VARYING_BC:
        row_B = pid_b * s_B_b + grp * s_B_g + offs_n[:, None] * s_B_n  # (BLOCK_N, 1)
        row_C = pid_b * s_C_b + grp * s_C_g + offs_n[:, None] * s_C_n
        row_dB = pid_b * s_dB_b + grp * s_dB_g + offs_n[:, None] * s_dB_n  # dB and dC
    n_chunks = tl.cdiv(L, CHUNK)
    ck_base = ckpt_ptr + ((pid_b * dim + offs_d[:, None]) * n_chunks) * dstate + offs_n[None, :]

    dA_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dbias_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    carry = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)  # a_{t+1} g_{t+1} from the chunk after
    for ci in range(0, n_chunks):
        c = n_chunks - 1 - ci  # chunks in reverse order
        t = c * CHUNK + offs_t
        mask_t = t < L
        mask_dt = mask_d[:, None] & mask_t[None, :]
        u = tl.load(u_ptr + row_u + t[None, :], mask=mask_dt, other=0.0).to(tl.float32)
        dt_raw = tl.load(delta_ptr + row_dt + t[None, :], mask=mask_dt, other=0.0).to(tl.float32)
        dout = tl.load(dout_ptr + row_do + t[None, :], mask=mask_dt, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt_raw += bias[:, None]
        if SOFTPLUS:
            dt = tl.where(mask_dt, _softplus(dt_raw), 0.0)
        else:
            dt = tl.where(mask_dt, dt_raw, 0.0)
        h0 = tl.load(ck_base + c * dstate, mask=mask_dn, other=0.0)  # state before the chunk
        if VARYING_BC:
            mask_nt = mask_n[:, None] & mask_t[None, :]
            Bt = tl.load(B_ptr + row_B + t[None, :], mask=mask_nt, other=0.0).to(tl.float32)
            Ct = tl.load(C_ptr + row_C + t[None, :], mask=mask_nt, other=0.0).to(tl.float32)
            Bx = Bt[None, :, :]  # (1, BLOCK_N, CHUNK)
            Cx = Ct[None, :, :]
        else:
            Bx = Bc[:, :, None]  # (BLOCK_D, BLOCK_N, 1)
            Cx = Cc[:, :, None]
        # recompute the states of the chunk
        dA = tl.exp2(dt[:, None, :] * A2[:, :, None])  # (BLOCK_D, BLOCK_N, CHUNK)
        dBu = (dt * u)[:, None, :] * Bx
        aa, bb = tl.associative_scan((dA, dBu), axis=2, combine_fn=_combine_fwd)
        hs = aa * h0[:, :, None] + bb  # h_t, (BLOCK_D, BLOCK_N, CHUNK)
        # through out = (y + D u) * silu(z)
        if HAS_Z:
            zz = tl.load(z_ptr + row_z + t[None, :], mask=mask_dt, other=0.0).to(tl.float32)
            sz = tl.sigmoid(zz)
            y = tl.sum(hs * Cx, axis=1)
            if HAS_D:
                y += Dv[:, None] * u
            dz = dout * y * sz * (1.0 + zz * (1.0 - sz))
            tl.store(dz_ptr + row_z + t[None, :], dz.to(dz_ptr.dtype.element_ty), mask=mask_dt)
            dy = dout * zz * sz
        else:
            dy = dout
        dy = tl.where(mask_dt, dy, 0.0)  # (BLOCK_D, CHUNK)
        du = tl.zeros((BLOCK_D, CHUNK), dtype=tl.float32)
        if HAS_D:
            dD_acc += tl.sum(dy * u, axis=1)
            du += dy * Dv[:, None]
        # C: y_t = sum_n C_t[n] h_t[n]
        if VARYING_BC:
            dCt = tl.sum(dy[:, None, :] * hs, axis=0)  # (BLOCK_N, CHUNK)
            tl.atomic_add(dC_ptr + row_dB + t[None, :], dCt, mask=mask_n[:, None] & mask_t[None, :], sem="relaxed")
        else:
            dC_acc += tl.sum(dy[:, None, :] * hs, axis=2)
        # g_t = dL/dh_t = C_t dy_t + a_{t+1} g_{t+1}: a reverse scan with the carry at the end
        cv = dy[:, None, :] * Cx + tl.where((offs_t == CHUNK - 1)[None, None, :], carry[:, :, None], 0.0)
        ones = tl.full((BLOCK_D, BLOCK_N, CHUNK), 1.0, tl.float32)
        _, _, g = tl.associative_scan((dA, ones, cv), axis=2, combine_fn=_combine_bwd, reverse=True)
        carry = tl.sum(tl.where((offs_t == 0)[None, None, :], dA * g, 0.0), axis=2)
        # a_t h_{t-1} = h_t - b_t; da_t/d delta_t = A a_t; db_t/d delta_t = B_t u_t
        gh = g * (hs - dBu)  # (BLOCK_D, BLOCK_N, CHUNK)
        dA_acc += tl.sum(gh * dt[:, None, :], axis=2)
        gB = tl.sum(g * Bx, axis=1)  # (BLOCK_D, CHUNK)
        ddt = tl.sum(gh * A[:, :, None], axis=1) + gB * u
        du += gB * dt
        if VARYING_BC:
            dBt = tl.sum(g * (dt * u)[:, None, :], axis=0)  # (BLOCK_N, CHUNK)
            tl.atomic_add(dB_ptr + row_dB + t[None, :], dBt, mask=mask_n[:, None] & mask_t[None, :], sem="relaxed")
        else:
            dB_acc += tl.sum(g * (dt * u)[:, None, :], axis=2)
        if SOFTPLUS:
            ddt = ddt * tl.sigmoid(dt_raw)
        ddt = tl.where(mask_dt, ddt, 0.0)
        if HAS_BIAS:
            dbias_acc += tl.sum(ddt, axis=1)
        tl.store(du_ptr + row_u + t[None, :], du.to(du_ptr.dtype.element_ty), mask=mask_dt)
        tl.store(ddelta_ptr + row_u + t[None, :], ddt.to(ddelta_ptr.dtype.element_ty), mask=mask_dt)
    part_dn = (pid_b * dim + offs_d[:, None]) * dstate + offs_n[None, :]  # into (B, D, N)
    tl.store(dA_ptr + part_dn, dA_acc, mask=mask_dn)
    if not VARYING_BC:
        tl.store(dB_ptr + part_dn, dB_acc, mask=mask_dn)
        tl.store(dC_ptr + part_dn, dC_acc, mask=mask_dn)
    if HAS_D:
        tl.store(dD_ptr + pid_b * dim + offs_d, dD_acc, mask=mask_d)
    if HAS_BIAS:
        tl.store(dbias_ptr + pid_b * dim + offs_d, dbias_acc, mask=mask_d)


@triton.jit
def _selective_scan_bwd_lanes_kernel(
    # pointers and strides as in the chunk backward
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ckpt_ptr, dout_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
    L, dim, dstate, dpg,
    s_u_b, s_u_d, s_dt_b, s_dt_d, s_z_b, s_z_d, s_do_b, s_do_d,
    s_B_b, s_B_g, s_B_n, s_C_b, s_C_g, s_C_n, s_dB_b, s_dB_g, s_dB_n,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    VARYING_BC: tl.constexpr, N: tl.constexpr, CHUNK: tl.constexpr,
    CPW: tl.constexpr, BD: tl.constexpr, T: tl.constexpr, V: tl.constexpr,
):
    """The "lanes" backward (opt-in, MAMBABOOK_SCAN_BACKWARD=lanes; slower than the rows
    backward on the H200, see BWD_LANES): the lanes forward's layout walked through the chunks
    in reverse.

    A program holds BD channels of one batch row (CPW per warp, LT = 32 / CPW lanes along
    time each, runs of T steps per lane). Per chunk (LT T steps, a multiple of the
    checkpoint interval CHUNK) and state it recomputes the states from the chunk's first
    checkpoint with the forward's three phases, then runs the same three phases backwards
    for k_t = a_t g_t = a_t (C_t dy_t + k_{t+1}) (g_t = dL/dh_t): each lane from the end of
    its run with k = 0 (g from zero, and Q_t = the product of the a's after t), a reverse
    scan of the runs' maps k -> q k + K across lanes, then g_t = G_t + Q_t k_in. Every step
    is computed once and nothing goes through scratch memory. dB and dC of time-varying B, C
    are summed over the program's BD channels (shuffles within a warp, shared memory across
    warps) before one atomic add per (program, state, step); the other sums are kept per
    channel and written once (dA, dD, dbias and (D, N) dB, dC: per batch row, summed by
    the wrapper). Every load and store is masked (L and D need not be multiples).
    """
    LT: tl.constexpr = 32 // CPW
    R: tl.constexpr = T // V
    grp, offs_d, mask_d = _channel_block(dpg, BD)  # channels (BD,)
    pid_b = tl.program_id(1).to(tl.int64)  # batch row
    d3 = offs_d[:, None, None]
    m3 = mask_d[:, None, None]
    j = tl.arange(0, LT)[None, :]  # (1, LT): a lane's place along time
    zero2 = tl.zeros((BD, LT), dtype=tl.int32)
    prev = tl.maximum(j - 1, 0) + zero2
    nxt = tl.minimum(j + 1, LT - 1) + zero2
    col = tl.arange(0, V)[None, None, :]
    is_last = col == V - 1
    steps = tl.arange(0, LT)[None, :, None] * T + col  # (1, LT, V): a piece's steps in a chunk
    steps2 = tl.arange(0, LT)[:, None] * T + tl.arange(0, V)[None, :]  # (LT, V): after sum over channels
    if HAS_D:
        Dv = tl.load(D_ptr + d3, mask=m3, other=0.0)
    bias = 0.0  # unused without HAS_BIAS
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d3, mask=m3, other=0.0)
    u_row = u_ptr + pid_b * s_u_b + d3 * s_u_d
    du_row = du_ptr + pid_b * s_u_b + d3 * s_u_d  # du, ddelta: u's layout
    ddt_row = ddelta_ptr + pid_b * s_u_b + d3 * s_u_d
    dt_row = delta_ptr + pid_b * s_dt_b + d3 * s_dt_d
    z_row = z_ptr + pid_b * s_z_b + d3 * s_z_d
    dz_row = dz_ptr + pid_b * s_z_b + d3 * s_z_d
    do_row = dout_ptr + pid_b * s_do_b + d3 * s_do_d
    B_row = B_ptr + pid_b * s_B_b + grp * s_B_g + 0 * d3  # the same steps for every channel
    C_row = C_ptr + pid_b * s_C_b + grp * s_C_g + 0 * d3
    dB_row = dB_ptr + pid_b * s_dB_b + grp * s_dB_g  # dB and dC (time-varying)
    dC_row = dC_ptr + pid_b * s_dB_b + grp * s_dB_g
    ck_row = ckpt_ptr + (pid_b * dim + offs_d[:, None]) * tl.cdiv(L, CHUNK) * dstate + 0 * j
    zeros2 = tl.zeros((BD, LT), dtype=tl.float32)
    kc = ()  # per state: k = a g at the first step after the chunk, in every lane
    dA_acc = ()
    dB_acc = ()
    dC_acc = ()
    for _n in tl.static_range(N):
        kc = kc + (zeros2,)
        dA_acc = dA_acc + (zeros2,)
        if not VARYING_BC:
            dB_acc = dB_acc + (zeros2,)
            dC_acc = dC_acc + (zeros2,)
    dD_acc = zeros2
    dbias_acc = zeros2
    n_chunks = tl.cdiv(L, LT * T)
    for ci in range(0, n_chunks):
        c = n_chunks - 1 - ci  # chunks in reverse order
        t0 = c * (LT * T)
        us = _lanes_load(u_row, t0, m3, L, LT, R, V, False, False)
        raws = _lanes_load(dt_row, t0, m3, L, LT, R, V, False, False)
        dos = _lanes_load(do_row, t0, m3, L, LT, R, V, False, False)
        if HAS_Z:
            zs = _lanes_load(z_row, t0, m3, L, LT, R, V, False, False)
        dts = ()
        dtus = ()
        dys = ()
        ys = ()
        raws_ = ()  # delta + bias, for the softplus' derivative
        for r in tl.static_range(R):
            ok = m3 & (t0 + r * V + steps < L)
            dt, raw = _delta_of(raws[r], bias, ok, HAS_BIAS, SOFTPLUS, False)
            raws_ = raws_ + (raw,)
            dts = dts + (dt,)
            dtus = dtus + (dt * us[r],)
            if HAS_Z:
                dy = dos[r] * zs[r] * tl.sigmoid(zs[r])
            else:
                dy = dos[r]
            dys = dys + (tl.where(ok, dy, 0.0),)
            if HAS_D:
                ys = ys + (Dv * us[r],)
            else:
                ys = ys + (tl.zeros_like(dt),)
        dus = ()  # sum over states of g B
        dds = ()  # sum over states of A g a h_{t-1}
        for r in tl.static_range(R):
            dus = dus + (tl.zeros_like(dts[r]),)
            dds = dds + (tl.zeros_like(dts[r]),)
        kc_new = ()
        dA_new = ()
        dB_new = ()
        dC_new = ()
        for n in tl.static_range(N):
            An = tl.load(A_ptr + d3 * dstate + n, mask=m3, other=0.0)
            A2n = An * 1.4426950408889634
            if VARYING_BC:
                Bs = _lanes_load(B_row + n * s_B_n, t0, m3, L, LT, R, V, False, False)
                Cs = _lanes_load(C_row + n * s_C_n, t0, m3, L, LT, R, V, False, False)
                Bx = Bs
            else:
                Bv = tl.load(B_ptr + d3 * dstate + n, mask=m3, other=0.0).to(tl.float32)
                Cv = tl.load(C_ptr + d3 * dstate + n, mask=m3, other=0.0).to(tl.float32)
                Bx = Bv
            # the states of the chunk, from its first checkpoint (the forward's three phases)
            h_chunk = tl.load(ck_row + (t0 // CHUNK) * dstate + n, mask=mask_d[:, None], other=0.0)
            As, bs, hs, _, _ = _lanes_states(dts, dtus, Bx, A2n, h_chunk, j, prev, zero2,
                                             is_last, R, VARYING_BC)
            # g backwards: each run from its end with k = 0 (G, and Q = product of later a's)
            kk = zeros2
            q = tl.full((BD, LT), 1.0, tl.float32)
            Gs = ()
            Qs = ()
            for r in tl.static_range(R - 1, -1, -1):
                if VARYING_BC:
                    cdy = Cs[r] * dys[r]
                else:
                    cdy = Cv * dys[r]
                G = tl.zeros_like(cdy)
                Q = tl.zeros_like(cdy)
                for ii in tl.static_range(V):
                    sel = col == V - 1 - ii
                    g_i = tl.sum(tl.where(sel, cdy, 0.0), axis=2) + kk
                    G = tl.where(sel, g_i[:, :, None], G)
                    Q = tl.where(sel, q[:, :, None], Q)
                    a_i = tl.sum(tl.where(sel, As[r], 0.0), axis=2)
                    kk = a_i * g_i
                    q = q * a_i
                Gs = (G,) + Gs
                Qs = (Q,) + Qs
            # the runs' maps k -> q k + kk, composed from the last lane backwards
            Pr, Kr = tl.associative_scan((q, kk), axis=1, combine_fn=_combine_fwd, reverse=True)
            k_start = Pr * kc[n] + Kr  # k at each run's first step
            k_in = tl.where(j == LT - 1, kc[n], tl.gather(k_start, nxt, axis=1))
            kc_new = kc_new + (tl.gather(k_start, zero2, axis=1),)
            dA_n = dA_acc[n]
            if not VARYING_BC:
                dB_n = dB_acc[n]
                dC_n = dC_acc[n]
            dun = ()
            ddn = ()
            yn = ()
            for r in tl.static_range(R):
                g = Gs[r] + Qs[r] * k_in[:, :, None]
                w = g * (hs[r] - bs[r])  # g a_t h_{t-1}
                ddn = ddn + (dds[r] + An * w,)
                dA_n += tl.sum(dts[r] * w, axis=2)
                if VARYING_BC:
                    dun = dun + (dus[r] + g * Bs[r],)
                    t2 = t0 + r * V + steps2
                    tl.atomic_add(dB_row + n * s_dB_n + t2, tl.sum(g * dtus[r], axis=0),
                                  mask=t2 < L, sem="relaxed")
                    tl.atomic_add(dC_row + n * s_dB_n + t2, tl.sum(dys[r] * hs[r], axis=0),
                                  mask=t2 < L, sem="relaxed")
                    yn = yn + (ys[r] + hs[r] * Cs[r],)
                else:
                    dun = dun + (dus[r] + g * Bv,)
                    dB_n += tl.sum(g * dtus[r], axis=2)
                    dC_n += tl.sum(dys[r] * hs[r], axis=2)
                    yn = yn + (ys[r] + hs[r] * Cv,)
            ys = yn  # y (for dz): D u + the states' C h so far
            dus = dun
            dds = ddn
            dA_new = dA_new + (dA_n,)
            if not VARYING_BC:
                dB_new = dB_new + (dB_n,)
                dC_new = dC_new + (dC_n,)
        kc = kc_new
        dA_acc = dA_new
        if not VARYING_BC:
            dB_acc = dB_new
            dC_acc = dC_new
        for r in tl.static_range(R):
            t = t0 + r * V + steps
            ok = m3 & (t < L)
            du = dts[r] * dus[r]
            if HAS_D:
                du += Dv * dys[r]
                dD_acc += tl.sum(dys[r] * us[r], axis=2)
            ddt = us[r] * dus[r] + dds[r]
            if SOFTPLUS:
                ddt = ddt * tl.sigmoid(raws_[r])
            ddt = tl.where(ok, ddt, 0.0)
            if HAS_BIAS:
                dbias_acc += tl.sum(ddt, axis=2)
            if HAS_Z:
                sz = tl.sigmoid(zs[r])
                dz = dos[r] * ys[r] * sz * (1.0 + zs[r] * (1.0 - sz))
                tl.store(dz_row + t, dz.to(dz_ptr.dtype.element_ty), mask=ok)
            tl.store(du_row + t, du.to(du_ptr.dtype.element_ty), mask=ok)
            tl.store(ddt_row + t, ddt.to(ddelta_ptr.dtype.element_ty), mask=ok)
    part = (pid_b * dim + offs_d) * dstate  # into (B, D, N)
    for n in tl.static_range(N):
        tl.store(dA_ptr + part + n, tl.sum(dA_acc[n], axis=1), mask=mask_d)
        if not VARYING_BC:
            tl.store(dB_ptr + part + n, tl.sum(dB_acc[n], axis=1), mask=mask_d)
            tl.store(dC_ptr + part + n, tl.sum(dC_acc[n], axis=1), mask=mask_d)
    if HAS_D:
        tl.store(dD_ptr + pid_b * dim + offs_d, tl.sum(dD_acc, axis=1), mask=mask_d)
    if HAS_BIAS:
        tl.store(dbias_ptr + pid_b * dim + offs_d, tl.sum(dbias_acc, axis=1), mask=mask_d)


@triton.jit
def _delta_of(raw, bias, mask, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
              EVEN: tl.constexpr, FAST: tl.constexpr = False):
    """delta in float32 from its stored values (any shape) with its bias and softplus, 0 where
    mask is False unless EVEN (padded steps: there a = 1, b = 0, so the state and its
    gradient pass through); and delta before the softplus, bias added (the softplus'
    derivative is its sigmoid)."""
    raw = raw.to(tl.float32)
    if HAS_BIAS:
        raw += bias
    dt = raw
    if SOFTPLUS:
        dt = _softplus_fast(raw, FAST)
    if not EVEN:
        dt = tl.where(mask, dt, 0.0)
    return dt, raw


@triton.jit
def _delta_tile(dt_base, t, mask_dt, bias, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                EVEN: tl.constexpr):
    """_delta_of on a (BLOCK_D, T) tile (bias (BLOCK_D, 1)) loaded from dt_base + t."""
    raw = _load_even(dt_base + t[None, :], mask_dt, EVEN)
    return _delta_of(raw, bias, mask_dt, HAS_BIAS, SOFTPLUS, EVEN)


@triton.jit
def _dy_tile(do_base, z_base, t, mask_dt, HAS_Z: tl.constexpr, EVEN: tl.constexpr):
    """dout, z (float32, (BLOCK_D, T)) and dy = dL/dy = dout * silu(z) (dout without z)."""
    dout = _load_even(do_base + t[None, :], mask_dt, EVEN).to(tl.float32)
    if HAS_Z:
        zz = _load_even(z_base + t[None, :], mask_dt, EVEN).to(tl.float32)
        dy = dout * zz * tl.sigmoid(zz)
    else:
        zz = dout
        dy = dout
    return dout, zz, dy


@triton.jit
def _piece_inputs(dt_base, u_base, do_base, z_base, t, mask_dt, bias, HAS_BIAS: tl.constexpr,
                  SOFTPLUS: tl.constexpr, HAS_Z: tl.constexpr, EVEN: tl.constexpr):
    """A (BLOCK_D, T) piece's inputs, float32: delta (with its bias and softplus) and delta
    before the softplus, u, dout, z and dy = dout * silu(z) (loads a caller leaves unused
    are dropped by the compiler)."""
    dt, dt_raw = _delta_tile(dt_base, t, mask_dt, bias, HAS_BIAS, SOFTPLUS, EVEN)
    u = _load_even(u_base + t[None, :], mask_dt, EVEN).to(tl.float32)
    dout, zz, dy = _dy_tile(do_base, z_base, t, mask_dt, HAS_Z, EVEN)
    return dt, dt_raw, u, dout, zz, dy


@triton.jit
def _tile_inputs(dt_base, u_base, do_base, z_base, t0, offs_t, mask_c, L, bias,
                 HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_Z: tl.constexpr,
                 EVEN: tl.constexpr, T: tl.constexpr, R: tl.constexpr):
    """A tile's R pieces from step t0 (tuples of (BLOCK_D, T) float32): delta, delta u and
    dy (loads a caller leaves unused are dropped by the compiler)."""
    dts = ()
    dtus = ()
    dys = ()
    for r in tl.static_range(R):
        t, mask_dt = _piece_mask(t0, r, offs_t, mask_c, L, T)
        dt, dt_raw, u, dout, zz, dy = _piece_inputs(dt_base, u_base, do_base, z_base, t, mask_dt,
                                                    bias, HAS_BIAS, SOFTPLUS, HAS_Z, EVEN)
        dts = dts + (dt,)
        dtus = dtus + (dt * u,)
        dys = dys + (dy,)
    return dts, dtus, dys


@triton.jit
def _col(x, sel):
    """Column i of x (rows in registers, sel = (arange == i)[None, :]) as (rows, 1). The
    -0.0 fill makes the sum fold to a register pick (x + -0.0 is x for every x)."""
    return tl.sum(tl.where(sel, x, -0.0), axis=1, keep_dims=True)


@triton.jit
def _col_load(ptr, mask):
    """A (BLOCK_D, 1) float32 load: one value per row, in the rows' layout (a (BLOCK_D,) load
    would be laid out differently and moved through shared memory)."""
    return tl.load(ptr, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _state_bc(M_base, M_ptr, n, s_n, t, dim, d_col, mask_c, mask_dt, VARYING_BC: tl.constexpr,
              EVEN: tl.constexpr, BLOCK_D: tl.constexpr, T: tl.constexpr):
    """B or C of state n on a tile, float32: time-varying, (BLOCK_D, T) (the same T values in
    every row, served by L1, loaded straight into the tile's layout); (D, N) ones transposed
    to (N, D), the column (BLOCK_D, 1)."""
    if VARYING_BC:
        x = _load_even(tl.broadcast_to(M_base + n * s_n + t[None, :], (BLOCK_D, T)), mask_dt,
                       EVEN).to(tl.float32)
    else:
        x = _col_load(M_ptr + n * dim + d_col, mask_c)
    return x


@triton.jit
def _piece_mask(t0, r, offs_t, mask_c, L, T: tl.constexpr):
    """Steps t of piece r (T of them from t0 + r T) and their (BLOCK_D, T) mask."""
    t = t0 + r * T + offs_t
    return t, mask_c & (t < L)[None, :]


@triton.jit
def _bc_pieces(M_base, M_ptr, n, s_n, t0, offs_t, L, dim, d_col, mask_c,
               VARYING_BC: tl.constexpr, EVEN: tl.constexpr, BLOCK_D: tl.constexpr,
               T: tl.constexpr, R: tl.constexpr):
    """B or C of state n on a tile of R pieces: R (BLOCK_D, T) tiles when they vary in time,
    else the (BLOCK_D, 1) column R times (loaded once)."""
    out = ()
    if VARYING_BC:
        for r in tl.static_range(R):
            t, mask_dt = _piece_mask(t0, r, offs_t, mask_c, L, T)
            out = out + (_state_bc(M_base, M_ptr, n, s_n, t, dim, d_col, mask_c, mask_dt,
                                   VARYING_BC, EVEN, BLOCK_D, T),)
    else:
        x = _col_load(M_ptr + n * dim + d_col, mask_c)
        for _r in tl.static_range(R):
            out = out + (x,)
    return out


@triton.jit
def _k_cols(x_ptr, A_col, M_base, M_ptr, n, s_n, t0, offs_t, L, dim, d_col, mask_c,
            VARYING_BC: tl.constexpr, EVEN: tl.constexpr, BLOCK_D: tl.constexpr, T: tl.constexpr,
            R: tl.constexpr, LOAD_BC: tl.constexpr):
    """State n's columns for a one-way sweep: a scratch column (a carry), A log2 e, and B or C
    (R pieces; () without LOAD_BC: they come from `_lane_pieces`)."""
    x = _col_load(x_ptr + n * dim, mask_c)
    A2n = _col_load(A_col + n * dim, mask_c) * 1.4426950408889634
    M = ()
    if LOAD_BC:
        M = _bc_pieces(M_base, M_ptr, n, s_n, t0, offs_t, L, dim, d_col, mask_c, VARYING_BC,
                       EVEN, BLOCK_D, T, R)
    return x, A2n, M


@triton.jit
def _rev_cols(h_ptr, kp, A_col, dA_p, dB_p, dC_p, B_base, B_ptr, C_base, C_ptr, n, s_B_n, s_C_n,
              t0, offs_t, L, dim, d_col, mask_c, VARYING_BC: tl.constexpr, EVEN: tl.constexpr,
              BLOCK_D: tl.constexpr, T: tl.constexpr, R: tl.constexpr, LOAD_BC: tl.constexpr):
    """State n's columns for a reverse tile: its tile-start state, k, A log2 e, the dA sum so
    far, B, C (R pieces each; () without LOAD_BC), and the dB, dC sums of (D, N) B, C (dA's
    again when B, C vary in time)."""
    h_in, A2n, Bn = _k_cols(h_ptr, A_col, B_base, B_ptr, n, s_B_n, t0, offs_t, L, dim, d_col,
                            mask_c, VARYING_BC, EVEN, BLOCK_D, T, R, LOAD_BC)
    k_in = _col_load(kp + n * dim, mask_c)
    dA_o = _col_load(dA_p + n * dim, mask_c)
    Cn = ()
    if LOAD_BC:
        Cn = _bc_pieces(C_base, C_ptr, n, s_C_n, t0, offs_t, L, dim, d_col, mask_c, VARYING_BC,
                        EVEN, BLOCK_D, T, R)
    dB_o = dA_o
    dC_o = dA_o
    if not VARYING_BC:
        dB_o = _col_load(dB_p + n * dim, mask_c)
        dC_o = _col_load(dC_p + n * dim, mask_c)
    return h_in, k_in, A2n, dA_o, Bn, Cn, dB_o, dC_o


@triton.jit
def _bc_lanes(M_base, s_n, dstate, t0, offs_t, L, EVEN: tl.constexpr, BLOCK_D: tl.constexpr,
              T: tl.constexpr, R: tl.constexpr, PACK: tl.constexpr):
    """Time-varying B or C of every state on a tile, one piece per row: row i holds state
    i // R, piece i % R (T steps), float32; rows past N R are 0. One 16-byte load per lane
    instead of one per (state, piece): `_lane_pieces` hands each state's pieces to every
    row by shuffles. With PACK (bfloat16, unmasked, even strides) the pieces stay bfloat16
    pairs packed in int32, (BLOCK_D, T / 2): half the registers and half the shuffles, and
    `_lane_pieces` widens them after the shuffle."""
    row = tl.arange(0, BLOCK_D)[:, None]
    mask = row < dstate * R
    if PACK:  # bfloat16 pairs as int32 (T / 2 per row), unpacked after the shuffles
        M32 = M_base.to(tl.pointer_type(tl.int32), bitcast=True)
        t2 = t0 // 2 + (row % R) * (T // 2) + tl.arange(0, T // 2)[None, :]
        x = tl.load(M32 + (row // R) * (s_n // 2) + t2, mask=mask, other=0)
    else:
        t = t0 + (row % R) * T + offs_t[None, :]
        if not EVEN:
            mask = mask & (t < L)
        x = tl.load(M_base + (row // R) * s_n + t, mask=mask, other=0.0).to(tl.float32)
    return x


@triton.jit
def _lane_pieces(M, n, R: tl.constexpr, ASM: tl.constexpr):
    """State n's R pieces from `_bc_lanes`'s tile: row n R + r of M in every row, by one
    indexed shuffle per value on a GPU (rows along lanes, checked as for the butterfly);
    under the interpreter, the same through a masked sum over rows."""
    out = ()
    for r in tl.static_range(R):
        src = n * R + r
        if ASM:
            y = tl.inline_asm_elementwise("shfl.sync.idx.b32 $0, $1, $2, 0x1f, -1;", "=r,r,r",
                                          [M.to(tl.int32, bitcast=True),
                                           tl.zeros(M.shape, tl.int32) + src],
                                          dtype=tl.int32, is_pure=True, pack=1)
        else:
            row = tl.arange(0, M.shape[0])[:, None]
            y = tl.broadcast_to(tl.sum(tl.where(row == src, M, 0), axis=0, keep_dims=True),
                                M.shape)
        if M.dtype == tl.int32:  # bfloat16 pairs: the low one is the first step
            lo, hi = _unpack_bf16(y)
            y = tl.reshape(tl.join(lo, hi), (M.shape[0], M.shape[1] * 2))
        else:
            y = y.to(tl.float32, bitcast=True)
        out = out + (y,)
    return out


@triton.jit
def _state_scan(a, b, h, offs_t, T: tl.constexpr):
    """h_t = a_t h_{t-1} + b_t along a tile held in registers ((BLOCK_D, T)), from the state
    h ((BLOCK_D, 1)) before it: every h_t, and the last."""
    hs = tl.zeros_like(a)
    for i in tl.static_range(T):
        sel = (offs_t == i)[None, :]
        h = _col(a, sel) * h + _col(b, sel)
        hs = tl.where(sel, h, hs)
    return hs, h


@triton.jit
def _grad_scan(a, c, k, offs_t, T: tl.constexpr):
    """g_t = c_t + a_{t+1} g_{t+1} along a tile held in registers, backwards, from k = a g at
    the first step after the tile ((BLOCK_D, 1)): every g_t, and a_0 g_0 (the tile before's k)."""
    g = tl.zeros_like(a)
    for i in tl.static_range(T):
        sel = (offs_t == T - 1 - i)[None, :]
        g_i = _col(c, sel) + k
        g = tl.where(sel, g_i, g)
        k = _col(a, sel) * g_i
    return g, k


@triton.jit
def _shfl_xor(x, m: tl.constexpr, ASM: tl.constexpr):
    """x of row r ^ m, for rows along lanes (m < 32): one butterfly shuffle per value on a
    GPU (inline PTX: Triton has no shuffle of its own); under the interpreter, which runs
    no assembly, the same permutation through a reshape."""
    if ASM:
        y = tl.inline_asm_elementwise("shfl.sync.bfly.b32 $0, $1, $2, 0x1f, -1;", "=r,r,r",
                                      [x.to(tl.int32, bitcast=True), tl.full(x.shape, m, tl.int32)],
                                      dtype=tl.int32, is_pure=True, pack=1)
        y = y.to(tl.float32, bitcast=True)
    else:
        R: tl.constexpr = x.shape[0]
        K: tl.constexpr = x.shape[1]
        y = tl.flip(x.reshape(R // (2 * m), 2, m, K), 1).reshape(R, K)
    return y


@triton.jit
def _lane_sums(P, Q, lane, W: tl.constexpr, T: tl.constexpr, ASM: tl.constexpr):
    """Sums over W lanes (rows r with the same r // W) of two (BLOCK_D, T) tiles, T in
    {1, 2, 4, 8}, as a reduce-scatter: each butterfly round halves what a lane holds (P or Q,
    then halves of the steps), so 2T sums cost 2T - 1 + log2(W / 2T) shuffles instead of
    2T log2(W). Returns, per row ((BLOCK_D, 1)): a sum, whether it is Q's, its step, and
    whether the row leads the W / 2T rows that hold that same sum."""
    BLOCK_D: tl.constexpr = P.shape[0]
    hi = (lane & (W // 2)) != 0
    V = tl.where(hi, Q, P) + _shfl_xor(tl.where(hi, P, Q), W // 2, ASM)
    step = tl.zeros_like(lane)
    if T >= 2:
        b = (lane & (W // 4)) != 0  # these lanes keep the odd steps
        E, O = tl.split(V.reshape(BLOCK_D, T // 2, 2))
        V = tl.where(b, O, E) + _shfl_xor(tl.where(b, E, O), W // 4, ASM)
        step += b.to(tl.int32)
    if T >= 4:
        b = (lane & (W // 8)) != 0  # these keep steps 2, 3 (mod 4)
        E, O = tl.split(V.reshape(BLOCK_D, T // 4, 2))
        V = tl.where(b, O, E) + _shfl_xor(tl.where(b, E, O), W // 8, ASM)
        step += 2 * b.to(tl.int32)
    if T == 8:
        b = (lane & (W // 16)) != 0  # these keep steps 4 .. 7
        E, O = tl.split(V.reshape(BLOCK_D, 1, 2))
        V = tl.where(b, O, E) + _shfl_xor(tl.where(b, E, O), W // 16, ASM)
        step += 4 * b.to(tl.int32)
    G: tl.constexpr = W // (2 * T)  # lanes that end with the same sum
    for s in tl.static_range(4):  # G <= 16: at most 4 plain rounds
        if (G >> (s + 1)) > 0:
            V += _shfl_xor(V, G >> (s + 1), ASM)
    return V, hi, step, (lane % G) == 0


@triton.jit
def _pieces2(p, BLOCK_D: tl.constexpr, T: tl.constexpr):
    """Two (BLOCK_D, T) pieces as (2 BLOCK_D, T) rows: row 2d + k is channel d's piece k."""
    return tl.join(p[0], p[1]).permute(0, 2, 1).reshape(2 * BLOCK_D, T)


@triton.jit
def _shfl_seg(x, idx: tl.constexpr, W: tl.constexpr, ASM: tl.constexpr):
    """x of row (r - r % W) + idx in every row r (W a power of 2, rows along lanes): one
    indexed shuffle per value within segments of W lanes (the lane an immediate) on a GPU;
    under the interpreter (and where the rows are not one per lane) through tl.gather."""
    if ASM:
        y = tl.inline_asm_elementwise("shfl.sync.idx.b32 $0, $1, $2, $3, -1;", "=r,r,r,r",
                                      [x.to(tl.int32, bitcast=True),
                                       tl.full(x.shape, idx, tl.int32),
                                       tl.full(x.shape, ((32 - W) << 8) | 31, tl.int32)],
                                      dtype=tl.int32, is_pure=True, pack=1)
        y = y.to(tl.float32, bitcast=True)
    else:
        rows = tl.arange(0, x.shape[0])[:, None] + tl.zeros(x.shape, tl.int32)
        y = tl.gather(x, rows - rows % W + idx, axis=0)
    return y


@triton.jit
def _ex2_fast(x, ASM: tl.constexpr):
    """2^x by one MUFU.EX2 on a GPU (ex2.approx.ftz: results below 2^-126 flush to 0;
    tl.exp2 adds a range check and two multiplies for them), under the interpreter tl.exp2."""
    if ASM:
        y = tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=f,f", [x],
                                      dtype=tl.float32, is_pure=True, pack=1)
    else:
        y = tl.exp2(x)
    return y


@triton.jit
def _ex2_poly(x):
    """2^x on the FMA pipe, no special-function unit (to balance the two where exp2 is the
    bound): x = j + f with j an integer (the 1.5 2^23 rounding trick) and |f| <= 1/2, 2^f by a
    degree-5 polynomial (relative error 2.4e-7 in float32, as ex2.approx's), j added to its
    exponent. x clipped to [-125, 125] (2^-125 stands for anything smaller)."""
    x = tl.minimum(tl.maximum(x, -125.0), 125.0)
    t = x + 12582912.0  # 1.5 2^23: j in the low mantissa bits of t
    f = x - (t - 12582912.0)
    p = 0.001327647129073739 * f + 0.009675540961325169
    p = p * f + 0.05550713092088699
    p = p * f + 0.24022120237350464
    p = p * f + 0.6931469440460205
    p = p * f + 1.0000001192092896
    bits = p.to(tl.int32, bitcast=True) + (t.to(tl.int32, bitcast=True) << 23)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _softplus_fast(x, ASM: tl.constexpr):
    """`_softplus` (threshold 20) from the approximate exp2 and log2 of the special-function
    unit (about 7 instructions; tl.log is a polynomial of about 20), under the interpreter
    `_softplus` itself. Relative error a few ulp (ex2.approx, lg2.approx: about 2^-22)."""
    if ASM:
        e = _ex2_fast(x * 1.4426950408889634, ASM)
        lg = tl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=f,f", [1.0 + e],
                                       dtype=tl.float32, is_pure=True, pack=1)
        y = tl.where(x <= 20.0, lg * 0.6931471805599453, x)
    else:
        y = _softplus(x)
    return y


@triton.jit
def _silu_fast(x, ASM: tl.constexpr):
    """x sigmoid(x) from ex2.approx and rcp.approx (4 instructions; tl.sigmoid adds range
    checks), under the interpreter x * tl.sigmoid(x)."""
    if ASM:
        e = _ex2_fast(x * -1.4426950408889634, ASM)
        r = tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=f,f", [1.0 + e],
                                      dtype=tl.float32, is_pure=True, pack=1)
        y = x * r
    else:
        y = x * tl.sigmoid(x)
    return y


@triton.jit
def _columns(x, W: tl.constexpr):
    """The W columns of x ((32, W), W a power of 2 held in each thread) as a tuple of (32, 1)
    columns in order, by halving (reshape and split move no data)."""
    cols = (x,)
    for lev in tl.static_range(5):
        if (W >> lev) > 1:
            nxt = ()
            for q in tl.static_range(1 << lev):
                lo, hi = tl.split(cols[q].reshape(32, 2, W >> (lev + 1)).permute(0, 2, 1))
                nxt = nxt + (lo, hi)
            cols = nxt
    return cols


@triton.jit
def _join_columns(cols, K: tl.constexpr):
    """K (32, 1) columns (K a power of 2) as one (32, K) tile: the inverse of `_columns`,
    by joining neighbours (join, permute and reshape move no data)."""
    for lev in tl.static_range(5):
        if (K >> lev) > 1:
            nxt = ()
            for q in tl.static_range(K >> (lev + 1)):
                x = tl.join(cols[2 * q], cols[2 * q + 1]).permute(0, 2, 1)
                nxt = nxt + (x.reshape(32, 2 << lev),)
            cols = nxt
    return cols[0]


@triton.jit
def _load_even(ptr, mask, EVEN: tl.constexpr):
    """tl.load(ptr), masked (0 outside) unless EVEN."""
    return tl.load(ptr, mask=None if EVEN else mask, other=None if EVEN else 0.0)


@triton.jit
def _states_raw(ptr, t0, V: tl.constexpr, R: tl.constexpr, mask, L, EVEN: tl.constexpr,
                PAIRS: tl.constexpr):
    """R pieces of V steps from t0 of rows (ptr: (32, 1) pointers), as loaded (one 16-byte
    load per row and piece): with PAIRS (bfloat16, no mask, t0 and the row offsets even)
    int32 pairs (32, V / 2), else (32, V) of the stored type. `_states_widen` makes them
    columns; in between, they can wait in registers (the prefetch)."""
    out = ()
    for r in tl.static_range(R):
        if PAIRS and ptr.dtype.element_ty == tl.bfloat16:
            ptr32 = ptr.to(tl.pointer_type(tl.int32), bitcast=True)
            x = tl.load(ptr32 + ((t0 + r * V) // 2 + tl.arange(0, V // 2)[None, :]))
        else:
            t = t0 + r * V + tl.arange(0, V)[None, :]
            x = _load_even(ptr + t, mask & (t < L), EVEN)
        out = out + (x,)
    return out


@triton.jit
def _states_widen(x, V: tl.constexpr):
    """One piece from `_states_raw` as V float32 (32, 1) columns in time order (int32 pairs
    widened by `_unpack_bf16`)."""
    out = ()
    if x.dtype == tl.int32:
        cols = _columns(x, V // 2)
        for q in tl.static_range(V // 2):
            out = out + _unpack_bf16(cols[q])
    else:
        out = _columns(x.to(tl.float32), V)
    return out


@triton.jit
def _states_sums(ys, lrow, NL: tl.constexpr, T: tl.constexpr, ASM: tl.constexpr):
    """Sums over a channel's NL rows (rows r with the same r // NL) of its T steps, held as T
    (32, 1) columns, as a reduce-scatter: row l of the channel ends with the K = T / NL
    columns of steps l K .. l K + K - 1 summed over the NL rows. Each of the log2 NL butterfly
    rounds halves what a row holds (rows with the round's lane bit keep the later half):
    T - K shuffles per row instead of T log2 NL."""
    for j in tl.static_range(5):
        if (NL >> (j + 1)) > 0:
            keep_hi = (lrow & (NL >> (j + 1))) != 0
            nxt = ()
            for q in tl.static_range(T >> (j + 1)):
                lo = ys[q]
                hi = ys[(T >> (j + 1)) + q]
                nxt = nxt + (tl.where(keep_hi, hi, lo)
                             + _shfl_xor(tl.where(keep_hi, lo, hi), NL >> (j + 1), ASM),)
            ys = nxt
    return ys


@triton.jit
def _states_deltas(raw, u, tk, bias, L, K: tl.constexpr, NL: tl.constexpr, T: tl.constexpr,
                   HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, EVEN: tl.constexpr,
                   ASM: tl.constexpr, VU: tl.constexpr = 0):
    """The states forward's delta and delta u of a chunk, T (32, 1) columns each in every row:
    each row computes delta for its own K steps ((32, K) raw delta at steps tk), then
    gathers step i from the row first + i // K of its channel (its column i % K). delta u:
    with u (32, K) as loaded (the row's own steps), computed there and gathered the same way;
    with VU, u is the chunk's `_states_raw` pieces of VU steps (loaded whole by every row)
    and every row forms delta u from the gathered delta (the same product, so the same
    result): T shuffles a row instead of 2 T."""
    dt_k, _ = _delta_of(raw, bias, tk < L, HAS_BIAS, SOFTPLUS, EVEN, ASM)
    dt_c = _columns(dt_k, K)
    uc = ()  # VU: the chunk's u, T columns
    if VU:
        for r in tl.static_range(T // VU):
            uc = uc + _states_widen(u[r], VU)
    else:
        dtu_c = _columns(dt_k * u.to(tl.float32), K)
    dts = ()
    dtus = ()
    for i in tl.static_range(T):
        dt = _shfl_seg(dt_c[i % K], i // K, NL, ASM)
        dts = dts + (dt,)
        if VU:
            dtus = dtus + (dt * uc[i],)
        else:
            dtus = dtus + (_shfl_seg(dtu_c[i % K], i // K, NL, ASM),)
    return dts, dtus


@triton.jit
def _zero_columns(T: tl.constexpr):
    """T float32 (32, 1) columns of zeros."""
    out = ()
    for _ in tl.static_range(T):
        out = out + (tl.zeros((32, 1), dtype=tl.float32),)
    return out


@triton.jit
def _states_out(ys, u_k, zk, o_ptrs, mask, Dv, lrow, NL: tl.constexpr, T: tl.constexpr,
                K: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, ASM: tl.constexpr):
    """A chunk's output in the states forward: the rows' partial sums ys (T (32, 1) columns)
    summed over the channel's rows by `_states_sums`, which leaves each row its own K steps;
    there D u and the z gate (u_k, zk: (32, K) as loaded) and the store (o_ptrs, mask)."""
    y = _join_columns(_states_sums(ys, lrow, NL, T, ASM), K)
    if HAS_D:
        y += Dv * u_k.to(tl.float32)
    if HAS_Z:
        y *= _silu_fast(zk.to(tl.float32), ASM)
    tl.store(o_ptrs, y.to(o_ptrs.dtype.element_ty), mask=mask)


@triton.jit
def _selective_scan_fwd_states_kernel(
    # pointers and strides as in the lanes forward
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, last_ptr, ckpt_ptr,
    L, dim, dstate, dpg,
    s_u_b, s_u_d, s_dt_b, s_dt_d, s_z_b, s_z_d, s_o_b, s_o_d,
    s_B_b, s_B_g, s_B_n, s_C_b, s_C_g, s_C_n,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    VARYING_BC: tl.constexpr, SAVE_CKPT: tl.constexpr, N: tl.constexpr, CHUNK: tl.constexpr,
    NL: tl.constexpr, T: tl.constexpr, V: tl.constexpr, EVEN: tl.constexpr,
    PAIRS: tl.constexpr, ASM: tl.constexpr, PREF: tl.constexpr, PIPE: tl.constexpr,
    POLY: tl.constexpr = 0, VU: tl.constexpr = 0, PAIRS_U: tl.constexpr = False,
):
    """The "states" forward: one warp per 32 / NL channels, a channel's states across NL lanes.

    Row r of the warp (one lane) holds channel r // NL and its S = N / NL states
    n = (r % NL) S + s, and walks them through time sequentially, T steps at a time (each
    step a (32, 1) column; B and C loaded V steps, 16 bytes, at a time): a = exp2(delta A
    log2 e), h = a h + delta u B, y += C h: 5 instructions per (step, state), with no scan
    across lanes and nothing computed twice. What a channel's rows share is computed once
    and moved by shuffles:
    - delta (bias, softplus) and delta u: each of the NL rows computes K = T / NL of the
      chunk's steps, then every row gathers all T by indexed shuffles (2 T per row: 2 / S
      per (step, state));
    - y: each row's partial sum over its S states is summed over the channel's rows by a
      butterfly reduce-scatter (`_states_sums`: T - K shuffles per row), which leaves each
      row the K steps whose inputs it loaded: D u and the z gate are applied there and the
      output stored.
    With PREF, each chunk's loads are issued one step of the pipeline early: the next
    chunk's u, delta, z as the chunk starts, each state's B and C while the state before is
    computed (the next chunk's first state's during the last), so that their latency
    overlaps work instead of stalling it (at the cost of the registers that hold them).
    PIPE (1 or 2) keeps two chunks in flight: iteration c runs chunk c's recurrence, chunk
    c - 1's reduce-scatter and output, and chunk c + 1's delta, three independent streams in
    one loop body for the scheduler to interleave, instead of one chain (delta, gathers,
    recurrence, sums, output) with latency at both ends. PIPE 1 holds chunk c - 1's u and z
    in registers (u, delta, z loaded two chunks ahead); PIPE 2 loads them again (one chunk
    ahead; fewer registers and moves). B and C are prefetched as with PREF. POLY: the exp2 of
    a row's first POLY states by `_ex2_poly` on the FMA pipe instead of the special-function
    unit (an experiment: measured slower). VU > 0 (with PIPE 2; the launch's UWHOLE): every
    row loads its channel's whole chunk of u (VU steps a 16-byte load; PAIRS_U: bfloat16
    read as int32 pairs) and forms delta u itself from the gathered delta, so only delta is
    gathered (T shuffles a row and chunk instead of 2 T; the same product, so the same
    result).
    Checkpoints (SAVE_CKPT): the state entering every CHUNK steps (CHUNK a multiple of T),
    each row storing its S adjacent states (in one store when S is a power of 2). With EVEN (L a multiple of T, the channels a multiple of
    32 / NL) no load or store is masked but those of states past N. ASM: the shuffles as
    inline PTX (rows must be one per lane: the wrapper checks the compiled layout), else
    through tl.gather.
    """
    S: tl.constexpr = (N + NL - 1) // NL  # states per row
    K: tl.constexpr = T // NL  # steps of the chunk whose inputs a row loads
    CPW: tl.constexpr = 32 // NL
    BC_EVEN: tl.constexpr = EVEN and NL * S == N  # B, C loads unmasked: every row's states exist
    BC_PAIRS: tl.constexpr = PAIRS and BC_EVEN
    rows = tl.arange(0, 32)
    pid_gd = tl.program_id(0)
    nblk = tl.cdiv(dpg, CPW)
    grp = pid_gd // nblk
    d_in = (pid_gd % nblk) * CPW + rows // NL
    d_col = (grp * dpg + d_in).to(tl.int64)[:, None]  # (32, 1): each row's channel
    m_col = (d_in < dpg)[:, None]
    lrow = (rows % NL)[:, None]  # a row's place in its channel
    pid_b = tl.program_id(1).to(tl.int64)
    offs_k = tl.arange(0, K)[None, :]
    Dv = 0.0  # unused without HAS_D
    if HAS_D:
        Dv = tl.load(D_ptr + d_col, mask=m_col, other=0.0)
    bias = 0.0  # unused without HAS_BIAS
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d_col, mask=m_col, other=0.0)
    u_row = u_ptr + pid_b * s_u_b + d_col * s_u_d
    dt_row = delta_ptr + pid_b * s_dt_b + d_col * s_dt_d
    z_row = z_ptr + pid_b * s_z_b + d_col * s_z_d
    o_row = out_ptr + pid_b * s_o_b + d_col * s_o_d
    ck_row = ckpt_ptr + (pid_b * dim + d_col) * tl.cdiv(L, CHUNK) * N
    A2 = ()  # per state: A log2(e), (32, 1)
    Bs = ()  # per state: B's row pointer (time-varying) or its value ((D, N) B)
    Cs = ()
    ms = ()  # per state: rows whose state exists
    hs = ()  # per state: the state entering the chunk
    for s in tl.static_range(S):
        n = lrow * S + s
        mn = m_col & (n < N)
        ms = ms + (mn,)
        A2 = A2 + (tl.load(A_ptr + d_col * dstate + n, mask=mn, other=0.0) * 1.4426950408889634,)
        if VARYING_BC:
            Bs = Bs + (B_ptr + pid_b * s_B_b + grp * s_B_g + n * s_B_n,)
            Cs = Cs + (C_ptr + pid_b * s_C_b + grp * s_C_g + n * s_C_n,)
        else:
            Bs = Bs + (tl.load(B_ptr + d_col * dstate + n, mask=mn, other=0.0).to(tl.float32),)
            Cs = Cs + (tl.load(C_ptr + d_col * dstate + n, mask=mn, other=0.0).to(tl.float32),)
        hs = hs + (tl.zeros((32, 1), dtype=tl.float32),)
    if PREF or PIPE:  # the first chunk's first state's B, C
        if VARYING_BC:
            B_p = _states_raw(Bs[0], 0, V, T // V, ms[0], L, BC_EVEN, BC_PAIRS)
            C_p = _states_raw(Cs[0], 0, V, T // V, ms[0], L, BC_EVEN, BC_PAIRS)
    if PIPE:  # chunk 0's delta now; no chunk waiting for its output yet
        tk = lrow * K + offs_k
        mk = m_col & (tk < L)
        u_c = _load_even(u_row + tk, mk, EVEN)
        u_d = u_c  # the u of delta u: the row's K steps, or (VU) the whole chunk
        if VU:
            u_d = _states_raw(u_row, 0, VU, T // VU, m_col, L, EVEN, PAIRS_U)
        dts, dtus = _states_deltas(_load_even(dt_row + tk, mk, EVEN), u_d, tk, bias, L, K, NL,
                                   T, HAS_BIAS, SOFTPLUS, EVEN, ASM, VU)
        ys_w = _zero_columns(T)  # the chunk before's partial sums, waiting for its output
        if PIPE == 1:  # chunk 0's u and z held, chunk 1's inputs in flight
            z_c = u_c  # unused without HAS_Z
            if HAS_Z:
                z_c = _load_even(z_row + tk, mk, EVEN)
            t_nx = T
            if EVEN:  # past the end: load the last chunk again (in bounds, unused)
                t_nx = tl.minimum(t_nx, L - T)
            tkn = t_nx + lrow * K + offs_k
            mkn = m_col & (tkn < L)
            u_p = _load_even(u_row + tkn, mkn, EVEN)
            raw_p = _load_even(dt_row + tkn, mkn, EVEN)
            z_p = u_p
            if HAS_Z:
                z_p = _load_even(z_row + tkn, mkn, EVEN)
            # (zeros, not u_c and z_c: Triton carries a name through the loop only if the
            # body gives it a value other than the one it entered with)
            u_w = tl.zeros_like(u_c)
            z_w = tl.zeros_like(z_c)
    elif PREF:  # the first chunk's inputs
        tk = lrow * K + offs_k
        mk = m_col & (tk < L)
        u_p = _load_even(u_row + tk, mk, EVEN)
        raw_p = _load_even(dt_row + tk, mk, EVEN)
        if HAS_Z:
            z_p = _load_even(z_row + tk, mk, EVEN)
    for c in range(0, tl.cdiv(L, T)):
        t0 = c * T
        tk = t0 + lrow * K + offs_k  # (32, K): the row's own K steps
        mk = m_col & (tk < L)
        t_nx = t0 + T
        if EVEN:  # past the end: load the last chunk again (in bounds, unused)
            t_nx = tl.minimum(t_nx, L - T)
        if PIPE == 2:  # chunk c + 1's inputs for its delta; chunk c - 1's u, z again for its
            # output (chunk 0's before the first: in bounds, not stored)
            tkn = t_nx + lrow * K + offs_k
            mkn = m_col & (tkn < L)
            if VU:  # the whole chunk's u in every row
                u_n = _states_raw(u_row, t_nx, VU, T // VU, m_col, L, EVEN, PAIRS_U)
            else:
                u_n = _load_even(u_row + tkn, mkn, EVEN)
            raw_n = _load_even(dt_row + tkn, mkn, EVEN)
            tko = tl.maximum(t0 - T, 0) + lrow * K + offs_k
            mko = m_col & (tko < L)
            u_w = _load_even(u_row + tko, mko, EVEN)
            z_w = u_w  # unused without HAS_Z
            if HAS_Z:
                z_w = _load_even(z_row + tko, mko, EVEN)
        elif PIPE == 1:  # take chunk c + 1's inputs (loaded an iteration ago), load chunk c + 2's
            u_n = u_p
            raw_n = raw_p
            z_n = z_p
            t_nn = t0 + 2 * T
            if EVEN:
                t_nn = tl.minimum(t_nn, L - T)
            tkn = t_nn + lrow * K + offs_k
            mkn = m_col & (tkn < L)
            u_p = _load_even(u_row + tkn, mkn, EVEN)
            raw_p = _load_even(dt_row + tkn, mkn, EVEN)
            if HAS_Z:
                z_p = _load_even(z_row + tkn, mkn, EVEN)
        else:
            if PREF:  # take what was loaded during the chunk before, load the next chunk's
                u_k = u_p
                raw = raw_p
                tkn = t_nx + lrow * K + offs_k
                mkn = m_col & (tkn < L)
                u_p = _load_even(u_row + tkn, mkn, EVEN)
                raw_p = _load_even(dt_row + tkn, mkn, EVEN)
                zk = u_k  # unused without HAS_Z
                if HAS_Z:
                    zk = z_p
                    z_p = _load_even(z_row + tkn, mkn, EVEN)
            else:
                u_k = _load_even(u_row + tk, mk, EVEN)
                raw = _load_even(dt_row + tk, mk, EVEN)
                zk = u_k  # unused without HAS_Z
                if HAS_Z:
                    zk = _load_even(z_row + tk, mk, EVEN)
            # delta (bias, softplus) and delta u: computed once a channel, gathered by all rows
            dts, dtus = _states_deltas(raw, u_k, tk, bias, L, K, NL, T, HAS_BIAS, SOFTPLUS,
                                       EVEN, ASM)
        ys = ()  # per step: the row's sum over its states of C h
        hs_new = ()
        if SAVE_CKPT:
            if t0 % CHUNK == 0:  # the states entering the chunk: a row's S are adjacent
                if (S & (S - 1)) == 0:  # S a power of 2: one store of S values per row
                    ns = lrow * S + tl.arange(0, S)[None, :]
                    tl.store(ck_row + (t0 // CHUNK) * N + ns, _join_columns(hs, S),
                             mask=m_col & (ns < N))
                else:
                    for s in tl.static_range(S):
                        tl.store(ck_row + (t0 // CHUNK) * N + lrow * S + s, hs[s], mask=ms[s])
        for s in tl.static_range(S):
            h = hs[s]
            if VARYING_BC:
                if PREF or PIPE:  # this state's B, C came with the state before; load the next's
                    B_r = B_p
                    C_r = C_p
                    if s + 1 < S:
                        B_p = _states_raw(Bs[s + 1], t0, V, T // V, ms[s + 1], L, BC_EVEN,
                                          BC_PAIRS)
                        C_p = _states_raw(Cs[s + 1], t0, V, T // V, ms[s + 1], L, BC_EVEN,
                                          BC_PAIRS)
                    else:
                        B_p = _states_raw(Bs[0], t_nx, V, T // V, ms[0], L, BC_EVEN, BC_PAIRS)
                        C_p = _states_raw(Cs[0], t_nx, V, T // V, ms[0], L, BC_EVEN, BC_PAIRS)
                else:
                    B_r = _states_raw(Bs[s], t0, V, T // V, ms[s], L, BC_EVEN, BC_PAIRS)
                    C_r = _states_raw(Cs[s], t0, V, T // V, ms[s], L, BC_EVEN, BC_PAIRS)
            yn = ()
            for r in tl.static_range(T // V):
                if VARYING_BC:
                    Bc = _states_widen(B_r[r], V)
                    Cc = _states_widen(C_r[r], V)
                for v in tl.static_range(V):
                    if VARYING_BC:
                        b_i = Bc[v]
                        c_i = Cc[v]
                    else:
                        b_i = Bs[s]
                        c_i = Cs[s]
                    if s < POLY:  # this state's exp2 on the FMA pipe
                        a_i = _ex2_poly(dts[r * V + v] * A2[s])
                    else:
                        a_i = _ex2_fast(dts[r * V + v] * A2[s], ASM)
                    h = a_i * h + dtus[r * V + v] * b_i
                    if s == 0:
                        yn = yn + (c_i * h,)
                    else:
                        yn = yn + (ys[r * V + v] + c_i * h,)
            ys = yn
            hs_new = hs_new + (h,)
        hs = hs_new
        if PIPE:  # the chunk before's output (none before chunk 0); chunk c + 1's delta
            tkw = tk - T
            _states_out(ys_w, u_w, z_w, o_row + tkw, (tkw >= 0) & m_col, Dv, lrow, NL, T, K,
                        HAS_D, HAS_Z, ASM)
            dts, dtus = _states_deltas(raw_n, u_n, tk + T, bias, L, K, NL, T, HAS_BIAS,
                                       SOFTPLUS, EVEN, ASM, VU)
            ys_w = ys
            if PIPE == 1:
                u_w = u_c
                z_w = z_c
                u_c = u_n
                z_c = z_n
        else:
            _states_out(ys, u_k, zk, o_row + tk, None if EVEN else mk, Dv, lrow, NL, T, K,
                        HAS_D, HAS_Z, ASM)
    if PIPE:  # the last chunk's output
        tkw = (tl.cdiv(L, T) - 1) * T + lrow * K + offs_k
        if PIPE == 2:
            mkw = m_col & (tkw < L)
            u_w = _load_even(u_row + tkw, mkw, EVEN)
            z_w = u_w
            if HAS_Z:
                z_w = _load_even(z_row + tkw, mkw, EVEN)
        _states_out(ys_w, u_w, z_w, o_row + tkw, None if EVEN else m_col & (tkw < L), Dv, lrow,
                    NL, T, K, HAS_D, HAS_Z, ASM)
    for s in tl.static_range(S):
        tl.store(last_ptr + (pid_b * dim + d_col) * dstate + lrow * S + s, hs[s], mask=ms[s])


@triton.jit
def _selective_scan_bwd_rows_kernel(
    # pointers: inputs (A and (D, N) B, C transposed to (N, D)), checkpoints (B, D, L/CHUNK, N)
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ckpt_ptr, dout_ptr,
    # pointers: gradients. dA and (D, N) dB, dC: float32 partial sums (n_seg, B, N, D), zeroed;
    # dD, dbias: (n_seg, B, D); time-varying dB, dC: float32, one atomic add per (block, n, t)
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
    # scratch: sub-segment summaries K (B, n_sub, N, D) and S (B, n_sub, D), the running k
    # (B, n_seg, N, D) and the tile-start states of a chunk (B, n_seg, CHUNK / (R T), N, D)
    seg_k_ptr, seg_s_ptr, kap_ptr, tiles_ptr,
    L, dim, dstate, dpg, seg_len, n_seg, sub_len, n_sub,
    s_u_b, s_u_d, s_dt_b, s_dt_d, s_z_b, s_z_d, s_do_b, s_do_d,
    s_B_b, s_B_g, s_B_n, s_C_b, s_C_g, s_C_n, s_dB_b, s_dB_g, s_dB_n,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    VARYING_BC: tl.constexpr, BLOCK_D: tl.constexpr, T: tl.constexpr, R: tl.constexpr,
    CHUNK: tl.constexpr, PASS: tl.constexpr, EVEN: tl.constexpr, PREFETCH: tl.constexpr,
    BFLY: tl.constexpr, ASM: tl.constexpr, BCL: tl.constexpr, WIDE: tl.constexpr,
    STORE_EV: tl.constexpr, SCRATCH_EV: tl.constexpr, BCLP: tl.constexpr,
):
    """The "rows" backward: the rows forward's layout (a channel's steps in one thread, so
    every scan along time is a sequential loop in registers), walked backwards. A tile is R
    pieces of T steps (each piece one load per row, so that Triton keeps it in one thread).

    The state's gradient g_t = C_t dy_t + a_{t+1} g_{t+1} runs from the end, carried between
    tiles as k = a_t g_t at a tile's first step. Segments of L run side by side, as in the
    forward: PASS 1 runs each segment but the first from k = 0 and stores K (its k out) and
    S (its delta sum); a segment maps k -> exp(A S) k + K, so PASS 2 starts each segment
    from the composition of the maps after it. PASS 1 may cut each segment into n_sub /
    n_seg sub-segments of sub_len steps (more threads for a pass that does a fifth of the
    work; PASS 2 then composes the sub-segments' maps). Inside a segment, chunks of CHUNK steps go in
    reverse: from the forward's checkpoint, a forward sweep stores each tile's starting
    state in a scratch, then the tiles go in reverse: the tile's states from the stored one,
    the gradient scan, every gradient.

    The states are a runtime loop inside each tile: a state's k, its dA sum and its
    tile-start state live in scratch columns (contiguous over the block's channels, each
    thread reading back only what it wrote), not in registers. Unrolled over 16 states the
    loop body was 50 KB of machine code (past the instruction cache) and took a minute to
    compile; per-channel values are (BLOCK_D, 1) columns, so every pick of a step stays in a
    thread. With PREFETCH, each state's iteration first loads the next state's columns, so
    that their latency (a round trip to L2) overlaps a state's work instead of stalling it
    (ptxas issues those loads later than written, and the copy into the loop-carried
    registers waits on them: benchmarks/selective_scan_notes.md, session 8). Longer tiles
    (R > 1) load and store those columns once per R T steps instead of T, and the tile's
    inputs are loaded again after the states (from the cache) rather than kept in registers
    through them.
    dB and dC of time-varying B, C are summed over the block's channels before one atomic
    add per (warp, n, t): with BFLY = W > 0 lanes, by a butterfly reduce-scatter
    (`_lane_sums`), else by tl.sum (5 shuffle rounds per value). With BCL (PASS 2,
    time-varying B, C, N R <= BLOCK_D), B and C of every state on a tile are one load per
    row (`_bc_lanes`) and each state's pieces reach every row by shuffles (`_lane_pieces`)
    instead of a 16-byte load per (state, piece) that every lane makes to the same address;
    with BCLP (bfloat16, unmasked: the wrapper checks) they are shuffled as packed pairs
    (`_bc_lanes`).
    With WIDE (R = 2), a tile's gradients are stored once, a channel's two pieces in adjacent
    lanes (`_pieces2`), so that each store instruction writes whole 32-byte sectors.
    STORE_EV and SCRATCH_EV are the L2 eviction policies of the gradient stores and of the
    scratch columns' stores ("" the default): the gradients are written once and never read
    here, the scratch is read back soon, and with "evict_first" / "evict_last" the streams
    of gradients stop pushing the scratch out of L2 (fp32, H200: benchmarks/
    selective_scan_notes.md, session 11).
    """
    WIDE2: tl.constexpr = WIDE and R == 2
    grp, offs_d, mask_d = _channel_block(dpg, BLOCK_D)
    pid_b = tl.program_id(1).to(tl.int64)  # batch row
    seg = tl.program_id(2)  # segment of the sequence (PASS 1: sub-segment)
    s_len = seg_len
    if PASS == 1:  # n_sub / n_seg sub-segments a segment; those of segment 0 are never needed
        seg += n_sub // n_seg
        s_len = sub_len
    d_col = offs_d[:, None]  # (BLOCK_D, 1)
    mask_c = mask_d[:, None]
    offs_t = tl.arange(0, T)
    A_col = A_ptr + d_col  # state n of the block's channels at + n * dim (also (N, D) B, C)
    bias = tl.zeros((BLOCK_D, 1), dtype=tl.float32)
    if HAS_BIAS:
        bias = _col_load(bias_ptr + d_col, mask_c)
    u_base = u_ptr + pid_b * s_u_b + d_col * s_u_d  # (BLOCK_D, 1); du, ddelta too
    du_base = du_ptr + pid_b * s_u_b + d_col * s_u_d
    ddt_base = ddelta_ptr + pid_b * s_u_b + d_col * s_u_d
    dt_base = delta_ptr + pid_b * s_dt_b + d_col * s_dt_d
    z_base = z_ptr + pid_b * s_z_b + d_col * s_z_d  # z and dz
    dz_base = dz_ptr + pid_b * s_z_b + d_col * s_z_d
    do_base = dout_ptr + pid_b * s_do_b + d_col * s_do_d
    B_base = B_ptr + pid_b * s_B_b + grp * s_B_g  # time-varying B, C only
    C_base = C_ptr + pid_b * s_C_b + grp * s_C_g
    dB_base = dB_ptr + pid_b * s_dB_b + grp * s_dB_g
    dC_base = dC_ptr + pid_b * s_dB_b + grp * s_dB_g
    sk_base = seg_k_ptr + pid_b * n_sub * dstate * dim + d_col  # + (s * N + n) * dim
    ss_base = seg_s_ptr + pid_b * n_sub * dim + d_col  # + s * dim
    s_end = tl.minimum(seg * s_len + s_len, L)  # the (sub-)segment: steps seg * s_len .. s_end - 1

    TT: tl.constexpr = R * T  # steps per tile: R pieces of T, each one load per row
    if PASS == 1:
        kp = sk_base + seg * dstate * dim  # the running k is K[b, seg] itself
        for n in range(0, dstate):
            tl.store(kp + n * dim, tl.zeros((BLOCK_D, 1), dtype=tl.float32), mask=mask_c)
        S = tl.zeros((BLOCK_D, 1), dtype=tl.float32)
        c0 = (seg * s_len) // TT
        c1 = tl.cdiv(s_end, TT)
        for ci in range(0, c1 - c0):
            t0 = (c1 - 1 - ci) * TT  # tiles in reverse
            # (not `_` for the unused delta u: it holds a tensor elsewhere in the loop)
            dts, _dtus, dys = _tile_inputs(dt_base, u_base, do_base, z_base, t0, offs_t, mask_c,
                                           L, bias, HAS_BIAS, SOFTPLUS, HAS_Z, EVEN, T, R)
            for r in tl.static_range(R):
                S += tl.sum(dts[r], axis=1, keep_dims=True)
            if PREFETCH:
                k_in, A2n, Cn = _k_cols(kp, A_col, C_base, C_ptr, 0, s_C_n, t0, offs_t, L, dim,
                                        d_col, mask_c, VARYING_BC, EVEN, BLOCK_D, T, R, True)
            for n in range(0, dstate):
                if PREFETCH:  # the next state's columns (state 0 again after the last: unused)
                    k_nx, A_nx, C_nx = _k_cols(kp, A_col, C_base, C_ptr, (n + 1) % dstate,
                                               s_C_n, t0, offs_t, L, dim, d_col, mask_c,
                                               VARYING_BC, EVEN, BLOCK_D, T, R, True)
                else:
                    k_in, A2n, Cn = _k_cols(kp, A_col, C_base, C_ptr, n, s_C_n, t0, offs_t, L,
                                            dim, d_col, mask_c, VARYING_BC, EVEN, BLOCK_D, T, R,
                                            True)
                k_out = k_in
                for r in tl.static_range(R - 1, -1, -1):
                    _, k_out = _grad_scan(tl.exp2(dts[r] * A2n), dys[r] * Cn[r], k_out, offs_t, T)
                tl.store(kp + n * dim, k_out, mask=mask_c, eviction_policy=SCRATCH_EV)
                if PREFETCH:
                    k_in, A2n, Cn = k_nx, A_nx, C_nx
        tl.store(ss_base + seg * dim, S, mask=mask_c)
    else:
        kp = kap_ptr + (pid_b * n_seg + seg) * dstate * dim + d_col  # + n * dim
        for n in range(0, dstate):  # k entering from the segments after, the last first
            A2n = _col_load(A_col + n * dim, mask_c) * 1.4426950408889634
            kn = tl.zeros((BLOCK_D, 1), dtype=tl.float32)
            for jj in range(0, n_sub - (seg + 1) * (n_sub // n_seg)):  # sub-segments after
                j = n_sub - 1 - jj
                kn = (tl.exp2(_col_load(ss_base + j * dim, mask_c) * A2n) * kn
                      + _col_load(sk_base + (j * dstate + n) * dim, mask_c))
            tl.store(kp + n * dim, kn, mask=mask_c, eviction_policy=SCRATCH_EV)
        part = (seg * tl.num_programs(1) + pid_b) * dim + d_col  # into (n_seg, B, D)
        dA_p = dA_ptr + (seg * tl.num_programs(1) + pid_b) * dstate * dim + d_col  # + n * dim
        dB_p = dB_ptr + (seg * tl.num_programs(1) + pid_b) * dstate * dim + d_col  # (D, N) B
        dC_p = dC_ptr + (seg * tl.num_programs(1) + pid_b) * dstate * dim + d_col
        dD_acc = tl.zeros((BLOCK_D, 1), dtype=tl.float32)
        dbias_acc = tl.zeros((BLOCK_D, 1), dtype=tl.float32)
        if HAS_D:
            Dv = _col_load(D_ptr + d_col, mask_c)
        lane = tl.arange(0, BLOCK_D)[:, None] % (BFLY if BFLY > 0 else 1)  # the row's lane
        n_chunks = tl.cdiv(L, CHUNK)
        ck_base = ckpt_ptr + ((pid_b * dim + d_col) * n_chunks) * dstate  # (BLOCK_D, 1)
        TPC: tl.constexpr = CHUNK // TT  # tiles per chunk
        tl_base = tiles_ptr + (pid_b * n_seg + seg) * TPC * dstate * dim + d_col
        k0 = (seg * seg_len) // CHUNK
        k1 = tl.cdiv(s_end, CHUNK)
        for ki in range(0, k1 - k0):
            k = k1 - 1 - ki  # chunks in reverse
            j0 = k * TPC
            j1 = tl.minimum(j0 + TPC, tl.cdiv(L, TT))  # the chunk's tiles: j0 .. j1 - 1
            # forward over the chunk from its checkpoint: the state entering each tile
            for n in range(0, dstate):
                tl.store(tl_base + n * dim, _col_load(ck_base + k * dstate + n, mask_c),
                         mask=mask_c, eviction_policy=SCRATCH_EV)
            for j in range(j0, j1 - 1):  # (the last tile's end state is not needed)
                t0 = j * TT
                dts, dtus, dys = _tile_inputs(dt_base, u_base, do_base, z_base, t0, offs_t,
                                              mask_c, L, bias, HAS_BIAS, SOFTPLUS, HAS_Z, EVEN,
                                              T, R)
                h_ptr = tl_base + (j - j0) * dstate * dim
                if BCL:
                    Bt = _bc_lanes(B_base, s_B_n, dstate, t0, offs_t, L, EVEN, BLOCK_D, T, R,
                                   BCLP)
                if PREFETCH:
                    h_in, A2n, Bn = _k_cols(h_ptr, A_col, B_base, B_ptr, 0, s_B_n, t0, offs_t, L,
                                            dim, d_col, mask_c, VARYING_BC, EVEN, BLOCK_D, T, R,
                                            not BCL)
                for n in range(0, dstate):
                    if PREFETCH:
                        h_nx, A_nx, B_nx = _k_cols(h_ptr, A_col, B_base, B_ptr, (n + 1) % dstate,
                                                   s_B_n, t0, offs_t, L, dim, d_col, mask_c,
                                                   VARYING_BC, EVEN, BLOCK_D, T, R, not BCL)
                    else:
                        h_in, A2n, Bn = _k_cols(h_ptr, A_col, B_base, B_ptr, n, s_B_n, t0,
                                                offs_t, L, dim, d_col, mask_c, VARYING_BC, EVEN,
                                                BLOCK_D, T, R, not BCL)
                    Bp = _lane_pieces(Bt, n, R, ASM) if BCL else Bn
                    h_out = h_in
                    for r in tl.static_range(R):
                        _, h_out = _state_scan(tl.exp2(dts[r] * A2n), dtus[r] * Bp[r], h_out,
                                               offs_t, T)
                    tl.store(h_ptr + (dstate + n) * dim, h_out, mask=mask_c,
                             eviction_policy=SCRATCH_EV)
                    if PREFETCH:
                        h_in, A2n, Bn = h_nx, A_nx, B_nx
            # the chunk's tiles in reverse
            for ji in range(0, j1 - j0):
                j = j1 - 1 - ji
                t0 = j * TT
                dts, dtus, dys = _tile_inputs(dt_base, u_base, do_base, z_base, t0, offs_t,
                                              mask_c, L, bias, HAS_BIAS, SOFTPLUS, HAS_Z, EVEN,
                                              T, R)
                ys = ()
                ddts = ()
                gBs = ()  # sum_n g_t[n] B_t[n]
                for _r in tl.static_range(R):
                    ys = ys + (tl.zeros((BLOCK_D, T), dtype=tl.float32),)
                    ddts = ddts + (tl.zeros((BLOCK_D, T), dtype=tl.float32),)
                    gBs = gBs + (tl.zeros((BLOCK_D, T), dtype=tl.float32),)
                h_ptr = tl_base + (j - j0) * dstate * dim
                if BCL:
                    Bt = _bc_lanes(B_base, s_B_n, dstate, t0, offs_t, L, EVEN, BLOCK_D, T, R,
                                   BCLP)
                    Ct = _bc_lanes(C_base, s_C_n, dstate, t0, offs_t, L, EVEN, BLOCK_D, T, R,
                                   BCLP)
                if PREFETCH:
                    h_in, k_in, A2n, dA_o, Bn, Cn, dB_o, dC_o = _rev_cols(
                        h_ptr, kp, A_col, dA_p, dB_p, dC_p, B_base, B_ptr, C_base, C_ptr, 0,
                        s_B_n, s_C_n, t0, offs_t, L, dim, d_col, mask_c, VARYING_BC, EVEN,
                        BLOCK_D, T, R, not BCL)
                for n in range(0, dstate):
                    if PREFETCH:
                        h_nx, k_nx, A_nx, dA_nx, B_nx, C_nx, dB_nx, dC_nx = _rev_cols(
                            h_ptr, kp, A_col, dA_p, dB_p, dC_p, B_base, B_ptr, C_base, C_ptr,
                            (n + 1) % dstate, s_B_n, s_C_n, t0, offs_t, L, dim, d_col, mask_c,
                            VARYING_BC, EVEN, BLOCK_D, T, R, not BCL)
                    else:
                        h_in, k_in, A2n, dA_o, Bn, Cn, dB_o, dC_o = _rev_cols(
                            h_ptr, kp, A_col, dA_p, dB_p, dC_p, B_base, B_ptr, C_base, C_ptr, n,
                            s_B_n, s_C_n, t0, offs_t, L, dim, d_col, mask_c, VARYING_BC, EVEN,
                            BLOCK_D, T, R, not BCL)
                    Bp = _lane_pieces(Bt, n, R, ASM) if BCL else Bn
                    Cp = _lane_pieces(Ct, n, R, ASM) if BCL else Cn
                    As = ()
                    bs = ()
                    hs = ()
                    h = h_in
                    for r in tl.static_range(R):  # the tile's states, forwards
                        a = tl.exp2(dts[r] * A2n)
                        b = dtus[r] * Bp[r]
                        hr, h = _state_scan(a, b, h, offs_t, T)
                        As = As + (a,)
                        bs = bs + (b,)
                        hs = hs + (hr,)
                    gs = ()
                    k_out = k_in
                    for r in tl.static_range(R - 1, -1, -1):  # the gradient, backwards
                        g, k_out = _grad_scan(As[r], dys[r] * Cp[r], k_out, offs_t, T)
                        gs = (g,) + gs
                    tl.store(kp + n * dim, k_out, mask=mask_c, eviction_policy=SCRATCH_EV)
                    dA_s = dA_o
                    dB_s = dB_o
                    dC_s = dC_o
                    ys_n = ()
                    ddts_n = ()
                    gBs_n = ()
                    for r in tl.static_range(R):
                        g = gs[r]
                        h = hs[r]
                        q = g * (h - bs[r])  # g_t a_t h_{t-1}
                        ddts_n = ddts_n + (ddts[r] + q * (A2n * 0.6931471805599453),)
                        dA_s += tl.sum(q * dts[r], axis=1, keep_dims=True)
                        gBs_n = gBs_n + (gBs[r] + g * Bp[r],)
                        if HAS_Z:
                            ys_n = ys_n + (ys[r] + h * Cp[r],)
                        else:
                            ys_n = ys_n + (ys[r],)
                        if VARYING_BC:
                            if BFLY > 0:  # one atomic per (warp, n, t), from lanes that lead
                                v, isq, stp, lead = _lane_sums(g * dtus[r], dys[r] * h, lane, BFLY,
                                                               T, ASM)
                                ts = t0 + r * T + stp
                                off = n * s_dB_n + ts
                                tl.atomic_add(tl.where(isq, dC_base + off, dB_base + off), v,
                                              mask=lead if EVEN else lead & (ts < L),
                                              sem="relaxed")
                            else:
                                ts = t0 + r * T + offs_t  # (not `_`: its type would change)
                                tl.atomic_add(dB_base + n * s_dB_n + ts, tl.sum(g * dtus[r], axis=0),
                                              mask=None if EVEN else ts < L, sem="relaxed")
                                tl.atomic_add(dC_base + n * s_dB_n + ts, tl.sum(dys[r] * h, axis=0),
                                              mask=None if EVEN else ts < L, sem="relaxed")
                        else:
                            dB_s += tl.sum(g * dtus[r], axis=1, keep_dims=True)
                            dC_s += tl.sum(dys[r] * h, axis=1, keep_dims=True)
                    ys = ys_n
                    ddts = ddts_n
                    gBs = gBs_n
                    tl.store(dA_p + n * dim, dA_s, mask=mask_c, eviction_policy=SCRATCH_EV)
                    if not VARYING_BC:
                        tl.store(dB_p + n * dim, dB_s, mask=mask_c, eviction_policy=SCRATCH_EV)
                        tl.store(dC_p + n * dim, dC_s, mask=mask_c, eviction_policy=SCRATCH_EV)
                    if PREFETCH:
                        h_in, k_in, A2n, dA_o, Bn, Cn, dB_o, dC_o = (
                            h_nx, k_nx, A_nx, dA_nx, B_nx, C_nx, dB_nx, dC_nx)
                # every state done: the tile's inputs again (from the cache) and its gradients
                g_du = ()
                g_dt = ()
                g_dz = ()
                for r in tl.static_range(R):
                    t, mask_dt = _piece_mask(t0, r, offs_t, mask_c, L, T)
                    dt, dt_raw, u, dout, zz, dy = _piece_inputs(dt_base, u_base, do_base, z_base,
                                                                t, mask_dt, bias, HAS_BIAS,
                                                                SOFTPLUS, HAS_Z, EVEN)
                    du = gBs[r] * dt
                    y = ys[r]
                    if HAS_D:
                        du += Dv * dy
                        dD_acc += tl.sum(dy * u, axis=1, keep_dims=True)
                    if HAS_Z:
                        if HAS_D:
                            y += Dv * u
                        sz = tl.sigmoid(zz)
                        dz = dout * y * sz * (1.0 + zz * (1.0 - sz))
                        if WIDE2:
                            g_dz = g_dz + (dz.to(dz_ptr.dtype.element_ty),)
                        else:
                            tl.store(dz_base + t[None, :], dz.to(dz_ptr.dtype.element_ty),
                                     mask=None if EVEN else mask_dt, eviction_policy=STORE_EV)
                    ddt = ddts[r] + gBs[r] * u
                    if SOFTPLUS:
                        ddt = ddt * tl.sigmoid(dt_raw)
                    if not EVEN:
                        ddt = tl.where(mask_dt, ddt, 0.0)
                    if HAS_BIAS:
                        dbias_acc += tl.sum(ddt, axis=1, keep_dims=True)
                    if WIDE2:
                        g_du = g_du + (du.to(du_ptr.dtype.element_ty),)
                        g_dt = g_dt + (ddt.to(ddelta_ptr.dtype.element_ty),)
                    else:
                        tl.store(du_base + t[None, :], du.to(du_ptr.dtype.element_ty),
                                 mask=None if EVEN else mask_dt, eviction_policy=STORE_EV)
                        tl.store(ddt_base + t[None, :], ddt.to(ddelta_ptr.dtype.element_ty),
                                 mask=None if EVEN else mask_dt, eviction_policy=STORE_EV)
                if WIDE2:  # the tile's 2 pieces as (2 BLOCK_D, T) rows: a channel's two
                    # pieces in adjacent lanes, so one instruction writes whole sectors
                    kk = tl.arange(0, 2)
                    tw = t0 + (kk[:, None] * T + offs_t[None, :])  # (2, T)
                    rows = tl.reshape(tl.broadcast_to(d_col[:, :, None], (BLOCK_D, 2, 1)),
                                      (2 * BLOCK_D, 1))
                    tws = tl.reshape(tl.broadcast_to(tw[None, :, :], (BLOCK_D, 2, T)),
                                     (2 * BLOCK_D, T))
                    tws = tl.max_contiguous(tl.multiple_of(tws, [T, T]), [1, T])
                    mw = None
                    if not EVEN:
                        mrow = tl.reshape(tl.broadcast_to(mask_c[:, :, None], (BLOCK_D, 2, 1)),
                                          (2 * BLOCK_D, 1))
                        mw = mrow & (tws < L)
                    base_u = du_ptr + pid_b * s_u_b + rows * s_u_d + tws
                    base_dt = ddelta_ptr + pid_b * s_u_b + rows * s_u_d + tws
                    tl.store(base_u, _pieces2(g_du, BLOCK_D, T), mask=mw,
                             eviction_policy=STORE_EV)
                    tl.store(base_dt, _pieces2(g_dt, BLOCK_D, T), mask=mw,
                             eviction_policy=STORE_EV)
                    if HAS_Z:
                        base_z = dz_ptr + pid_b * s_z_b + rows * s_z_d + tws
                        tl.store(base_z, _pieces2(g_dz, BLOCK_D, T), mask=mw,
                                 eviction_policy=STORE_EV)
        if HAS_D:
            tl.store(dD_ptr + part, dD_acc, mask=mask_c)
        if HAS_BIAS:
            tl.store(dbias_ptr + part, dbias_acc, mask=mask_c)


@triton.jit
def _selective_scan_fwd_kernel(
    # pointers (B and C time-varying: transposed to (B, [G,] L, N), N contiguous)
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, last_ptr, ckpt_ptr,
    seg_h_ptr, seg_s_ptr, scratch_ptr,
    # dimensions: the sequence is cut into n_seg segments of seg_len steps (a multiple of CHUNK)
    L, dim, dstate, dpg, seg_len, n_seg,
    # strides
    s_u_b, s_u_d, s_dt_b, s_dt_d, s_z_b, s_z_d, s_o_b, s_o_d,
    s_B_b, s_B_g, s_B_t, s_C_b, s_C_g, s_C_t,
    # meta-parameters
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    VARYING_BC: tl.constexpr, SAVE_CKPT: tl.constexpr, CHUNK: tl.constexpr,
    PASS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, PRE: tl.constexpr,
):
    """The forward: one time step per loop iteration, the state (BLOCK_D, N) in registers.

    The L steps are cut into n_seg segments run by separate programs, so that the GPU has
    n_seg times more independent recurrences to interleave. PASS 1 runs each segment (but
    the last) from a zero state and stores its end state H_k and S_k = sum of its deltas:
    the segment maps h to exp(A S_k) h + H_k. PASS 2 starts segment k from the composition
    of the maps of segments 0..k-1, runs it and writes the outputs, the state every CHUNK
    steps (SAVE_CKPT, for the backward) and the last state. With PRE, the per-channel
    values of a chunk (delta after softplus, delta u, D u, silu(z)) are computed once on a
    (BLOCK_D, CHUNK) tile and staged in a small scratch buffer that stays in cache, so the
    loop over time evaluates one exponential per (channel, state) and no other.
    """
    grp, offs_d, mask_d = _channel_block(dpg, BLOCK_D)  # channels (BLOCK_D,)
    pid_b = tl.program_id(1).to(tl.int64)  # batch row
    seg = tl.program_id(2)  # segment of the sequence
    offs_n = tl.arange(0, BLOCK_N)  # state indices, (BLOCK_N,)
    mask_n = offs_n < dstate
    mask_dn = mask_d[:, None] & mask_n[None, :]
    dn_offs = offs_d[:, None] * dstate + offs_n[None, :]  # into (D, N), (BLOCK_D, BLOCK_N)
    # A in base-2 units: exp(delta A) = exp2(delta * A log2 e)
    A2 = tl.load(A_ptr + dn_offs, mask=mask_dn, other=0.0) * 1.4426950408889634
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0)
    if VARYING_BC:
        B_p = B_ptr + pid_b * s_B_b + grp * s_B_g + offs_n  # (BLOCK_N,) pointers at t = 0
        C_p = C_ptr + pid_b * s_C_b + grp * s_C_g + offs_n
    else:
        Bt = tl.load(B_ptr + dn_offs, mask=mask_dn, other=0.0).to(tl.float32)  # (BLOCK_D, BLOCK_N)
        Ct = tl.load(C_ptr + dn_offs, mask=mask_dn, other=0.0).to(tl.float32)
    u_p = u_ptr + pid_b * s_u_b + offs_d * s_u_d  # (BLOCK_D,) pointers at t = 0
    dt_p = delta_ptr + pid_b * s_dt_b + offs_d * s_dt_d
    z_p = z_ptr + pid_b * s_z_b + offs_d * s_z_d
    o_p = out_ptr + pid_b * s_o_b + offs_d * s_o_d
    # per-segment summaries: H (B, D, n_seg, N) and S (B, D, n_seg)
    sh_p = seg_h_ptr + ((pid_b * dim + offs_d[:, None]) * n_seg) * dstate + offs_n[None, :]
    ss_p = seg_s_ptr + (pid_b * dim + offs_d) * n_seg
    t0 = seg * seg_len
    t1 = tl.minimum(t0 + seg_len, L)
    h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)  # the state
    if PASS == 1:
        S = tl.zeros((BLOCK_D,), dtype=tl.float32)
        for t in range(t0, t1):
            u = tl.load(u_p + t, mask=mask_d, other=0.0).to(tl.float32)  # (BLOCK_D,)
            dt = tl.load(dt_p + t, mask=mask_d, other=0.0).to(tl.float32)
            if HAS_BIAS:
                dt += bias
            if SOFTPLUS:
                dt = _softplus(dt)
            if VARYING_BC:
                Bt = tl.load(B_p + t * s_B_t, mask=mask_n, other=0.0).to(tl.float32)[None, :]
            h = tl.exp2(dt[:, None] * A2) * h + (dt * u)[:, None] * Bt
            S += dt
        tl.store(sh_p + seg * dstate, h, mask=mask_dn)
        tl.store(ss_p + seg, S, mask=mask_d)
    else:
        for j in range(0, seg):  # the state entering this segment
            S_j = tl.load(ss_p + j, mask=mask_d, other=0.0)
            h = tl.exp2(S_j[:, None] * A2) * h + tl.load(sh_p + j * dstate, mask=mask_dn, other=0.0)
        n_chunks = tl.cdiv(L, CHUNK)
        ck_p = ckpt_ptr + ((pid_b * dim + offs_d[:, None]) * n_chunks) * dstate + offs_n[None, :]
        offs_c = tl.arange(0, CHUNK)
        sc_p = scratch_ptr + ((pid_b * dim + offs_d) * n_seg + seg) * (4 * CHUNK)  # (BLOCK_D,)
        for c in range(t0 // CHUNK, tl.cdiv(t1, CHUNK)):
            if SAVE_CKPT:
                tl.store(ck_p + c * dstate, h, mask=mask_dn)  # state before chunk c
            if PRE:  # stage the chunk's per-channel values: (BLOCK_D, CHUNK) tiles
                tt = c * CHUNK + offs_c
                m2 = mask_d[:, None] & (tt < L)[None, :]
                u2 = tl.load(u_p[:, None] + tt[None, :], mask=m2, other=0.0).to(tl.float32)
                dt2 = tl.load(dt_p[:, None] + tt[None, :], mask=m2, other=0.0).to(tl.float32)
                if HAS_BIAS:
                    dt2 += bias[:, None]
                if SOFTPLUS:
                    dt2 = _softplus(dt2)
                du2 = u2 * 0.0
                if HAS_D:
                    du2 = Dv[:, None] * u2
                g2 = u2 * 0.0 + 1.0
                if HAS_Z:
                    z2 = tl.load(z_p[:, None] + tt[None, :], mask=m2, other=0.0).to(tl.float32)
                    g2 = z2 * tl.sigmoid(z2)
                tl.debug_barrier()  # the previous chunk's reads are done
                sc2 = sc_p[:, None] + offs_c[None, :]
                m_sc = mask_d[:, None]
                tl.store(sc2, dt2, mask=m_sc)
                tl.store(sc2 + CHUNK, dt2 * u2, mask=m_sc)
                tl.store(sc2 + 2 * CHUNK, du2, mask=m_sc)
                tl.store(sc2 + 3 * CHUNK, g2, mask=m_sc)
                tl.debug_barrier()  # the tiles are visible to every thread of the program
            for t in range(c * CHUNK, tl.minimum(c * CHUNK + CHUNK, L)):
                if PRE:
                    k = t - c * CHUNK
                    dt = tl.load(sc_p + k, mask=mask_d, other=0.0)  # (BLOCK_D,)
                    dtu = tl.load(sc_p + CHUNK + k, mask=mask_d, other=0.0)
                else:
                    u = tl.load(u_p + t, mask=mask_d, other=0.0).to(tl.float32)  # (BLOCK_D,)
                    dt = tl.load(dt_p + t, mask=mask_d, other=0.0).to(tl.float32)
                    if HAS_BIAS:
                        dt += bias
                    if SOFTPLUS:
                        dt = _softplus(dt)
                    dtu = dt * u
                if VARYING_BC:
                    Bt = tl.load(B_p + t * s_B_t, mask=mask_n, other=0.0).to(tl.float32)[None, :]
                    Ct = tl.load(C_p + t * s_C_t, mask=mask_n, other=0.0).to(tl.float32)[None, :]
                h = tl.exp2(dt[:, None] * A2) * h + dtu[:, None] * Bt  # (BLOCK_D, BLOCK_N)
                y = tl.sum(h * Ct, axis=1)  # (BLOCK_D,)
                if PRE:
                    y = (y + tl.load(sc_p + 2 * CHUNK + k, mask=mask_d, other=0.0)) \
                        * tl.load(sc_p + 3 * CHUNK + k, mask=mask_d, other=0.0)
                else:
                    if HAS_D:
                        y += Dv * u
                    if HAS_Z:
                        zz = tl.load(z_p + t, mask=mask_d, other=0.0).to(tl.float32)
                        y *= zz * tl.sigmoid(zz)
                tl.store(o_p + t, y.to(out_ptr.dtype.element_ty), mask=mask_d)
        if seg == n_seg - 1:
            tl.store(last_ptr + (pid_b * dim + offs_d[:, None]) * dstate + offs_n[None, :], h,
                     mask=mask_dn)


# (BLOCK_D, num_warps) tried once per (N, D, dtypes) on a GPU; fixed under the interpreter
# (measured on the H200: a 4-config list without (2, 1), (8, 1), (8, 2), (32, 4) ran 35% slower)
_FWD_CONFIGS = [triton.Config({"BLOCK_D": bd, "PRE": pre}, num_warps=w)
                for bd, w, pre in [(2, 1, False), (4, 1, False), (8, 1, False), (8, 2, False),
                                   (16, 2, False), (32, 4, False), (8, 1, True), (16, 2, True)]]
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
_INTERPRET_PRE = True  # which loop variant the interpreter runs (tests cover both)
_fwd_kernel_tuned = (_selective_scan_fwd_kernel if _INTERPRET else
                     triton.autotune(_FWD_CONFIGS, key=["dstate", "dpg", "n_seg", "PASS"])(_selective_scan_fwd_kernel))

# (BLOCK_D, T, num_warps) of the tile forward, tried once per (N, D, dtypes) on a GPU. With
# checkpoints, T is the backward's CHUNK (one checkpoint per tile) and only BLOCK_D, warps vary.
# Chosen from SASS compiled for sm_90 (no GPU run yet): loads of 16 bytes put 4 (fp32) or 8
# (bf16) consecutive steps in each thread, a warp spans T/4 or T/8 lanes, so the scan's shuffles
# grow with log2(T); with 8 values per thread a (state, step) costs ~24-28 instructions, with 4
# ~29-35; T = 256 spreads a row over 2 warps (shared-memory scan: excluded).
_TILE_CONFIGS = [triton.Config({"BLOCK_D": bd, "T": t}, num_warps=w)
                 for bd, t, w in [(32, 32, 4), (16, 32, 2), (16, 64, 4), (8, 128, 4)]]
_TILE_CKPT_CONFIGS = [triton.Config({"BLOCK_D": bd}, num_warps=w)
                      for bd, w in [(16, 2), (32, 4), (16, 4), (32, 8)]]
_tile_kernel_tuned = (None if _INTERPRET else triton.autotune(
    _TILE_CONFIGS, key=["dstate", "dpg"])(_selective_scan_fwd_tile_kernel))
_tile_ckpt_kernel_tuned = (None if _INTERPRET else triton.autotune(
    _TILE_CKPT_CONFIGS, key=["dstate", "dpg", "T"])(_selective_scan_fwd_tile_kernel))
_INTERPRET_TILE = dict(BLOCK_D=4, T=16)  # the interpreter's tile (several tiles per test)

# (BLOCK_D, T, num_warps) of the rows forward: T is one 16-byte load (4 fp32, 8 bf16/fp16
# steps) or half of one. Measured on the H200 at B=8, D=1536, N=16, L=4096 in one segment
# (2026-11-28): fp32 (64, 4, 1) 1.63 ms, (32, 4, 1) 2.03, (128, 4, 2) 2.04; bf16 (64, 8, 2)
# 1.04 ms. With 4 segments (ROWS_THREADS) the autotuner kept (64, 4, 1) in fp32, 1.10 ms,
# and (32, 4, 1) in bf16, 0.89 ms (the tile forward: 2.14 and 0.86 ms in the same run).
# (128, 4, 2) and (32, 8, 1) never won and are left out (each config compiles twice: PASS 1, 2).
_ROWS_CONFIGS = [triton.Config({"BLOCK_D": bd, "T": t}, num_warps=w)
                 for bd, t, w in [(64, 4, 1), (32, 4, 1), (64, 8, 2)]]
_rows_kernel_tuned = (None if _INTERPRET else triton.autotune(
    _ROWS_CONFIGS, key=["dstate", "dpg", "CHUNK", "n_seg", "PASS"])(triton.heuristics(
        {"EVEN": lambda a: a["L"] % a["T"] == 0 and a["dpg"] % a["BLOCK_D"] == 0})(
            _selective_scan_fwd_rows_kernel)))
_INTERPRET_ROWS = dict(BLOCK_D=4, T=4)  # the interpreter's rows tile
ROWS_THREADS = 49152  # the rows forward cuts L into segments until about this many threads
ROWS_SEGMENTS: int | None = None  # fixed number of segments (tests, sweeps); None: automatic

# The lanes forward's launches: (channels per warp, steps per lane, register cap), with
# one warp per program. Measured on the H200 at B=8, D=1536, N=16, L=4096 (2026-11-29,
# benchmarks/experiments/lanes_forward.py, results/nvidia-h200/lanes_forward.json): fp32
# (8, 16, 128 registers) 0.89 ms, (4, 16, -) 0.95, (8, 16, -) 1.10, (1, 16, -) 1.17,
# (8, 8, -) 1.07; bf16 (2, 16, 128) 0.64 ms, (4, 16, 168) 0.65, (4, 16, -) 0.66-0.70,
# (8, 16, 128) 0.69-0.73, (4, 16, 128) 0.79. Autotuned over the three with 128 registers:
# fp32 0.81 ms, bf16 0.64 ms (the suite at 11fc828). Every run is 16 steps (the checkpoint
# interval CHUNK is a multiple of 16 for any N). Also measured slower at (2, 16), 2026-11-29
# (session 7): caps of 144 / 168 registers (fewer spills but 14 / 12 warps per SM: fp32
# 0.96 / 0.95 ms against 0.82, bf16 0.74 / 0.73 against 0.63), 8-byte loads (bf16 0.67),
# and two forms of _lanes_states with 3-9% fewer instructions (fp32 0.87 and 0.95 ms; they
# spill more or wait longer on loads: benchmarks/experiments/lanes_variants.py).
LANES_CONFIGS = [triton.Config({"CPW": cpw, "T": 16}, num_warps=1, maxnreg=mr)
                 for cpw, mr in [(8, 128), (4, 128), (2, 128)]]
_lanes_kernel_tuned = (None if _INTERPRET else triton.autotune(
    LANES_CONFIGS, key=["dstate", "dpg", "V", "SAVE_CKPT", "VARYING_BC", "CHUNK"])(
        triton.heuristics({
            "EVEN": lambda a: _lanes_even(a["L"], a["dpg"], a["CPW"], a["T"]),
            "PAIRS": lambda a: _lanes_pairs(a)})(_selective_scan_fwd_lanes_kernel)))
_INTERPRET_LANES = dict(CPW=2, T=4)  # the interpreter's launch: 16 lanes of 4 steps a channel
# The lanes forward unrolls its N states: at N = 64 one launch took 3 minutes to compile for
# sm_90 (on the CPU machine, triton 3.9) and spilled heavily (1,175 spill instructions at the
# 128-register cap), so "auto" only times it up to this N (MAMBABOOK_SCAN_FORWARD=lanes runs
# it for any N).
LANES_AUTO_MAX_N = 32
# The states forward's launch (one for every dtype; auto times it against the others): NL
# rows (lanes) per channel, chunks of T steps (pieces of one 16-byte load), the prefetch,
# two chunks in flight (PIPE).
# H200, B=8, D=1536, N=16, L=4096, bf16, side by side in one run (session 12,
# benchmarks/experiments/states_forward.py, results/nvidia-h200/states_forward.json): NL=4,
# T=16 with PREF 0.572 ms (0.591 without), NL=2 0.571-0.576 (with checkpoints 0.681 against
# 0.622), T=8 0.63, NL=8 1.04-1.10 and NL=16 1.21 (the shuffles: Nsight Compute shows the
# short-scoreboard and MIO stalls of NL=8 at 60% of its samples), against the lanes forward's
# 0.618-0.627; with checkpoints 0.622 against 0.803-0.812. B and C widened to float32 before
# the kernel (no widening in it, but twice the bytes to wait for): 0.65-1.03 ms. In float32
# the lanes forward stays ahead (0.81 against 0.96-1.02 ms: the states kernel waits on its
# 16-byte B and C loads, 58% of its stall samples), so auto should pick lanes there.
# Session 13: two chunks in flight, PIPE=2, 0.556 ms (PIPE=1 0.559; NL=4 T=16 PREF 0.571 in
# the same run), with checkpoints 0.586 (0.622); at NL=2 or T=8 PIPE=2 is slower (0.75-0.81).
# The exp2 of one state in four on the FMA pipe (POLY=1): 0.569 (the special-function pipe
# was 45% busy, not the bound; issue went from 50% to 59% busy).
# Session 14: each row loads its channel's whole chunk of u (UWHOLE, with PIPE=2): only delta
# is gathered (T shuffles a row instead of 2 T), 0.543 against 0.556 ms (three rounds;
# u as bfloat16 instead of int32 pairs 0.550; T=8 0.609).
STATES_LAUNCH = dict(NL=4, T=16, PIPE=2, UWHOLE=True)
STATES_FIXED: dict | None = None  # one launch (sweeps): NL, T[, V, maxnreg, PREF, PIPE, POLY,
# UWHOLE]
_INTERPRET_STATES = dict(NL=4, T=8, PIPE=2, UWHOLE=True)  # the interpreter's: 8 channels a warp
LANES_FIXED: dict | None = None  # one launch instead of autotuning (sweeps): CPW, T[, maxnreg, PAIRS]

# The rows backward's launches, by the element size of u: one channel per lane, one warp,
# tiles of R pieces of T steps (each piece one 16-byte load per lane). Measured on the H200 at
# B=8, D=1536, N=16, L=4096 (benchmarks/experiments/backward_layouts.py;
# results/nvidia-h200/backward_rows_sweep.json). Tiles of one piece (2026-11-28): 6.2-6.9 ms
# with 4, 8 or 16 segments; 64 channels per program (1 or 2 warps), 128 (4 warps) or 2, 4
# states per iteration: 6.4-8.0 ms. Then (2026-11-29, 4 segments) the next state's columns
# prefetched (PREFETCH) and the dB/dC butterfly (BFLY): fp32 6.22 -> 5.27 ms, bf16 5.88 ->
# 4.60 ms; 2 segments 7.0 / 5.9, 8 segments 5.7 / 5.3. Then (2026-11-29, session 8, beside
# that kernel at 5.27-5.30 / 4.55-4.60 ms): tiles of 2 pieces, fp32 3.68-3.71 ms (4 pieces
# 3.71, uncapped at 251 registers; 2 pieces capped at 128 or 144 registers 4.0-4.1 / 3.85;
# 3 or 5 segments 4.1-4.4), bf16 with pieces of 8 steps, 2 of them and a 168-register cap
# 2.77 ms (one piece 2.98-3.15, pieces of 4 3.6-3.9, 2 pieces uncapped 3.06, capped at 144
# 3.34, 4 pieces 5.4-6.5). No autotuning: the atomics would need a reset per trial. Session 9,
# side by side in one run (backward_rows_sweep.json): B and C shuffled from one load per tile
# (BCL) 3.45 against 3.52 ms in fp32, 2.90 against 2.63 ms in bf16 (more spills at the cap),
# so fp32 only; the states in pairs (rows_pairs.patch, removed: in git at 4849a59) no faster
# (3.70 / 3.66 ms).
# Session 11 (fp32, side by side in one run; results/nvidia-h200/
# backward_rows_sweep.json "session11_*"): a 168-register cap 3.44 -> 3.28 ms (12 warps per SM
# instead of 11), whole-sector gradient stores (WIDE) 3.22, the gradient stores evict_first
# 3.07, the scratch columns' stores evict_last too 2.93 (PASS 2's HBM traffic 4.5 -> 3.3 GB);
# evict_last on the scratch loads, evict_first on the checkpoint loads or the last input
# reads, evict_last on the first: each slower (2.98-3.14). In bf16 WIDE spills more and is
# slower (2.71 against 2.40 ms), and the hints alone gain 2% or lose (2.36-2.83).
# Then in bf16 (same session, results/nvidia-h200/backward_rows_sweep.json "session11_bclp"):
# B and C shuffled as packed bfloat16 pairs (BCLP: sm_90 spills 53/70 -> 34/46 per PASS 2 tile)
# 2.42 -> 2.27 ms, with both eviction policies 2.215; WIDE on top 2.37, a 184 cap 2.97.
BWD_ROWS = {4: dict(BLOCK_D=32, T=4, R=2, num_warps=1, maxnreg=168, PREFETCH=True, BFLY=True,
                    BCL=True, WIDE=True, STORE_EV="evict_first", SCRATCH_EV="evict_last"),
            2: dict(BLOCK_D=32, T=8, R=2, num_warps=1, maxnreg=168, PREFETCH=True, BFLY=True,
                    BCL=True, BCLP=True, STORE_EV="evict_first", SCRATCH_EV="evict_last")}
_INTERPRET_BWD_ROWS = dict(BLOCK_D=8, T=4, R=2, PREFETCH=True, BFLY=True,  # the interpreter's
                           WIDE=True, STORE_EV="evict_first", SCRATCH_EV="evict_last")  # tile
# keys a launch may omit
_ROWS_DEFAULTS = dict(R=1, BFLY=True, BCL=True, WIDE=False, STORE_EV="", SCRATCH_EV="",
                      BCLP=False)
BWD_SEGMENTS: int | None = None  # the rows backward's segments (tests, sweeps); None: automatic
# The rows backward's PASS 1 runs only (n_seg - 1) x B x D / BLOCK_D one-warp programs (1,152
# at B=8, D=1536, 4 segments: 8.7 warps per SM), so it cuts each segment into BWD_SPLIT
# sub-segments (fewer where they would not be whole tiles, or where PASS 2 would compose more
# than 32 maps). H200, B=8, D=1536, N=16, L=4096 (session 9, backward_rows_sweep.json): PASS 1
# 0.72 -> 0.58 ms (fp32) and 0.46 -> 0.35 ms (bf16) at 4; the backward 3.74 -> 3.46-3.55 ms with
# 2, 4 or 8 (fp32), 2.77 -> 2.74 / 2.65 / 2.64 ms (bf16).
BWD_SPLIT = 4
# The checkpoint interval of forward + backward, by the inputs' element size: the forward
# saves the state every CHUNK steps; the rows backward sweeps each chunk forwards, storing its
# tiles' first states, then walks the tiles in reverse, so a chunk of one tile skips the
# sweep. Where absent: _config's max(16, 512 / N) (32 at N = 16). A multiple of the lanes
# forward's runs (16) and of the backward's tiles (8 steps fp32, 16 bf16). H200, B=8,
# D=1536, N=16, L=4096, forward + backward (session 10, results/nvidia-h200/
# fwdbwd_breakdown.json): bf16 3.20 ms at 16 (PASS 2 2.00 ms, no sweep; the forward 0.80)
# against 3.36 at 32 (2.24; 0.73), 3.40 at 64, 3.39 at 128; fp32 4.45 / 4.42 / 4.41 / 4.49 ms
# at 16 / 32 / 64 / 128 and 4.79 at 8 (one fp32 tile: PASS 2 no faster without its sweep,
# the forward 1.33 ms saving 2 states per run), so fp32 keeps 32.
BWD_CHUNK: dict[int, int] = {2: 16}
BACKWARD_ENV = "MAMBABOOK_SCAN_BACKWARD"  # chunk | rows (default) | lanes: which backward runs
# The lanes backward's launch (opt-in): CPW channels per warp, num_warps warps per program
# (the program's channels share one atomic per (state, step) for time-varying dB, dC), runs
# of T steps per lane. Its chunks (32 / CPW x T steps) must be a multiple of the checkpoint
# interval CHUNK; where they are not, the rows backward runs instead. Measured on the H200
# (2026-11-29, fp32, B=8, D=1536, N=16, L=4096; results/nvidia-h200/backward_lanes.json):
# 8.1 ms with this launch, 7.07 ms with 8 channels in one warp, against the rows backward's
# 5.29 ms in the same run (3.7 ms since its tiles of 2 pieces, session 8). Nsight Compute (profile_lanes.json): 68 instructions per (step, state), 255
# registers with spills, 8 warps per SM, issue slots busy 20%; stalls on shuffles and shared
# memory (short scoreboard 32%), loads and spills (22%) and barriers (14%), most of them
# from the dB/dC sums over the program's channels. Kept opt-in and tested, not the default.
BWD_LANES = dict(CPW=4, T=8, num_warps=8)
_INTERPRET_BWD_LANES = dict(CPW=2, T=4, num_warps=2)  # the interpreter's launch

FORWARD_ENV = "MAMBABOOK_SCAN_FORWARD"  # loop | tile | rows | lanes | states | auto (default)
_FORWARD_CHOICE: dict[tuple, str] = {}  # auto's decisions, per shape/dtype/flags key


# ----------------------------------------------------------------------------- wrapper
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _config(dstate: int, backward: bool) -> dict:
    """Block sizes and warps: BLOCK_D x BLOCK_N x CHUNK values live in registers."""
    block_n = triton.next_power_of_2(dstate)
    if backward:  # measured on the H200 (benchmarks/tune_selective_scan.py): 1 channel, 2 warps
        chunk = max(16, 512 // block_n)
        return dict(BLOCK_D=4 if _INTERPRET else 1, BLOCK_N=block_n, CHUNK=chunk, num_warps=2)
    # the "assoc" forward; CHUNK is also the interval of the loop forward's checkpoints
    chunk = max(16, 512 // block_n)
    return dict(BLOCK_D=4, BLOCK_N=block_n, CHUNK=chunk, num_warps=4)


def _ckpt_chunk(dstate: int, element_size: int) -> int:
    """Steps between the forward's checkpoints for the backward (BWD_CHUNK, else _config's)."""
    if not _INTERPRET and element_size in BWD_CHUNK:
        return BWD_CHUNK[element_size]
    return _config(dstate, backward=True)["CHUNK"]


SEGMENT_TARGET = 2_000_000  # independent recurrences (B x D x N x segments) to aim for


def _segments(recurrences: int, length: int, chunk: int) -> tuple[int, int]:
    """(seg_len, n_seg): cut L into segments (whole chunks) until about SEGMENT_TARGET
    recurrences run side by side; short sequences or big batches stay in one segment."""
    want = max(1, min(SEGMENT_TARGET // max(recurrences, 1), triton.cdiv(length, 256)))
    return _cut(length, want, chunk)


def _cut(length: int, want: int, chunk: int) -> tuple[int, int]:
    """(seg_len, n_seg): about `want` segments of whole chunks covering L."""
    seg_len = triton.cdiv(triton.cdiv(length, want), chunk) * chunk
    return seg_len, triton.cdiv(length, seg_len)


def _check_kernel_args(u, delta, A, B, C, D, z, delta_bias):
    """Checks beyond check_selective_scan_args: dtypes, contiguity, N the kernel supports."""
    bsz, dim, length, dstate, groups = check_selective_scan_args(u, delta, A, B, C, D, z, delta_bias)
    check_runnable("u", u)
    for name, t in (("u", u), ("delta", delta), ("B", B), ("C", C), ("z", z)):
        if t is None:
            continue
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")
        if t.stride(-1) != 1 and t.shape[-1] > 1:
            raise ValueError(f"{name} must have a contiguous last dimension (stride 1), got "
                             f"strides {tuple(t.stride())} for shape {tuple(t.shape)}")
    if dstate > MAX_DSTATE:
        raise ValueError(f"A must have shape (D, N) with N <= {MAX_DSTATE} for this kernel, "
                         f"got N = {dstate}")
    return bsz, dim, length, dstate, groups


def _bc_strides(M: torch.Tensor) -> tuple[int, int, int]:
    """(batch, group, state) strides of a time-varying B or C; (B, N, L) is one group."""
    if M.dim() == 3:
        return M.stride(0), 0, M.stride(1)
    return M.stride(0), M.stride(1), M.stride(2)


def _bc_operands(B: torch.Tensor, C: torch.Tensor):
    """B, C and their (batch, group, state) strides as the tile, rows, assoc and backward
    kernels take them: time-varying ones as given, (D, N) ones contiguous (strides unused)."""
    if B.dim() > 2:
        return B, C, _bc_strides(B), _bc_strides(C)
    return B.contiguous(), C.contiguous(), (0, 0, 0), (0, 0, 0)


def _row_strides(*tensors) -> tuple[int, ...]:
    """(batch, channel) strides of each (B, D, L) tensor, in order: what every kernel takes
    for u, delta, z, out (and dout)."""
    return tuple(st for t in tensors for st in (t.stride(0), t.stride(1)))


def _segment_summaries(u: torch.Tensor, n_seg: int, dstate: int):
    """Per-segment end states H (B, D, n_seg, N) and delta sums S (B, D, n_seg), float32:
    what pass 1 of the segmented forwards (loop, rows) leaves for pass 2."""
    bsz, dim, _ = u.shape
    return (u.new_empty(bsz, dim, n_seg, dstate, dtype=torch.float32),
            u.new_empty(bsz, dim, n_seg, dtype=torch.float32))


def _scan_fwd(u, delta, A, B, C, D, z, delta_bias, softplus, save_ckpt, method="loop"):
    """Launch a forward kernel: "loop" (time step by time step), "tile" (tiles of T steps,
    one 2-D associative scan per state), "rows" (tiles of one 16-byte load per thread and
    row) or "assoc" (one 3-D associative scan over chunks of time). Returns out, last
    state, checkpoints (all four save the same checkpoints)."""
    bsz, dim, length = u.shape
    dstate = A.shape[1]
    varying = B.dim() > 2
    groups = B.shape[1] if B.dim() == 4 else 1
    cfg = _config(dstate, backward=False)
    if save_ckpt:  # the backward's chunk sets the checkpoint interval
        cfg["CHUNK"] = _ckpt_chunk(dstate, u.element_size())
    dpg = dim // groups
    A = A.float().contiguous()
    Df = D.float().contiguous() if D is not None else A
    bias = delta_bias.float().contiguous() if delta_bias is not None else A
    out = torch.empty_like(u)
    last = u.new_empty(bsz, dim, dstate, dtype=torch.float32)
    n_chunks = triton.cdiv(length, cfg["CHUNK"])
    ckpt = (u.new_empty(bsz, dim, n_chunks, dstate, dtype=torch.float32) if save_ckpt
            else last)
    zz = z if z is not None else u
    flags = dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                 SOFTPLUS=bool(softplus), VARYING_BC=varying, SAVE_CKPT=save_ckpt,
                 CHUNK=cfg["CHUNK"], BLOCK_N=cfg["BLOCK_N"])
    if method == "tile":
        return _scan_fwd_tile(u, delta, A, B, C, Df, zz, bias, out, last, ckpt, flags, dpg,
                              groups)
    if method == "lanes":
        return _scan_fwd_lanes(u, delta, A, B, C, Df, zz, bias, out, last, ckpt, flags, dpg,
                               groups)
    if method == "states":
        return _scan_fwd_states(u, delta, A, B, C, Df, zz, bias, out, last, ckpt, flags, dpg,
                                groups)
    if method == "rows":
        return _scan_fwd_rows(u, delta, A, B, C, Df, zz, bias, out, last, ckpt, flags, dpg,
                              groups)
    if method == "assoc":
        B, C, sB, sC = _bc_operands(B, C)
        nblk = triton.cdiv(dpg, cfg["BLOCK_D"])
        _selective_scan_fwd_assoc_kernel[(groups * nblk, bsz)](
            u, delta, A, B, C, Df, zz, bias, out, last, ckpt,
            length, dim, dstate, dpg,
            *_row_strides(u, delta, zz, out), *sB, *sC, SAVE_LAST=True, **flags,
            BLOCK_D=cfg["BLOCK_D"], num_warps=cfg["num_warps"],
        )
        return out, last, (ckpt if save_ckpt else None)
    if varying:  # (B, [G,] N, L) -> (B, [G,] L, N): one contiguous row of N per step
        B, C = B.transpose(-1, -2).contiguous(), C.transpose(-1, -2).contiguous()
        sB = (B.stride(0), B.stride(1) if B.dim() == 4 else 0, B.stride(-2))
        sC = (C.stride(0), C.stride(1) if C.dim() == 4 else 0, C.stride(-2))
    else:
        B, C = B.contiguous(), C.contiguous()
        sB = sC = (0, 0, 0)
    seg_len, n_seg = _segments(bsz * dim * dstate, length, cfg["CHUNK"])
    seg_h, seg_s = _segment_summaries(u, n_seg, dstate)
    scratch = u.new_empty(bsz, dim, n_seg, 4, cfg["CHUNK"], dtype=torch.float32)
    args = (u, delta, A, B, C, Df, zz, bias, out, last, ckpt, seg_h, seg_s, scratch,
            length, dim, dstate, dpg, seg_len, n_seg, *_row_strides(u, delta, zz, out), *sB, *sC)
    for pass_, segs in ((1, n_seg - 1), (2, n_seg)):
        if segs == 0:
            continue
        if _INTERPRET:
            grid = (groups * triton.cdiv(dpg, 4), bsz, segs)
            _selective_scan_fwd_kernel[grid](*args, **flags, PASS=pass_, BLOCK_D=4,
                                             PRE=_INTERPRET_PRE, num_warps=1)
        else:
            grid = lambda meta, segs=segs: (groups * triton.cdiv(dpg, meta["BLOCK_D"]), bsz, segs)
            _fwd_kernel_tuned[grid](*args, **flags, PASS=pass_)
    return out, last, (ckpt if save_ckpt else None)


def _scan_fwd_tile(u, delta, A, B, C, Df, zz, bias, out, last, ckpt, flags, dpg, groups):
    """Launch the tile forward (arguments prepared by _scan_fwd; flags["CHUNK"] is the
    checkpoint interval, which becomes the tile length T when checkpoints are saved)."""
    bsz, dim, length = u.shape
    dstate = A.shape[1]
    B, C, sB, sC = _bc_operands(B, C)
    flags = dict(flags, N=dstate)
    chunk = flags.pop("CHUNK")
    args = (u, delta, A, B, C, Df, zz, bias, out, last, ckpt)
    strides = (*_row_strides(u, delta, zz, out), *sB, *sC)
    save_ckpt = flags["SAVE_CKPT"]
    if _INTERPRET:
        cfg = dict(_INTERPRET_TILE, T=chunk) if save_ckpt else dict(_INTERPRET_TILE)
        grid = (groups * triton.cdiv(dpg, cfg["BLOCK_D"]), bsz)
        _selective_scan_fwd_tile_kernel[grid](*args, length, dim, dstate, dpg, *strides,
                                              **flags, **cfg, num_warps=1)
        return out, last, (ckpt if save_ckpt else None)
    kernel = _tile_ckpt_kernel_tuned if save_ckpt else _tile_kernel_tuned
    extra = dict(T=chunk) if save_ckpt else {}
    grid = lambda meta: (groups * triton.cdiv(dpg, meta["BLOCK_D"]), bsz)
    kernel[grid](*args, length, dim, dstate, dpg, *strides, **flags, **extra)
    return out, last, (ckpt if save_ckpt else None)


def _rows_segments(bsz: int, dim: int, length: int, chunk: int,
                   fixed: int | None = None) -> tuple[int, int]:
    """(seg_len, n_seg) of the rows forward and backward: whole CHUNKs, about ROWS_THREADS
    threads (one per channel and segment), segments of at least 8 CHUNKs; `fixed` segments
    instead when given (ROWS_SEGMENTS, BWD_SEGMENTS: tests, sweeps)."""
    want = fixed or max(1, min(triton.cdiv(ROWS_THREADS, bsz * dim), length // (8 * chunk)))
    return _cut(length, want, chunk)


def _scan_fwd_rows(u, delta, A, B, C, Df, zz, bias, out, last, ckpt, flags, dpg, groups):
    """Launch the rows forward (arguments prepared by _scan_fwd; checkpoints every CHUNK):
    with several segments, pass 1 then pass 2."""
    bsz, dim, length = u.shape
    dstate = A.shape[1]
    B, C, sB, sC = _bc_operands(B, C)
    flags = dict(flags, N=dstate)
    seg_len, n_seg = _rows_segments(bsz, dim, length, flags["CHUNK"], ROWS_SEGMENTS)
    seg_h, seg_s = _segment_summaries(u, n_seg, dstate)
    args = (u, delta, A, B, C, Df, zz, bias, out, last, ckpt, seg_h, seg_s,
            length, dim, dstate, dpg, seg_len, n_seg, *_row_strides(u, delta, zz, out), *sB, *sC)
    for pass_, segs in ((1, n_seg - 1), (2, n_seg)):
        if segs == 0:
            continue
        if _INTERPRET:
            cfg = _INTERPRET_ROWS
            even = length % cfg["T"] == 0 and dpg % cfg["BLOCK_D"] == 0
            grid = (groups * triton.cdiv(dpg, cfg["BLOCK_D"]), bsz, segs)
            _selective_scan_fwd_rows_kernel[grid](*args, **flags, **cfg, PASS=pass_, EVEN=even,
                                                  num_warps=1)
        else:
            grid = lambda meta, segs=segs: (groups * triton.cdiv(dpg, meta["BLOCK_D"]), bsz, segs)
            _rows_kernel_tuned[grid](*args, **flags, PASS=pass_)
    return out, last, (ckpt if flags["SAVE_CKPT"] else None)


def _lanes_vector(*tensors) -> int:
    """Elements per 16-byte load for the lanes forward: every (CPW, LT, V) piece it loads or
    stores must be whole vectors of every dtype involved, so the widest dtype sets V."""
    return 16 // max(t.element_size() for t in tensors)


def _lanes_chunk(cpw: int, run: int) -> int:
    """Steps of one chunk of the lanes kernels: 32 / CPW lanes per channel, runs of T steps."""
    return 32 // cpw * run


def _lanes_even(length: int, dpg: int, cpw: int, run: int) -> bool:
    """Whether the lanes forward needs no masks: whole chunks and whole warps of channels."""
    return length % _lanes_chunk(cpw, run) == 0 and dpg % cpw == 0


def _lanes_pairs(a: dict) -> bool:
    """Whether the lanes forward may read bfloat16 as int32 pairs (a: the launch's arguments
    by name): no masks, even strides, and every bfloat16 tensor 4-byte aligned (a view that
    starts at an odd element would make the int32 loads misaligned)."""
    strides = [a[k] for k in a if k.startswith("s_")]
    aligned = all(v.data_ptr() % 4 == 0 for k, v in a.items()
                  if k.endswith("_ptr") and isinstance(v, torch.Tensor) and v.dtype == torch.bfloat16)
    return (_lanes_even(a["L"], a["dpg"], a["CPW"], a["T"])
            and all(s % 2 == 0 for s in strides) and aligned)


def _lanes_ckpt_ok(chunk: int, run: int, vec: int) -> bool:
    """Whether the lanes forward can save checkpoints every `chunk` steps with runs of `run`
    steps loaded `vec` at a time: at run starts (chunk a multiple of the run) or at pieces
    inside every run (chunk a multiple of vec dividing the run)."""
    return chunk % run == 0 or (run % chunk == 0 and chunk % vec == 0)


def _scan_fwd_lanes(u, delta, A, B, C, Df, zz, bias, out, last, ckpt, flags, dpg, groups):
    """Launch the lanes forward (arguments prepared by _scan_fwd), checkpoints every CHUNK:
    autotuned over LANES_CONFIGS on a GPU, LANES_FIXED when set (sweeps), the interpreter's
    small launch under TRITON_INTERPRET."""
    bsz, dim, length = u.shape
    dstate = A.shape[1]
    B, C, sB, sC = _bc_operands(B, C)
    flags = dict(flags, N=dstate)
    flags.pop("BLOCK_N")
    streams = [u, delta, zz, out] + ([B, C] if B.dim() > 2 else [])
    vec = 2 if _INTERPRET else _lanes_vector(*streams)
    args = (u, delta, A, B, C, Df, zz, bias, out, last, ckpt, length, dim, dstate, dpg,
            *_row_strides(u, delta, zz, out), *sB, *sC)
    fixed = _INTERPRET_LANES if _INTERPRET else LANES_FIXED
    runs = [fixed["T"]] if fixed is not None else [c.kwargs["T"] for c in LANES_CONFIGS]
    for run in runs:
        if run % vec or (flags["SAVE_CKPT"] and not _lanes_ckpt_ok(flags["CHUNK"], run, vec)):
            raise ValueError(f"the lanes forward's runs (T = {run} steps) must be a multiple "
                             f"of one 16-byte load ({vec} steps) and divide the checkpoint "
                             f"interval ({flags['CHUNK']}) or be a multiple of it (itself "
                             f"a multiple of {vec})")
    if fixed is not None:
        cfg = dict(fixed)
        maxnreg = cfg.pop("maxnreg", None)
        named = dict(zip(_selective_scan_fwd_lanes_kernel.arg_names, args), **cfg)
        pairs = cfg.pop("PAIRS", True) and _lanes_pairs(named)
        even = _lanes_even(length, dpg, cfg["CPW"], cfg["T"])
        _selective_scan_fwd_lanes_kernel[(groups * triton.cdiv(dpg, cfg["CPW"]), bsz)](
            *args, **flags, **cfg, V=vec, EVEN=even, PAIRS=pairs, num_warps=1,
            **({} if _INTERPRET or maxnreg is None else dict(maxnreg=maxnreg)))
    else:
        grid = lambda meta: (groups * triton.cdiv(dpg, meta["CPW"]), bsz)
        _lanes_kernel_tuned[grid](*args, **flags, V=vec)
    return out, last, (ckpt if flags["SAVE_CKPT"] else None)


def _states_launch(dstate: int) -> dict:
    """The states forward's launch: STATES_FIXED if set, else STATES_LAUNCH (the
    interpreter's small one under TRITON_INTERPRET), with NL at most N's power of 2."""
    if _INTERPRET:
        cfg = dict(_INTERPRET_STATES)
    elif STATES_FIXED is not None:
        cfg = dict(STATES_FIXED)
    else:
        cfg = dict(STATES_LAUNCH)
    cfg["NL"] = min(cfg["NL"], triton.next_power_of_2(dstate))
    cfg.setdefault("PREF", False)
    cfg.setdefault("PIPE", 0)
    cfg.setdefault("UWHOLE", False)
    return cfg


def _bf16_pairs_ok(x: torch.Tensor) -> bool:
    """Whether x's rows can be read as int32 pairs of bfloat16: even strides (but the last),
    4-byte aligned."""
    return (x.dtype == torch.bfloat16 and x.data_ptr() % 4 == 0
            and all(s % 2 == 0 for s in x.stride()[:-1]))


def _states_pairs(B: torch.Tensor, C: torch.Tensor, even: bool) -> bool:
    """Whether the states forward may read time-varying bfloat16 B and C as int32 pairs:
    no masks, even strides, 4-byte aligned."""
    return even and B.dim() > 2 and _bf16_pairs_ok(B) and _bf16_pairs_ok(C)


def _scan_fwd_states(u, delta, A, B, C, Df, zz, bias, out, last, ckpt, flags, dpg, groups):
    """Launch the states forward (arguments prepared by _scan_fwd), checkpoints every CHUNK.
    On a GPU its shuffles run as inline PTX when Triton laid the rows one per lane (read
    from the compiled kernel, as for the rows backward), else through tl.gather."""
    bsz, dim, length = u.shape
    dstate = A.shape[1]
    B, C, sB, sC = _bc_operands(B, C)
    flags = dict(flags, N=dstate)
    flags.pop("BLOCK_N")
    cfg = _states_launch(dstate)
    maxnreg = cfg.pop("maxnreg", None)
    # one 16-byte load of time-varying B and C ((D, N) ones: any V that divides T)
    vec = cfg.pop("V", None) or (2 if _INTERPRET else 16 // (B.element_size() if B.dim() > 2 else 4))
    nl = cfg["NL"]
    if cfg["T"] % vec or cfg["T"] % nl or (flags["SAVE_CKPT"] and flags["CHUNK"] % cfg["T"]):
        raise ValueError(f"the states forward's chunks (T = {cfg['T']} steps) must be a multiple "
                         f"of one load ({vec} steps) and of its rows per channel ({nl}), and "
                         f"divide the checkpoint interval ({flags['CHUNK']})")
    even = length % cfg["T"] == 0 and dpg % (32 // nl) == 0
    pairs = _states_pairs(B, C, even)
    if cfg.pop("UWHOLE"):  # u loaded whole by every row: pieces of one 16-byte load (VU)
        vu = 2 if _INTERPRET else 16 // u.element_size()
        if cfg["PIPE"] != 2 or cfg["T"] % vu:
            raise ValueError(f"the states forward loads whole chunks of u (UWHOLE) only with "
                             f"two chunks in flight (PIPE = 2, got {cfg['PIPE']}) and chunks "
                             f"of whole 16-byte loads ({vu} steps; T = {cfg['T']})")
        cfg["VU"] = vu
        cfg["PAIRS_U"] = even and _bf16_pairs_ok(u)
    args = (u, delta, A, B, C, Df, zz, bias, out, last, ckpt, length, dim, dstate, dpg,
            *_row_strides(u, delta, zz, out), *sB, *sC)
    grid = (groups * triton.cdiv(dpg, 32 // nl), bsz)
    kw = dict(flags, **cfg, V=vec, EVEN=even, PAIRS=pairs, ASM=not _INTERPRET, num_warps=1,
              **({} if _INTERPRET or maxnreg is None else dict(maxnreg=maxnreg)))
    done = _selective_scan_fwd_states_kernel[grid](*args, **kw)
    if not _INTERPRET and not _butterfly_layout_ok(done):
        # the shuffles are right only with one row per lane: when Triton laid the rows out
        # otherwise, run again through tl.gather (the kernel only writes out, last and the
        # checkpoints, so the second run replaces all the first wrote; launching first and
        # checking after costs one dispatch, where a warm-up before costs two every call)
        kw["ASM"] = False
        _selective_scan_fwd_states_kernel[grid](*args, **kw)
    return out, last, (ckpt if flags["SAVE_CKPT"] else None)


def _pick_forward(u, delta, A, B, C, D, z, delta_bias, softplus, save_ckpt) -> str:
    """"loop", "tile", "rows", "lanes" or "states": MAMBABOOK_SCAN_FORWARD when it names one;
    with "auto" (the default), on CUDA, the five are timed once per shape/dtype key (L rounded
    up to a power of 2) and the fastest is kept (lanes and states only for N <=
    LANES_AUTO_MAX_N); elsewhere (the interpreter) "loop"."""
    choice = os.environ.get(FORWARD_ENV, "auto").strip().lower() or "auto"
    if choice not in ("loop", "tile", "rows", "lanes", "states", "auto"):
        raise ValueError(f"{FORWARD_ENV} must be loop, tile, rows, lanes, states or auto, "
                         f"got {choice!r}")
    if choice != "auto":
        return choice
    if u.device.type != "cuda":
        return "loop"
    key = (u.shape[0], u.shape[1], triton.next_power_of_2(u.shape[2]), A.shape[1],
           tuple(B.shape[1:-2]) if B.dim() > 2 else "DN", u.dtype, delta.dtype, B.dtype,
           z.dtype if z is not None else None, D is None, delta_bias is None, bool(softplus),
           save_ckpt, u.device.index)
    if key not in _FORWARD_CHOICE:
        from ..bench import time_fn

        args = (u, delta, A, B, C, D, z, delta_bias, softplus, save_ckpt)
        ms = {}
        methods = ("loop", "tile", "rows") + (("lanes", "states") if A.shape[1] <= LANES_AUTO_MAX_N
                                              else ())
        for m in methods:
            try:
                ms[m] = time_fn(lambda m=m: _scan_fwd(*args, method=m), u.device,
                                warmup_ms=5, rep_ms=25)
            except Exception as err:  # noqa: BLE001 - tile/rows must never break "auto"
                if m == "loop":
                    raise
                warnings.warn(f"selective_scan: the {m} forward failed ({type(err).__name__}: "
                              f"{str(err)[:200]}); using the loop forward", stacklevel=3)
        _FORWARD_CHOICE[key] = min(ms, key=ms.get)
    return _FORWARD_CHOICE[key]


_BLOCKED = re.compile(r"^(#blocked\d*) = #ttg\.blocked<\{sizePerThread = \[([\d, ]+)\], "
                      r"threadsPerWarp = \[([\d, ]+)\], warpsPerCTA = \[([\d, ]+)\]", re.M)
_SHUFFLED = re.compile(r'elementwise_inline_asm "shfl[^\n]*-> tensor<[\dx]+xi32, (#[\w]+)>')
_LINEAR = re.compile(r"^(#linear\d*) = #ttg\.linear<\{register = (\[[\d, \[\]]*\]), "
                     r"lane = (\[[\d, \[\]]*\]), warp = (\[[\d, \[\]]*\]), "
                     r"block = (\[[\d, \[\]]*\])\}>", re.M)
_BFLY_LAYOUT_OK: dict[int, bool] = {}  # per compiled kernel


def _butterfly_layout_ok(compiled) -> bool:
    """Whether every shuffle of a compiled rows backward acts on rows laid one per lane (row
    r on lane r % 32, the rest of the row in the same thread, no warp split along it): what
    `_lane_sums` and `_lane_pieces` assume. Triton picks layouts itself; when a row stride is not a
    multiple of 16, say, its loads are not vectorised and a warp spans 4 steps of 8 rows.
    Read from the kernel's TTGIR, once per compiled kernel."""
    key = id(compiled)
    if key not in _BFLY_LAYOUT_OK:
        _BFLY_LAYOUT_OK[key] = _rows_layout_in(compiled.asm["ttgir"])
    return _BFLY_LAYOUT_OK[key]


def _rows_layout_in(ttgir: str) -> bool:
    """`_butterfly_layout_ok` on TTGIR text: blocked layouts, and linear ones (bases of each
    register, lane and warp bit) that are the same thing."""
    layouts = {name: [[int(x) for x in part.split(",")] for part in parts]
               for name, *parts in _BLOCKED.findall(ttgir)}
    linear = {name: [json.loads(part) for part in parts] for name, *parts in _LINEAR.findall(ttgir)}
    used = _SHUFFLED.findall(ttgir)
    if not used:
        return False
    for name in used:
        if name in linear:  # lane bit i moves row 2^i; registers and warps move no row in 0..31
            reg, lane, warp, block = linear[name]
            rank = len(lane[0]) if lane else 0
            rows = [[1 << i] + [0] * (rank - 1) for i in range(5)]
            if lane != rows or block or any(b[0] for b in reg) \
                    or any(b[0] < 32 or any(b[1:]) for b in warp):
                return False
            continue
        if name not in layouts:  # a slice or other layout: not checked, not trusted
            return False
        per_thread, per_warp, warps = layouts[name]
        if per_thread[0] != 1 or per_warp[0] != 32 or any(x != 1 for x in per_warp[1:] + warps[1:]):
            return False
    return True


def _pick_backward() -> str:
    """"rows" (default), "chunk" or "lanes" (slower; opt-in): MAMBABOOK_SCAN_BACKWARD."""
    choice = os.environ.get(BACKWARD_ENV, "rows").strip().lower() or "rows"
    if choice not in ("chunk", "rows", "lanes"):
        raise ValueError(f"{BACKWARD_ENV} must be chunk, rows or lanes, got {choice!r}")
    return choice


def _scan_bwd(dout, u, delta, A, B, C, D, z, delta_bias, softplus, ckpt, method=None):
    """Gradients of every input from dout and the forward's checkpoints: the "chunk"
    backward (one channel per program, 3-D associative scans over chunks) or the "rows" one
    (the rows forward's layout, walked backwards through segments)."""
    method = method or _pick_backward()
    bsz, dim, length = u.shape
    dstate = A.shape[1]
    varying = B.dim() > 2
    groups = B.shape[1] if B.dim() == 4 else 1
    cfg = _config(dstate, backward=True)
    cfg["CHUNK"] = _ckpt_chunk(dstate, u.element_size())  # the forward's checkpoint interval
    dpg = dim // groups
    lanes_launch = _INTERPRET_BWD_LANES if _INTERPRET else BWD_LANES
    if method == "lanes" and _lanes_chunk(lanes_launch["CPW"], lanes_launch["T"]) % cfg["CHUNK"]:
        method = "rows"  # its chunks must start at checkpoints
    rows = method == "rows"
    n_seg = 1
    if rows:
        seg_len, n_seg = _rows_segments(bsz, dim, length, cfg["CHUNK"], BWD_SEGMENTS)
    # partial sums: per batch row (chunk), per segment and batch row with N before D (rows)
    parts = (n_seg, bsz, dim) if rows else (bsz, dim)
    parts_n = (n_seg, bsz, dstate, dim) if rows else (bsz, dim, dstate)
    dout = dout.contiguous()
    # du and ddelta are written with u's strides, dz with z's, and they are allocated
    # contiguous: a padded view of u or z (rows longer than L) must not lend them its strides
    u = u.contiguous()
    z = z.contiguous() if z is not None else None
    Af = A.float().contiguous()
    Df = D.float().contiguous() if D is not None else Af
    bias = delta_bias.float().contiguous() if delta_bias is not None else Af
    du = torch.empty_like(u)
    ddelta = torch.empty_like(u, dtype=delta.dtype)
    dz = torch.empty_like(u, dtype=z.dtype) if z is not None else None
    alloc = torch.zeros if rows else torch.empty  # the rows backward adds into its parts
    dA_part = alloc(parts_n, device=u.device, dtype=torch.float32)
    if varying:
        dB = torch.zeros(B.shape, device=u.device, dtype=torch.float32)
        dC = torch.zeros(C.shape, device=u.device, dtype=torch.float32)
        sdB = _bc_strides(dB)
    else:
        dB = alloc(parts_n, device=u.device, dtype=torch.float32)
        dC = alloc(parts_n, device=u.device, dtype=torch.float32)
        sdB = (0, 0, 0)
    dD_part = u.new_empty(parts, dtype=torch.float32) if D is not None else dA_part
    dbias_part = u.new_empty(parts, dtype=torch.float32) if delta_bias is not None else dA_part
    Bk, Ck, sB, sC = _bc_operands(B, C)
    if rows:  # A and (D, N) B, C transposed to (N, D): coalesced per-state columns
        Af = Af.t().contiguous()
        if not varying:
            Bk, Ck = Bk.t().contiguous(), Ck.t().contiguous()
    zz = z if z is not None else u
    dzz = dz if dz is not None else du
    args = (u, delta, Af, Bk, Ck, Df, zz, bias, ckpt, dout,
            du, ddelta, dzz, dA_part, dB, dC, dD_part, dbias_part)
    flags = dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                 SOFTPLUS=bool(softplus), VARYING_BC=varying, CHUNK=cfg["CHUNK"])
    strides = (*_row_strides(u, delta, zz, dout), *sB, *sC, *sdB)
    if rows:
        launch = dict(_ROWS_DEFAULTS,
                      **(_INTERPRET_BWD_ROWS if _INTERPRET else BWD_ROWS[u.element_size()]))
        while cfg["CHUNK"] % (launch["R"] * launch["T"]):  # tiles must tile a chunk
            if launch["R"] > 1:
                launch["R"] //= 2
            else:  # a chunk shorter than one piece: shorter pieces
                launch["T"] //= 2
        tile = launch["R"] * launch["T"]
        tpc = cfg["CHUNK"] // tile  # tiles per chunk
        split = max(1, min(BWD_SPLIT, 32 // n_seg))
        while seg_len % (split * tile):  # PASS 1's sub-segments are whole tiles
            split -= 1
        seg_k = u.new_empty(bsz, n_seg * split, dstate, dim, dtype=torch.float32)
        seg_s = u.new_empty(bsz, n_seg * split, dim, dtype=torch.float32)
        kap = u.new_empty(bsz, n_seg, dstate, dim, dtype=torch.float32)
        tiles = u.new_empty(bsz, n_seg, tpc, dstate, dim, dtype=torch.float32)
        args = (*args, seg_k, seg_s, kap, tiles, length, dim, dstate, dpg, seg_len, n_seg,
                seg_len // split, n_seg * split, *strides)
        even = length % tile == 0 and dpg % launch["BLOCK_D"] == 0
        lanes = min(launch["BLOCK_D"], 32)  # the butterfly's lanes; it needs 2T of them
        bfly = lanes if varying and launch["BFLY"] and 2 * launch["T"] <= lanes \
            and launch["T"] in (1, 2, 4, 8) else 0
        # B and C of all states loaded once per tile and shuffled to the rows (BCL): each
        # (state, piece) needs a row, and on a GPU the rows must be one warp's lanes
        bcl = varying and launch["BCL"] and dstate * launch["R"] <= launch["BLOCK_D"] \
            and (_INTERPRET or launch["BLOCK_D"] == 32)
        # ... as bfloat16 pairs in int32 (BCLP): unmasked tiles, every pair at a 4-byte
        # address. A launch that asks for pairs where they cannot run shuffles nothing (in
        # 2-byte types the unpacked shuffles spill: slower than one load per state)
        bclp = bcl and launch["BCLP"] and even and launch["T"] % 2 == 0 \
            and _bf16_pairs_ok(Bk) and _bf16_pairs_ok(Ck)
        bcl = bcl and (bclp or not launch["BCLP"])
        launch = {k: v for k, v in launch.items() if k not in ("BFLY", "BCL", "BCLP")}
        # PASS 1: the sub-segments of segments 1 .. n_seg - 1
        for pass_, segs in ((1, (n_seg - 1) * split), (2, n_seg)):
            if segs == 0:
                continue
            grid = (groups * triton.cdiv(dpg, launch["BLOCK_D"]), bsz, segs)
            kw = dict(flags, **launch, PASS=pass_, EVEN=even, BFLY=bfly, ASM=not _INTERPRET,
                      BCL=bcl and pass_ == 2, BCLP=bclp and pass_ == 2)
            if pass_ == 2 and (kw["BFLY"] or kw["BCL"]) and not _INTERPRET:
                # the shuffles are right only if Triton laid the tiles out one row per lane:
                # if not, without BCL (its tile may be laid out alone), then without BFLY
                for fallback in ("BCL", "BFLY"):
                    done = _selective_scan_bwd_rows_kernel.warmup(*args, grid=grid, **kw)
                    if _butterfly_layout_ok(done):
                        break
                    kw[fallback] = 0
            _selective_scan_bwd_rows_kernel[grid](*args, **kw)
    elif method == "lanes":
        streams = [u, delta, zz, dout, du, ddelta] + ([B, C] if varying else [])
        vec = 2 if _INTERPRET else _lanes_vector(*streams)
        bd = lanes_launch["CPW"] * lanes_launch["num_warps"]
        grid = (groups * triton.cdiv(dpg, bd), bsz)
        _selective_scan_bwd_lanes_kernel[grid](
            *args, length, dim, dstate, dpg, *strides, **flags, N=dstate, CPW=lanes_launch["CPW"],
            BD=bd, T=lanes_launch["T"], V=vec, num_warps=lanes_launch["num_warps"])
    else:
        grid = (groups * triton.cdiv(dpg, cfg["BLOCK_D"]), bsz)
        _selective_scan_bwd_kernel[grid](*args, length, dim, dstate, dpg, *strides, **flags,
                                         BLOCK_D=cfg["BLOCK_D"], BLOCK_N=cfg["BLOCK_N"],
                                         num_warps=cfg["num_warps"])
    lead = tuple(range(len(parts) - 1))  # the segment and batch axes of the partial sums
    dn = (lambda x: x.sum(lead).t()) if rows else (lambda x: x.sum(lead))  # -> (D, N)
    dA = dn(dA_part).to(A.dtype)
    if varying:
        dB, dC = dB.to(B.dtype), dC.to(C.dtype)
    else:
        dB, dC = dn(dB).to(B.dtype), dn(dC).to(C.dtype)
    dD = dD_part.sum(lead).to(D.dtype) if D is not None else None
    dbias = dbias_part.sum(lead).to(delta_bias.dtype) if delta_bias is not None else None
    return du, ddelta, dA, dB, dC, dD, dz, dbias


def selective_scan_assoc(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                         delta_softplus=False, return_last_state=False):
    """Forward only, through the chunked tl.associative_scan kernel (chapter 7, step 3):
    the same function as `selective_scan`, kept to measure the other way of using the GPU."""
    _check_kernel_args(u, delta, A, B, C, D, z, delta_bias)
    out, last, _ = _scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, False,
                             method="assoc")
    return (out, last) if return_last_state else out


class SelectiveScanFn(torch.autograd.Function):
    """Forward saves only the inputs and per-chunk states; backward recomputes the rest."""


    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
        needs_grad = any(ctx.needs_input_grad[:8])
        method = _pick_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, needs_grad)
        out, last, ckpt = _scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                    save_ckpt=needs_grad, method=method)
        if needs_grad:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ckpt)
            ctx.delta_softplus = delta_softplus
        ctx.mark_non_differentiable(last)
        return out, last

    @staticmethod
    def backward(ctx, dout, dlast):
        u, delta, A, B, C, D, z, delta_bias, ckpt = ctx.saved_tensors
        grads = _scan_bwd(dout, u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, ckpt)
        return (*grads, None, None)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False):
    """h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t,  y_t = C_t h_t + D u_t,  out = y * silu(z).

    u, delta, z: (B, D, L) float32/float16/bfloat16 with contiguous last dimension; A: (D, N)
    with N <= 64; B, C: (B, N, L), (B, G, N, L) or (D, N); D, delta_bias: (D,). Returns out
    (B, D, L) in u's dtype, and with return_last_state the state h_L: (B, D, N) in float32.
    Same semantics as mambabook.selective.selective_scan_ref; differentiable in every input.
    The forward kernel: environment variable MAMBABOOK_SCAN_FORWARD = loop, tile, rows or auto.
    """
    _check_kernel_args(u, delta, A, B, C, D, z, delta_bias)
    out, last = SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                      return_last_state)
    return (out, last) if return_last_state else out

