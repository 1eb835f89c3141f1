"""The lanes forward of the selective scan (chapter 7): a warp's lanes along time.

The forward for float32 inputs with N <= 32 on a GPU. Each lane scans a run of steps in
registers, the lanes of a channel join their runs with a scan of the runs' summaries
(chapter 6's associative operator), and each lane then adds what entered its run.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import (
    INTERPRET,
    _channel_block,
    _delta_of,
    _load_even,
    _unpack_bf16,
    bc_operands,
    bf16_pairs_ok,
    forward_buffers,
    row_strides,
    scan_dims,
)

# (channels per warp, steps per lane, register cap): H200, B=8, D=1536, N=16, float32,
# side by side in one run (benchmarks/selective_scan_notes.md): CPW 2 0.837 / 3.40 ms at
# L = 4K / 16K, CPW 8 0.881 / 3.98, CPW 4 0.954 / 4.02.
LAUNCH = dict(CPW=2, T=16, maxnreg=128)
INTERPRET_LAUNCH = dict(CPW=2, T=4)  # the interpreter's: 16 lanes of 4 steps a channel


@triton.jit
def _combine_fwd(a_l, b_l, a_r, b_r):
    """(a, b) o (a', b') = (a a', a' b + b'): apply the left step, then the right one."""
    return a_l * a_r, a_r * b_l + b_r


@triton.jit
def _lanes_load(row, t0, mask_d, L, LT: tl.constexpr, R: tl.constexpr, V: tl.constexpr,
                EVEN: tl.constexpr, PAIRS: tl.constexpr):
    """One chunk of CPW rows of a (B, D, L) tensor (row: (CPW, 1, 1) pointers) as R
    (CPW, LT, V) float32 pieces: lane (c, j) holds steps t0 + j R V .. + R V - 1 of channel
    c, piece r the r-th V of them, one 16-byte load each. PAIRS (unmasked, even offsets):
    bfloat16 read as int32 pairs and widened with one shift or AND per value."""
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
    """One state's h over a chunk: each lane's run from a zero state (P = product of a,
    H = partial state), the runs' summaries scanned across a channel's lanes, then h = H +
    P h_in. Returns the pieces of a, b = delta u B, h, the state entering each piece of
    each lane's run, and the state after the chunk (in every lane of a channel)."""
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
def _scan_fwd_lanes_kernel(
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
    CPW: tl.constexpr, T: tl.constexpr, V: tl.constexpr, EVEN: tl.constexpr,
    PAIRS: tl.constexpr,
):
    """One warp per CPW channels, its lanes along time: each channel gets LT = 32 / CPW
    lanes, and a chunk of LT T steps (T = R V: R loads of V elements, 16 bytes each) is cut
    into LT runs of T steps, one per lane. For each state a lane scans its run from a zero
    state (the running product P of a and the partial state H: 2 instructions per step),
    the LT lanes of a channel scan their runs' summaries with shuffles, and each lane adds
    what entered its run: h_t = H_t + P_t h_in, one FMA per step. The CPW channels of a
    warp load the same B and C steps in one instruction, so the cache serves each once.
    Checkpoints (ckpt_ptr): the state before every CHUNK steps (CHUNK a multiple of T, or a
    multiple of V dividing T). EVEN: L a multiple of LT T and the channels a multiple of
    CPW (no masks). PAIRS: bfloat16 read as int32 pairs (unmasked, even offsets).
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
    bias = None
    if bias_ptr is not None:
        bias = tl.load(bias_ptr + d3, mask=m3, other=0.0)
    u_row = u_ptr + pid_b * s_u_b + d3 * s_u_d
    dt_row = delta_ptr + pid_b * s_dt_b + d3 * s_dt_d
    o_row = out_ptr + pid_b * s_o_b + d3 * s_o_d
    B_row = B_ptr + pid_b * s_B_b + grp * s_B_g + 0 * d3  # the same steps for every channel
    C_row = C_ptr + pid_b * s_C_b + grp * s_C_g + 0 * d3
    if ckpt_ptr is not None:
        ck_row = ckpt_ptr + (pid_b * dim + offs_d[:, None]) * tl.cdiv(L, CHUNK) * N  # (CPW, 1)
    hc = ()  # per state: the state entering the chunk, in each of a channel's lanes
    for n in tl.static_range(N):
        h0 = tl.zeros((CPW, LT), dtype=tl.float32)
        if h0_ptr is not None:  # the state entering the sequence, in each of a channel's lanes
            h0 += tl.load(h0_ptr + (pid_b * dim + offs_d[:, None]) * dstate + n,
                          mask=mask_d[:, None], other=0.0)
        hc = hc + (h0,)
    for c in range(0, tl.cdiv(L, LT * T)):
        t0 = c * (LT * T)
        us = _lanes_load(u_row, t0, m3, L, LT, R, V, EVEN, PAIRS)
        dts = _lanes_load(dt_row, t0, m3, L, LT, R, V, EVEN, PAIRS)
        dts_ = ()
        dtus = ()
        ys = ()
        for r in tl.static_range(R):
            dt, _ = _delta_of(dts[r], bias, t0 + r * V + steps < L, SOFTPLUS, EVEN)
            dts_ = dts_ + (dt,)
            dtus = dtus + (dt * us[r],)
            if D_ptr is not None:
                ys = ys + (tl.load(D_ptr + d3, mask=m3, other=0.0) * us[r],)
            else:
                ys = ys + (tl.zeros_like(dt),)
        hc_new = ()
        ck_group = ()  # the states entering the runs' checkpointed pieces, G states
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
            if ckpt_ptr is not None:  # the states entering the run's CPR checkpointed pieces
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
        if z_ptr is not None:
            zs = _lanes_load(z_ptr + pid_b * s_z_b + d3 * s_z_d, t0, m3, L, LT, R, V, EVEN,
                             PAIRS)
        outs = ()
        for r in tl.static_range(R):
            y = ys[r]
            if z_ptr is not None:
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


def scan_forward_lanes(u, delta, A, B, C, D, z, delta_bias, softplus: bool,
                       chunk: int | None, h0=None, cpw: int | None = None,
                       t: int | None = None, maxnreg: int | None = None):
    """Launch the lanes forward on checked inputs (`selective_scan`'s conventions); `chunk`:
    the checkpoint interval (None: no checkpoints); `h0` the state entering the sequence
    ((B, D, N) float32, None: zeros). `cpw` channels per warp, `t` steps per
    lane and the register cap default to LAUNCH (INTERPRET_LAUNCH under the interpreter).
    Returns out, the last state, the checkpoints."""
    bsz, dim, length, dstate, groups, dpg = scan_dims(u, A, B)
    launch = dict(INTERPRET_LAUNCH if INTERPRET else LAUNCH)
    cpw = cpw or launch["CPW"]
    t = t or launch["T"]
    maxnreg = None if INTERPRET else (maxnreg or launch.get("maxnreg"))
    # every piece loaded or stored is whole 16-byte vectors of each stream (out: u's dtype)
    streams = [u, delta] + ([B, C] if B.dim() > 2 else []) + ([z] if z is not None else [])
    vec = 2 if INTERPRET else 16 // max(x.element_size() for x in streams)
    if t % vec or (chunk is not None and not (chunk % t == 0
                                              or (t % chunk == 0 and chunk % vec == 0))):
        raise ValueError(f"the lanes forward's runs (t = {t} steps) must be a multiple of one "
                         f"16-byte load ({vec} steps) and divide the checkpoint interval "
                         f"({chunk}) or be a multiple of it (itself a multiple of {vec})")
    Af, Df, bias, out, last, ckpt = forward_buffers(u, A, D, delta_bias, chunk)
    B, C, sB, sC = bc_operands(B, C)
    even = length % (32 // cpw * t) == 0 and dpg % cpw == 0
    pairs = even and all(bf16_pairs_ok(x) for x in streams + [out] if x.element_size() == 2)
    zz = z if z is not None else u
    args = (u, delta, Af, B, C, Df, z, bias, out, last, ckpt, h0, length, dim, dstate, dpg,
            *row_strides(u, delta, zz, out), *sB, *sC)
    _scan_fwd_lanes_kernel[(groups * triton.cdiv(dpg, cpw), bsz)](
        *args, SOFTPLUS=bool(softplus), VARYING_BC=B.dim() > 2, N=dstate, CHUNK=chunk or t,
        CPW=cpw, T=t, V=vec, EVEN=even, PAIRS=pairs, num_warps=1,
        **({} if maxnreg is None else dict(maxnreg=maxnreg)))
    return out, last, ckpt
