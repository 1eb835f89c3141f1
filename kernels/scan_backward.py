"""The backward of the selective scan (chapter 7): gradients of every input by
recomputation from the forward's checkpoints.

The state's gradient runs backwards: g_t = C_t dy_t + exp(delta_{t+1} A) g_{t+1}, and
every input's gradient is a sum over (t, n) of products of g, the recomputed state h and
the inputs. A thread holds a channel's steps (so every scan along time is a loop in
registers); L is cut into segments run side by side and joined, as in the forward, by
their maps k -> exp(A S) k + K.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import (
    ASM,
    INTERPRET,
    _channel_block,
    _col_load,
    _delta_of,
    _load_even,
    _shfl_xor,
    _unpack_bf16,
    bc_operands,
    bc_strides,
    bf16_pairs_ok,
    cut,
    row_strides,
    rows_one_per_lane,
    scan_dims,
)

# The launch by the element size of u: one channel per lane, one warp, tiles of R pieces of
# T steps (each piece one 16-byte load per lane), a register cap. H200, B=8, D=1536, N=16,
# L=4096 (benchmarks/selective_scan_notes.md): fp32 2.93 ms, bf16 2.215 ms.
LAUNCH = {4: dict(BLOCK_D=32, T=4, R=2, maxnreg=168),
          2: dict(BLOCK_D=32, T=8, R=2, maxnreg=168)}
INTERPRET_LAUNCH = dict(BLOCK_D=8, T=4, R=2)  # the interpreter's tile
THREADS = 49152  # L is cut into segments until about this many threads (one per channel)
SPLIT = 4  # PASS 1 cuts each segment into this many sub-segments (more threads for it)


@triton.jit
def _delta_tile(dt_base, t, mask_dt, bias, SOFTPLUS: tl.constexpr, EVEN: tl.constexpr):
    """_delta_of on a (BLOCK_D, T) tile (bias (BLOCK_D, 1)) loaded from dt_base + t."""
    raw = _load_even(dt_base + t[None, :], mask_dt, EVEN)
    return _delta_of(raw, bias, mask_dt, SOFTPLUS, EVEN)


@triton.jit
def _dy_tile(do_base, z_base, t, mask_dt, EVEN: tl.constexpr):
    """dout, z (float32, (BLOCK_D, T)) and dy = dL/dy = dout * silu(z) (dout without z:
    z_base None)."""
    dout = _load_even(do_base + t[None, :], mask_dt, EVEN).to(tl.float32)
    if z_base is not None:
        zz = _load_even(z_base + t[None, :], mask_dt, EVEN).to(tl.float32)
        dy = dout * zz * tl.sigmoid(zz)
    else:
        zz = dout
        dy = dout
    return dout, zz, dy


@triton.jit
def _piece_inputs(dt_base, u_base, do_base, z_base, t, mask_dt, bias, SOFTPLUS: tl.constexpr,
                  EVEN: tl.constexpr):
    """A (BLOCK_D, T) piece's inputs, float32: delta (with its bias and softplus) and delta
    before the softplus, u, dout, z and dy = dout * silu(z) (loads a caller leaves unused
    are dropped by the compiler)."""
    dt, dt_raw = _delta_tile(dt_base, t, mask_dt, bias, SOFTPLUS, EVEN)
    u = _load_even(u_base + t[None, :], mask_dt, EVEN).to(tl.float32)
    dout, zz, dy = _dy_tile(do_base, z_base, t, mask_dt, EVEN)
    return dt, dt_raw, u, dout, zz, dy


@triton.jit
def _tile_inputs(dt_base, u_base, do_base, z_base, t0, offs_t, mask_c, L, bias,
                 SOFTPLUS: tl.constexpr, EVEN: tl.constexpr, T: tl.constexpr, R: tl.constexpr):
    """A tile's R pieces from step t0 (tuples of (BLOCK_D, T) float32): delta, delta u and
    dy (loads a caller leaves unused are dropped by the compiler)."""
    dts = ()
    dtus = ()
    dys = ()
    for r in tl.static_range(R):
        t, mask_dt = _piece_mask(t0, r, offs_t, mask_c, L, T)
        dt, dt_raw, u, dout, zz, dy = _piece_inputs(dt_base, u_base, do_base, z_base, t, mask_dt,
                                                    bias, SOFTPLUS, EVEN)
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
def _lane_pieces(M, n, R: tl.constexpr):
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
def _lane_sums(P, Q, lane, W: tl.constexpr, T: tl.constexpr):
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
def _scan_bwd_kernel(
    # pointers: inputs (A and (D, N) B, C transposed to (N, D)), checkpoints (B, D, L/CHUNK, N)
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ckpt_ptr, dout_ptr,
    # pointers: gradients. dA and (D, N) dB, dC: float32 partial sums (n_seg, B, N, D), zeroed;
    # dD, dbias: (n_seg, B, D); time-varying dB, dC: float32, one atomic add per (block, n, t)
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
    # scratch: sub-segment summaries K (B, n_sub, N, D) and S (B, n_sub, D), the running k
    # (B, n_seg, N, D) and the tile-start states of a chunk (B, n_seg, CHUNK / (R T), N, D)
    seg_k_ptr, seg_s_ptr, kap_ptr, tiles_ptr,
    # the gradient of the last state (B, D, N), None when there is none
    dlast_ptr,
    L, dim, dstate, dpg, seg_len, n_seg, sub_len, n_sub,
    s_u_b, s_u_d, s_dt_b, s_dt_d, s_z_b, s_z_d, s_do_b, s_do_d,
    s_B_b, s_B_g, s_B_n, s_C_b, s_C_g, s_C_n, s_dB_b, s_dB_g, s_dB_n,
    # meta-parameters
    SOFTPLUS: tl.constexpr, VARYING_BC: tl.constexpr, BLOCK_D: tl.constexpr, T: tl.constexpr,
    R: tl.constexpr, CHUNK: tl.constexpr, PASS: tl.constexpr, EVEN: tl.constexpr,
    BFLY: tl.constexpr, BCL: tl.constexpr,
):
    """The backward in the forward's layout (a channel's steps in one thread, so every
    scan along time is a loop in registers), walked backwards. A tile is R pieces of T
    steps (each piece one load per row). The state's gradient g_t = C_t dy_t + a_{t+1}
    g_{t+1} runs from the end, carried between tiles as k = a_t g_t. Segments of L run side
    by side: PASS 1 runs each segment but the first (cut into n_sub / n_seg sub-segments)
    from k = 0 and stores K (its k out) and S (its delta sum); a segment maps k -> exp(A S)
    k + K, so PASS 2 starts each segment from the composition of the maps after it (and
    dlast). Inside a segment, chunks of CHUNK steps go in reverse: from the forward's
    checkpoint a forward sweep stores each tile's starting state in a scratch, then the
    tiles go in reverse: the tile's states, the gradient scan, every gradient.
    The states are a runtime loop inside each tile (unrolled, the body outgrew the
    instruction cache); a state's k, dA sum and tile-start state live in scratch columns,
    and each state's iteration first loads the next state's columns (their latency
    overlaps a state's work). Time-varying dB, dC are summed over the block's channels
    before one atomic add per (warp, n, t): by a butterfly reduce-scatter with BFLY = W > 0
    lanes, else by tl.sum. With BCL (PASS 2), B and C of every state on a tile are one load
    per row, handed to every row by shuffles (BCL = 2: as packed bfloat16 pairs). In
    float32 with R = 2 a tile's gradients are stored once per tile (whole 32-byte sectors).
    Gradients are stored evict_first, the scratch evict_last. D, z, bias (and their
    gradients): None when absent.
    """
    WIDE2: tl.constexpr = R == 2 and du_ptr.dtype.element_ty == tl.float32
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
    bias = None
    if bias_ptr is not None:
        bias = _col_load(bias_ptr + d_col, mask_c)
    u_base = u_ptr + pid_b * s_u_b + d_col * s_u_d  # (BLOCK_D, 1); du, ddelta too
    du_base = du_ptr + pid_b * s_u_b + d_col * s_u_d
    ddt_base = ddelta_ptr + pid_b * s_u_b + d_col * s_u_d
    dt_base = delta_ptr + pid_b * s_dt_b + d_col * s_dt_d
    z_base = None  # z and dz
    dz_base = None
    if z_ptr is not None:
        z_base = z_ptr + pid_b * s_z_b + d_col * s_z_d
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
                                           L, bias, SOFTPLUS, EVEN, T, R)
            for r in tl.static_range(R):
                S += tl.sum(dts[r], axis=1, keep_dims=True)
            k_in, A2n, Cn = _k_cols(kp, A_col, C_base, C_ptr, 0, s_C_n, t0, offs_t, L, dim,
                                    d_col, mask_c, VARYING_BC, EVEN, BLOCK_D, T, R, True)
            for n in range(0, dstate):
                # the next state's columns (state 0 again after the last: unused)
                k_nx, A_nx, C_nx = _k_cols(kp, A_col, C_base, C_ptr, (n + 1) % dstate,
                                           s_C_n, t0, offs_t, L, dim, d_col, mask_c,
                                           VARYING_BC, EVEN, BLOCK_D, T, R, True)
                k_out = k_in
                for r in tl.static_range(R - 1, -1, -1):
                    _, k_out = _grad_scan(tl.exp2(dts[r] * A2n), dys[r] * Cn[r], k_out, offs_t, T)
                tl.store(kp + n * dim, k_out, mask=mask_c, eviction_policy="evict_last")
                k_in, A2n, Cn = k_nx, A_nx, C_nx
        tl.store(ss_base + seg * dim, S, mask=mask_c)
    else:
        kp = kap_ptr + (pid_b * n_seg + seg) * dstate * dim + d_col  # + n * dim
        for n in range(0, dstate):  # k entering from the segments after, the last first
            A2n = _col_load(A_col + n * dim, mask_c) * 1.4426950408889634
            kn = tl.zeros((BLOCK_D, 1), dtype=tl.float32)
            if dlast_ptr is not None:  # the gradient entering after the last step
                kn = _col_load(dlast_ptr + (pid_b * dim + d_col) * dstate + n, mask_c)
            for jj in range(0, n_sub - (seg + 1) * (n_sub // n_seg)):  # sub-segments after
                j = n_sub - 1 - jj
                kn = (tl.exp2(_col_load(ss_base + j * dim, mask_c) * A2n) * kn
                      + _col_load(sk_base + (j * dstate + n) * dim, mask_c))
            tl.store(kp + n * dim, kn, mask=mask_c, eviction_policy="evict_last")
        part = (seg * tl.num_programs(1) + pid_b) * dim + d_col  # into (n_seg, B, D)
        dA_p = dA_ptr + (seg * tl.num_programs(1) + pid_b) * dstate * dim + d_col  # + n * dim
        dB_p = dB_ptr + (seg * tl.num_programs(1) + pid_b) * dstate * dim + d_col  # (D, N) B
        dC_p = dC_ptr + (seg * tl.num_programs(1) + pid_b) * dstate * dim + d_col
        dD_acc = tl.zeros((BLOCK_D, 1), dtype=tl.float32)
        dbias_acc = tl.zeros((BLOCK_D, 1), dtype=tl.float32)
        if D_ptr is not None:
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
                         mask=mask_c, eviction_policy="evict_last")
            for j in range(j0, j1 - 1):  # (the last tile's end state is not needed)
                t0 = j * TT
                dts, dtus, dys = _tile_inputs(dt_base, u_base, do_base, z_base, t0, offs_t,
                                              mask_c, L, bias, SOFTPLUS, EVEN, T, R)
                h_ptr = tl_base + (j - j0) * dstate * dim
                if BCL:
                    Bt = _bc_lanes(B_base, s_B_n, dstate, t0, offs_t, L, EVEN, BLOCK_D, T, R,
                                   BCL == 2)
                h_in, A2n, Bn = _k_cols(h_ptr, A_col, B_base, B_ptr, 0, s_B_n, t0, offs_t, L,
                                        dim, d_col, mask_c, VARYING_BC, EVEN, BLOCK_D, T, R,
                                        not BCL)
                for n in range(0, dstate):
                    h_nx, A_nx, B_nx = _k_cols(h_ptr, A_col, B_base, B_ptr, (n + 1) % dstate,
                                               s_B_n, t0, offs_t, L, dim, d_col, mask_c,
                                               VARYING_BC, EVEN, BLOCK_D, T, R, not BCL)
                    Bp = _lane_pieces(Bt, n, R) if BCL else Bn
                    h_out = h_in
                    for r in tl.static_range(R):
                        _, h_out = _state_scan(tl.exp2(dts[r] * A2n), dtus[r] * Bp[r], h_out,
                                               offs_t, T)
                    tl.store(h_ptr + (dstate + n) * dim, h_out, mask=mask_c,
                             eviction_policy="evict_last")
                    h_in, A2n, Bn = h_nx, A_nx, B_nx
            # the chunk's tiles in reverse
            for ji in range(0, j1 - j0):
                j = j1 - 1 - ji
                t0 = j * TT
                dts, dtus, dys = _tile_inputs(dt_base, u_base, do_base, z_base, t0, offs_t,
                                              mask_c, L, bias, SOFTPLUS, EVEN, T, R)
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
                                   BCL == 2)
                    Ct = _bc_lanes(C_base, s_C_n, dstate, t0, offs_t, L, EVEN, BLOCK_D, T, R,
                                   BCL == 2)
                h_in, k_in, A2n, dA_o, Bn, Cn, dB_o, dC_o = _rev_cols(
                    h_ptr, kp, A_col, dA_p, dB_p, dC_p, B_base, B_ptr, C_base, C_ptr, 0,
                    s_B_n, s_C_n, t0, offs_t, L, dim, d_col, mask_c, VARYING_BC, EVEN,
                    BLOCK_D, T, R, not BCL)
                for n in range(0, dstate):
                    h_nx, k_nx, A_nx, dA_nx, B_nx, C_nx, dB_nx, dC_nx = _rev_cols(
                        h_ptr, kp, A_col, dA_p, dB_p, dC_p, B_base, B_ptr, C_base, C_ptr,
                        (n + 1) % dstate, s_B_n, s_C_n, t0, offs_t, L, dim, d_col, mask_c,
                        VARYING_BC, EVEN, BLOCK_D, T, R, not BCL)
                    Bp = _lane_pieces(Bt, n, R) if BCL else Bn
                    Cp = _lane_pieces(Ct, n, R) if BCL else Cn
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
                    tl.store(kp + n * dim, k_out, mask=mask_c, eviction_policy="evict_last")
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
                        if z_ptr is not None:
                            ys_n = ys_n + (ys[r] + h * Cp[r],)
                        else:
                            ys_n = ys_n + (ys[r],)
                        if VARYING_BC:
                            if BFLY > 0:  # one atomic per (warp, n, t), from lanes that lead
                                v, isq, stp, lead = _lane_sums(g * dtus[r], dys[r] * h, lane, BFLY,
                                                               T)
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
                    tl.store(dA_p + n * dim, dA_s, mask=mask_c, eviction_policy="evict_last")
                    if not VARYING_BC:
                        tl.store(dB_p + n * dim, dB_s, mask=mask_c, eviction_policy="evict_last")
                        tl.store(dC_p + n * dim, dC_s, mask=mask_c, eviction_policy="evict_last")
                    h_in, k_in, A2n, dA_o, Bn, Cn, dB_o, dC_o = (
                        h_nx, k_nx, A_nx, dA_nx, B_nx, C_nx, dB_nx, dC_nx)
                # every state done: the tile's inputs again (from the cache) and its gradients
                g_du = ()
                g_dt = ()
                g_dz = ()
                for r in tl.static_range(R):
                    t, mask_dt = _piece_mask(t0, r, offs_t, mask_c, L, T)
                    dt, dt_raw, u, dout, zz, dy = _piece_inputs(dt_base, u_base, do_base, z_base,
                                                                t, mask_dt, bias, SOFTPLUS, EVEN)
                    du = gBs[r] * dt
                    y = ys[r]
                    if D_ptr is not None:
                        du += Dv * dy
                        dD_acc += tl.sum(dy * u, axis=1, keep_dims=True)
                    if z_ptr is not None:
                        if D_ptr is not None:
                            y += Dv * u
                        sz = tl.sigmoid(zz)
                        dz = dout * y * sz * (1.0 + zz * (1.0 - sz))
                        if WIDE2:
                            g_dz = g_dz + (dz.to(dz_ptr.dtype.element_ty),)
                        else:
                            tl.store(dz_base + t[None, :], dz.to(dz_ptr.dtype.element_ty),
                                     mask=None if EVEN else mask_dt, eviction_policy="evict_first")
                    ddt = ddts[r] + gBs[r] * u
                    if SOFTPLUS:
                        ddt = ddt * tl.sigmoid(dt_raw)
                    if not EVEN:
                        ddt = tl.where(mask_dt, ddt, 0.0)
                    if bias_ptr is not None:
                        dbias_acc += tl.sum(ddt, axis=1, keep_dims=True)
                    if WIDE2:
                        g_du = g_du + (du.to(du_ptr.dtype.element_ty),)
                        g_dt = g_dt + (ddt.to(ddelta_ptr.dtype.element_ty),)
                    else:
                        tl.store(du_base + t[None, :], du.to(du_ptr.dtype.element_ty),
                                 mask=None if EVEN else mask_dt, eviction_policy="evict_first")
                        tl.store(ddt_base + t[None, :], ddt.to(ddelta_ptr.dtype.element_ty),
                                 mask=None if EVEN else mask_dt, eviction_policy="evict_first")
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
                             eviction_policy="evict_first")
                    tl.store(base_dt, _pieces2(g_dt, BLOCK_D, T), mask=mw,
                             eviction_policy="evict_first")
                    if z_ptr is not None:
                        base_z = dz_ptr + pid_b * s_z_b + rows * s_z_d + tws
                        tl.store(base_z, _pieces2(g_dz, BLOCK_D, T), mask=mw,
                                 eviction_policy="evict_first")
        if D_ptr is not None:
            tl.store(dD_ptr + part, dD_acc, mask=mask_c)
        if bias_ptr is not None:
            tl.store(dbias_ptr + part, dbias_acc, mask=mask_c)


def scan_backward(dout, u, delta, A, B, C, D, z, delta_bias, softplus: bool, ckpt,
                  chunk: int, dlast=None, want_dh0: bool = False, launch: dict | None = None,
                  n_seg: int | None = None, split: int | None = None):
    """Gradients (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias; None where an input is None)
    from dout and the forward's checkpoints `ckpt` (every `chunk` steps), on checked
    inputs; `dlast` the gradient of the last state ((B, D, N), None: zeros); with
    `want_dh0` the gradient of the state entering the sequence follows. `launch`
    (BLOCK_D, T, R[, maxnreg]) defaults to LAUNCH[u.element_size()]
    (INTERPRET_LAUNCH under the interpreter); `n_seg` segments of L and PASS 1's `split`
    default to about THREADS threads and SPLIT."""
    bsz, dim, length, dstate, groups, dpg = scan_dims(u, A, B)
    varying = B.dim() > 2
    launch = dict(launch or (INTERPRET_LAUNCH if INTERPRET else LAUNCH[u.element_size()]))
    maxnreg = None if INTERPRET else launch.pop("maxnreg", None)
    while chunk % (launch["R"] * launch["T"]):  # tiles must tile a chunk
        if launch["R"] > 1:
            launch["R"] //= 2
        else:  # a chunk shorter than one piece: shorter pieces
            launch["T"] //= 2
    tile = launch["R"] * launch["T"]
    want = n_seg or max(1, min(triton.cdiv(THREADS, bsz * dim), length // (8 * chunk)))
    seg_len, n_seg = cut(length, want, chunk)
    # du and ddelta are written with u's strides, dz with z's: allocated contiguous
    dout, u = dout.contiguous(), u.contiguous()
    z = z.contiguous() if z is not None else None
    Af = A.float().t().contiguous()  # (N, D): coalesced per-state columns
    Df = D.float().contiguous() if D is not None else None
    bias = delta_bias.float().contiguous() if delta_bias is not None else None
    du = torch.empty_like(u)
    ddelta = torch.empty_like(u, dtype=delta.dtype)
    dz = torch.empty_like(z) if z is not None else None
    f32 = dict(device=u.device, dtype=torch.float32)
    dA_part = torch.zeros(n_seg, bsz, dstate, dim, **f32)  # partial sums, N before D
    if varying:
        dB, dC = torch.zeros(B.shape, **f32), torch.zeros(C.shape, **f32)
        sdB = bc_strides(dB)
    else:
        dB, dC = torch.zeros(n_seg, bsz, dstate, dim, **f32), torch.zeros(n_seg, bsz, dstate, dim, **f32)
        sdB = (0, 0, 0)
    dD_part = u.new_empty(n_seg, bsz, dim, dtype=torch.float32) if D is not None else None
    dbias_part = u.new_empty(n_seg, bsz, dim, dtype=torch.float32) if bias is not None else None
    Bk, Ck, sB, sC = bc_operands(B, C)
    if not varying:
        Bk, Ck = Bk.t().contiguous(), Ck.t().contiguous()
    split = max(1, min(split or SPLIT, 32 // n_seg))
    while seg_len % (split * tile):  # PASS 1's sub-segments are whole tiles
        split -= 1
    scratch = dict(seg_k=u.new_empty(bsz, n_seg * split, dstate, dim, dtype=torch.float32),
                   seg_s=u.new_empty(bsz, n_seg * split, dim, dtype=torch.float32),
                   kap=u.new_empty(bsz, n_seg, dstate, dim, dtype=torch.float32),
                   tiles=u.new_empty(bsz, n_seg, chunk // tile, dstate, dim, dtype=torch.float32))
    zz = z if z is not None else u
    args = (u, delta, Af, Bk, Ck, Df, z, bias, ckpt, dout, du, ddelta, dz, dA_part, dB, dC,
            dD_part, dbias_part, *scratch.values(),
            dlast.float().contiguous() if dlast is not None else None, length, dim, dstate, dpg, seg_len, n_seg,
            seg_len // split, n_seg * split, *row_strides(u, delta, zz, dout), *sB, *sC, *sdB)
    even = length % tile == 0 and dpg % launch["BLOCK_D"] == 0
    lanes = min(launch["BLOCK_D"], 32)  # the butterfly's lanes; it needs 2T of them
    bfly = lanes if varying and 2 * launch["T"] <= lanes and launch["T"] in (1, 2, 4, 8) else 0
    # B and C of all states loaded once per tile and shuffled to the rows: each (state,
    # piece) needs a row, and on a GPU the rows must be one warp's lanes; bfloat16 as
    # packed pairs where every pair is at a 4-byte address (unmasked). In other 2-byte
    # cases the unpacked shuffles spill: one load per state is faster there.
    bcl = int(varying and dstate * launch["R"] <= launch["BLOCK_D"]
              and (INTERPRET or launch["BLOCK_D"] == 32))
    if bcl and even and launch["T"] % 2 == 0 and bf16_pairs_ok(Bk) and bf16_pairs_ok(Ck):
        bcl = 2
    elif bcl and u.element_size() == 2 and not INTERPRET:
        bcl = 0
    extra = {} if maxnreg is None else dict(maxnreg=maxnreg)
    for pass_, segs in ((1, (n_seg - 1) * split), (2, n_seg)):
        if segs == 0:
            continue
        grid = (groups * triton.cdiv(dpg, launch["BLOCK_D"]), bsz, segs)
        kw = dict(SOFTPLUS=bool(softplus), VARYING_BC=varying, CHUNK=chunk, PASS=pass_,
                  EVEN=even, BFLY=bfly, BCL=bcl if pass_ == 2 else 0, num_warps=1, **launch,
                  **extra)
        if pass_ == 2 and (kw["BFLY"] or kw["BCL"]) and ASM:
            # the shuffles are right only if Triton laid the tiles out one row per lane: if
            # not, without BCL (its tile may be laid out alone), then without BFLY
            for fallback in ("BCL", "BFLY"):
                if rows_one_per_lane(_scan_bwd_kernel.warmup(*args, grid=grid, **kw)):
                    break
                kw[fallback] = 0
        _scan_bwd_kernel[grid](*args, **kw)
    dA = dA_part.sum((0, 1)).t().to(A.dtype)
    if varying:
        dB, dC = dB.to(B.dtype), dC.to(C.dtype)
    else:
        dB, dC = dB.sum((0, 1)).t().to(B.dtype), dC.sum((0, 1)).t().to(C.dtype)
    dD = dD_part.sum((0, 1)).to(D.dtype) if D is not None else None
    dbias = dbias_part.sum((0, 1)).to(delta_bias.dtype) if delta_bias is not None else None
    grads = (du, ddelta, dA, dB, dC, dD, dz, dbias)
    if want_dh0:  # k at the first step, a_0 g_0: the gradient of the state before it
        return *grads, scratch["kap"][:, 0].transpose(1, 2).contiguous()
    return grads
