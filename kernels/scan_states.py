"""The states forward of the selective scan (chapter 7): a channel's states across lanes.

The forward for 2-byte inputs (bfloat16, float16) with N <= 32 on a GPU. One warp holds
32 / NL channels; row r (one lane) holds channel r // NL and its S = N / NL states, and
walks them through time sequentially: a = exp2(delta A log2 e), h = a h + delta u B,
y += C h, 5 instructions per (step, state), nothing computed twice. What a channel's rows
share moves by shuffles: delta is computed once (each row K = T / NL steps) and gathered;
y is summed over the rows by a butterfly reduce-scatter.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import (
    INTERPRET,
    _columns,
    _delta_of,
    _ex2_fast,
    _join_columns,
    _load_even,
    _shfl_xor,
    _silu_fast,
    _unpack_bf16,
    bc_operands,
    bf16_pairs_ok,
    forward_buffers,
    row_strides,
    rows_one_per_lane,
    scan_dims,
)

# (rows per channel, steps per chunk): H200, B=8, D=1536, N=16, L=4096, bf16 (recorded in
# benchmarks/selective_scan_notes.md): NL=4, T=16 0.543 ms; NL=2 0.57, NL=8 1.04, T=8 0.61.
LAUNCH = dict(NL=4, T=16)
INTERPRET_LAUNCH = dict(NL=4, T=8)  # the interpreter's: more chunks at small L


@triton.jit
def _shfl_seg(x, idx: tl.constexpr, W: tl.constexpr, PTX: tl.constexpr):
    """x of row (r - r % W) + idx in every row r (W a power of 2, rows along lanes): with
    PTX one indexed shuffle per value within segments of W lanes, else tl.gather."""
    if PTX:
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
def _chunk_raw(ptr, t0, V: tl.constexpr, R: tl.constexpr, mask, L, EVEN: tl.constexpr,
               PAIRS: tl.constexpr):
    """R pieces of V steps from t0 of rows (ptr: (32, 1) pointers), one 16-byte load per
    row and piece: with PAIRS (bfloat16, unmasked, even offsets) int32 pairs (32, V / 2),
    else (32, V) of the stored type. `_widen` makes them columns."""
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
def _widen(x, V: tl.constexpr):
    """One piece from `_chunk_raw` as V float32 (32, 1) columns in time order."""
    out = ()
    if x.dtype == tl.int32:
        cols = _columns(x, V // 2)
        for q in tl.static_range(V // 2):
            out = out + _unpack_bf16(cols[q])
    else:
        out = _columns(x.to(tl.float32), V)
    return out


@triton.jit
def _chunk_deltas(raw, u, tk, bias, L, K: tl.constexpr, NL: tl.constexpr, T: tl.constexpr,
                  VU: tl.constexpr, SOFTPLUS: tl.constexpr, EVEN: tl.constexpr,
                  PTX: tl.constexpr):
    """A chunk's delta and delta u, T (32, 1) columns each in every row: each row computes
    delta for its own K steps ((32, K) raw delta at steps tk), then gathers step i from
    row first + i // K of its channel; u is the chunk's `_chunk_raw` pieces of VU steps
    (loaded whole by every row), so delta u is formed where it is used."""
    dt_k, _ = _delta_of(raw, bias, tk < L, SOFTPLUS, EVEN, PTX)
    dt_c = _columns(dt_k, K)
    uc = ()
    for r in tl.static_range(T // VU):
        uc = uc + _widen(u[r], VU)
    dts = ()
    dtus = ()
    for i in tl.static_range(T):
        dt = _shfl_seg(dt_c[i % K], i // K, NL, PTX)
        dts = dts + (dt,)
        dtus = dtus + (dt * uc[i],)
    return dts, dtus


@triton.jit
def _chunk_out(ys, o_ptrs, mask, u_k, z_k, Dv, lrow, NL: tl.constexpr, T: tl.constexpr,
               K: tl.constexpr, PTX: tl.constexpr):
    """A chunk's output: the rows' partial sums ys (T (32, 1) columns) summed over the
    channel's rows by a butterfly reduce-scatter (each of log2 NL rounds halves what a row
    holds: T - K shuffles a row), which leaves row l the K steps l K .. l K + K - 1; there
    D u (Dv None: no D) and the z gate (z_k None: no gate; u_k, z_k as loaded), the store
    (mask None: unmasked)."""
    for j in tl.static_range(5):
        if (NL >> (j + 1)) > 0:
            keep_hi = (lrow & (NL >> (j + 1))) != 0
            nxt = ()
            for q in tl.static_range(T >> (j + 1)):
                lo = ys[q]
                hi = ys[(T >> (j + 1)) + q]
                nxt = nxt + (tl.where(keep_hi, hi, lo)
                             + _shfl_xor(tl.where(keep_hi, lo, hi), NL >> (j + 1), PTX),)
            ys = nxt
    y = _join_columns(ys, K)
    if Dv is not None:
        y += Dv * u_k.to(tl.float32)
    if z_k is not None:
        y *= _silu_fast(z_k.to(tl.float32))
    tl.store(o_ptrs, y.to(o_ptrs.dtype.element_ty), mask=mask)


@triton.jit
def _scan_fwd_states_kernel(
    # pointers; D, z, bias, ckpt and the initial state h0 (B, D, N): None when absent
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, last_ptr, ckpt_ptr,
    h0_ptr,
    # dimensions
    L, dim, dstate, dpg,
    # strides
    s_u_b, s_u_d, s_dt_b, s_dt_d, s_z_b, s_z_d, s_o_b, s_o_d,
    s_B_b, s_B_g, s_B_n, s_C_b, s_C_g, s_C_n,
    # meta-parameters
    SOFTPLUS: tl.constexpr, VARYING_BC: tl.constexpr, N: tl.constexpr, CHUNK: tl.constexpr,
    NL: tl.constexpr, T: tl.constexpr, EVEN: tl.constexpr, PAIRS: tl.constexpr,
    PTX: tl.constexpr,
):
    """Two chunks in flight: iteration c runs chunk c's recurrence, chunk c - 1's
    reduce-scatter and output, and chunk c + 1's delta: three independent streams for the
    scheduler to interleave. Each state's B and C are loaded while the state before is
    computed. Checkpoints (ckpt_ptr): the state entering every CHUNK steps (a multiple of
    T). EVEN: L a multiple of T and the channels a multiple of 32 / NL (no masks but those
    of states past N). PAIRS: bfloat16 read as int32 pairs (unmasked, 4-byte aligned).
    PTX: shuffles as inline PTX (rows must be one per lane), else through tl.gather."""
    S: tl.constexpr = (N + NL - 1) // NL  # states per row
    K: tl.constexpr = T // NL  # steps of the chunk whose inputs a row loads
    CPW: tl.constexpr = 32 // NL  # channels per warp
    V: tl.constexpr = 128 // B_ptr.dtype.element_ty.primitive_bitwidth if VARYING_BC else 4
    VU: tl.constexpr = 128 // u_ptr.dtype.element_ty.primitive_bitwidth  # u: 16 bytes
    BC_EVEN: tl.constexpr = EVEN and NL * S == N  # B, C unmasked: every row's states exist
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
    offs_k = lrow * K + tl.arange(0, K)[None, :]  # (32, K): the row's own steps of a chunk
    Dv = None
    if D_ptr is not None:
        Dv = tl.load(D_ptr + d_col, mask=m_col, other=0.0)
    bias = None
    if bias_ptr is not None:
        bias = tl.load(bias_ptr + d_col, mask=m_col, other=0.0)
    u_row = u_ptr + pid_b * s_u_b + d_col * s_u_d
    dt_row = delta_ptr + pid_b * s_dt_b + d_col * s_dt_d
    o_row = out_ptr + pid_b * s_o_b + d_col * s_o_d
    z_row = None
    if z_ptr is not None:
        z_row = z_ptr + pid_b * s_z_b + d_col * s_z_d
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
        if h0_ptr is not None:  # the state entering the sequence
            hs = hs + (tl.load(h0_ptr + (pid_b * dim + d_col) * dstate + n, mask=mn, other=0.0),)
        else:
            hs = hs + (tl.zeros((32, 1), dtype=tl.float32),)
    if VARYING_BC:  # the first chunk's first state's B, C
        B_p = _chunk_raw(Bs[0], 0, V, T // V, ms[0], L, BC_EVEN, BC_PAIRS)
        C_p = _chunk_raw(Cs[0], 0, V, T // V, ms[0], L, BC_EVEN, BC_PAIRS)
    # chunk 0's delta now; no chunk waiting for its output yet
    u_d = _chunk_raw(u_row, 0, VU, T // VU, m_col, L, EVEN, PAIRS)
    dts, dtus = _chunk_deltas(_load_even(dt_row + offs_k, m_col & (offs_k < L), EVEN), u_d,
                              offs_k, bias, L, K, NL, T, VU, SOFTPLUS, EVEN, PTX)
    ys_w = ()  # the chunk before's partial sums, waiting for its output
    for _ in tl.static_range(T):
        ys_w = ys_w + (tl.zeros((32, 1), dtype=tl.float32),)
    for c in range(0, tl.cdiv(L, T)):
        t0 = c * T
        tk = t0 + offs_k
        t_nx = t0 + T
        if EVEN:  # past the end: load the last chunk again (in bounds, unused)
            t_nx = tl.minimum(t_nx, L - T)
        # chunk c + 1's inputs for its delta; chunk c - 1's u, z again for its output
        # (chunk 0's before the first: in bounds, not stored)
        u_n = _chunk_raw(u_row, t_nx, VU, T // VU, m_col, L, EVEN, PAIRS)
        raw_n = _load_even(dt_row + t_nx + offs_k, m_col & (t_nx + offs_k < L), EVEN)
        tko = tl.maximum(t0 - T, 0) + offs_k
        mko = m_col & (tko < L)
        u_w = _load_even(u_row + tko, mko, EVEN)
        z_w = None
        if z_row is not None:
            z_w = _load_even(z_row + tko, mko, EVEN)
        if ckpt_ptr is not None:
            if t0 % CHUNK == 0:  # the states entering the chunk: a row's S are adjacent
                ck_row = ckpt_ptr + ((pid_b * dim + d_col) * tl.cdiv(L, CHUNK) + t0 // CHUNK) * N
                if (S & (S - 1)) == 0:  # S a power of 2: one store of S values per row
                    ns = lrow * S + tl.arange(0, S)[None, :]
                    tl.store(ck_row + ns, _join_columns(hs, S), mask=m_col & (ns < N))
                else:
                    for s in tl.static_range(S):
                        tl.store(ck_row + lrow * S + s, hs[s], mask=ms[s])
        ys = ()  # per step: the row's sum over its states of C h
        hs_new = ()
        for s in tl.static_range(S):
            h = hs[s]
            if VARYING_BC:  # this state's B, C came with the state before; load the next's
                B_r = B_p
                C_r = C_p
                if s + 1 < S:
                    B_p = _chunk_raw(Bs[s + 1], t0, V, T // V, ms[s + 1], L, BC_EVEN, BC_PAIRS)
                    C_p = _chunk_raw(Cs[s + 1], t0, V, T // V, ms[s + 1], L, BC_EVEN, BC_PAIRS)
                else:
                    B_p = _chunk_raw(Bs[0], t_nx, V, T // V, ms[0], L, BC_EVEN, BC_PAIRS)
                    C_p = _chunk_raw(Cs[0], t_nx, V, T // V, ms[0], L, BC_EVEN, BC_PAIRS)
            yn = ()
            for r in tl.static_range(T // V):
                if VARYING_BC:
                    Bc = _widen(B_r[r], V)
                    Cc = _widen(C_r[r], V)
                for v in tl.static_range(V):
                    if VARYING_BC:
                        b_i = Bc[v]
                        c_i = Cc[v]
                    else:
                        b_i = Bs[s]
                        c_i = Cs[s]
                    h = _ex2_fast(dts[r * V + v] * A2[s]) * h + dtus[r * V + v] * b_i
                    if s == 0:
                        yn = yn + (c_i * h,)
                    else:
                        yn = yn + (ys[r * V + v] + c_i * h,)
            ys = yn
            hs_new = hs_new + (h,)
        hs = hs_new
        # the chunk before's output (none before chunk 0); chunk c + 1's delta
        tkw = tk - T
        _chunk_out(ys_w, o_row + tkw, (tkw >= 0) & m_col, u_w, z_w, Dv, lrow, NL, T, K, PTX)
        dts, dtus = _chunk_deltas(raw_n, u_n, tk + T, bias, L, K, NL, T, VU, SOFTPLUS, EVEN,
                                  PTX)
        ys_w = ys
    tkw = (tl.cdiv(L, T) - 1) * T + offs_k  # the last chunk's output
    mkw = m_col & (tkw < L)
    u_w = _load_even(u_row + tkw, mkw, EVEN)
    z_w = None
    if z_row is not None:
        z_w = _load_even(z_row + tkw, mkw, EVEN)
    _chunk_out(ys_w, o_row + tkw, None if EVEN else mkw, u_w, z_w, Dv, lrow, NL, T, K, PTX)
    for s in tl.static_range(S):
        tl.store(last_ptr + (pid_b * dim + d_col) * dstate + lrow * S + s, hs[s], mask=ms[s])


def scan_forward_states(u, delta, A, B, C, D, z, delta_bias, softplus: bool,
                        chunk: int | None, h0=None, nl: int | None = None,
                        t: int | None = None):
    """Launch the states forward on checked inputs (`selective_scan`'s conventions);
    `chunk`: the checkpoint interval (None: no checkpoints; else a multiple of t); `h0` the
    state entering the sequence ((B, D, N) float32, None: zeros). `nl`
    rows per channel (at most N's power of 2) and `t` steps per chunk default to LAUNCH
    (INTERPRET_LAUNCH under the interpreter). Returns out, the last state, the checkpoints."""
    bsz, dim, length, dstate, groups, dpg = scan_dims(u, A, B)
    launch = INTERPRET_LAUNCH if INTERPRET else LAUNCH
    nl = min(nl or launch["NL"], triton.next_power_of_2(dstate))
    t = t or launch["T"]
    loads = [16 // u.element_size()] + ([16 // B.element_size()] if B.dim() > 2 else [4])
    if t % nl or any(t % v for v in loads) or (chunk is not None and chunk % t):
        raise ValueError(f"the states forward's chunks (t = {t} steps) must be a multiple of "
                         f"its rows per channel ({nl}) and of one 16-byte load ({loads} "
                         f"steps), and divide the checkpoint interval ({chunk})")
    Af, Df, bias, out, last, ckpt = forward_buffers(u, A, D, delta_bias, chunk)
    B, C, sB, sC = bc_operands(B, C)
    even = length % t == 0 and dpg % (32 // nl) == 0
    # bfloat16 u (and time-varying B, C) read as int32 pairs: unmasked, 4-byte aligned
    pairs = even and all(bf16_pairs_ok(x) for x in (u, B, C)
                         if x.dtype == torch.bfloat16 and x.dim() > 2)
    zz = z if z is not None else u
    args = (u, delta, Af, B, C, Df, z, bias, out, last, ckpt, h0, length, dim, dstate, dpg,
            *row_strides(u, delta, zz, out), *sB, *sC)
    grid = (groups * triton.cdiv(dpg, 32 // nl), bsz)
    kw = dict(SOFTPLUS=bool(softplus), VARYING_BC=B.dim() > 2, N=dstate,
              CHUNK=chunk or t, NL=nl, T=t, EVEN=even, PAIRS=pairs, PTX=not INTERPRET,
              num_warps=1)
    done = _scan_fwd_states_kernel[grid](*args, **kw)
    if not INTERPRET and not rows_one_per_lane(done):
        # the shuffles are right only with one row per lane: where Triton laid the rows out
        # otherwise, run again through tl.gather (the second run rewrites all the first wrote)
        _scan_fwd_states_kernel[grid](*args, **dict(kw, PTX=False))
    return out, last, ckpt
