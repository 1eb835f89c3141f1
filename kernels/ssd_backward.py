"""The backward of `ssd_chunk_scan` (chapter 9): the forward's four steps in reverse, as
Triton kernels whose products are `tl.dot`s (through `ssd._mma`), the gradients of
mamba_ssm's `mamba_chunk_scan_combined`.

Per (batch, head) and chunk c: a_t = A (dt_1 + ... + dt_t) inside the chunk, a_end its
last value, L_mk = exp(a_m - a_k) for k <= m, H_c the state entering chunk c and S_c the
state chunk c leaves from zero (so H_{c+1} = exp(a_end) H_c + S_c), dy = dout silu(z),
W_mk = (C_m . B_k) L_mk dt_k (dy_m . x_k) (a term of the loss's diagonal blocks).
  1. dH_c = sum_m exp(a_m) dy_m C_m^T: the outputs' pull on the entering state.
  2. backwards over chunks, g = dfinal: dS_c = g (the gradient of S_c and of H_{c+1}),
     p_c = exp(a_end) <H_c, dS_c>, g <- exp(a_end) g + dH_c; then g is d initial_states.
  3. rows m: dC_m = exp(a_m) H_c^T dy_m + sum_{k<=m} L_mk dt_k (dy_m . x_k) B_k;
     r_m = dy_m . y_off_m + sum_{k<=m} W_mk.
  4. columns k: u_k = sum_{m>=k} (C_m . B_k) L_mk dy_m + exp(a_end - a_k) dS_c B_k,
     dx_k = dt_k u_k + D dy_k, ddt_k = u_k . x_k, dB_k = dt_k (sum_{m>=k} L_mk
     (dy_m . x_k) C_m + exp(a_end - a_k) dS_c^T x_k); r_k -= sum_{m>=k} W_mk; and
     e_k = dt_k exp(a_end - a_k) x_k^T dS_c B_k (the state's term for step k).
  5. per chunk, a step's dt enters every decay whose span holds it:
     X_s = sum_{t>=s} r_t + p_c + sum_{t<s} e_t is the gradient of A dt_s, so
     d dt_s = ddt_s + A X_s and dA = sum_s dt_s X_s; then softplus and the bias.
     In r the rows' and columns' sums of W nearly cancel, but both sum the same float32
     W; the state's part is summed from e and p directly, never as a difference of two
     sums computed from differently rounded products (which loses dA and d dt_bias to
     bfloat16's rounding).
The gate (dz = dout y silu'(z), with y saved by the forward) runs first; dC and dB sum
over the heads of a group, dA, dD, d dt_bias over batch and chunks, from per-program
partial sums added by PyTorch (deterministic, no atomics).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import INTERPRET
from .ssd import _blocks, _mma


@triton.jit
def _at(b, t, j, length, count, width):
    """Offset of row (b, t, j) in a contiguous (B, L, count, width) tensor."""
    return ((b * length + t) * count + j) * width


@triton.jit
def _group_split(pid, heads, groups, heads_per_prog):
    """Program axis 2 is (batch, group, split of the group's heads): the batch (int64),
    group, split, and the heads [lo, hi) this program takes."""
    hpg = heads // groups
    nsplit = tl.cdiv(hpg, heads_per_prog)
    s, g, b = pid % nsplit, (pid // nsplit) % groups, (pid // (nsplit * groups)).to(tl.int64)
    lo = g * hpg + s * heads_per_prog
    return b, g, s, lo, tl.minimum(lo + heads_per_prog, g * hpg + hpg)


@triton.jit
def _gate_bwd_kernel(dout_ptr, z_ptr, y_ptr, dy_ptr, dz_ptr, numel, BLOCK: tl.constexpr):
    """out = y silu(z): dy = dout silu(z), dz = dout y sigmoid(z) (1 + z (1 - sigmoid(z)))."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # flat (B, L, H, P)
    mask = offs < numel
    dout = tl.load(dout_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    sig = tl.sigmoid(z)
    tl.store(dy_ptr + offs, (dout * z * sig).to(dy_ptr.dtype.element_ty), mask=mask)
    tl.store(dz_ptr + offs, (dout * y * sig * (1 + z * (1 - sig))).to(dz_ptr.dtype.element_ty),
             mask=mask)


@triton.jit
def _state_grad_kernel(
    # pointers
    dy_ptr, C_ptr, acum_ptr, dstates_ptr,
    # dimensions
    length, heads, hdim, dstate, chunk, groups,
    # meta-parameters
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Step 1, a (P, N) block of dH_c = sum_t exp(a_t) dy_t C_t^T (the chunk-state product
    of the forward with dy for x, C for B, exp(a_t) for the weights)."""
    pid_pn = tl.program_id(0)  # (block of P, block of N)
    c = tl.program_id(1)  # chunk
    pid_bh = tl.program_id(2)  # (batch, head)
    b, h = (pid_bh // heads).to(tl.int64), pid_bh % heads
    g = h // (heads // groups)  # the group of C this head reads
    n_blk_n = tl.cdiv(dstate, BLOCK_N)
    offs_p = (pid_pn // n_blk_n) * BLOCK_P + tl.arange(0, BLOCK_P)  # rows of the state
    offs_n = (pid_pn % n_blk_n) * BLOCK_N + tl.arange(0, BLOCK_N)  # state columns
    row = (pid_bh * tl.num_programs(1) + c) * chunk  # this chunk in (B, H, chunks, T)
    acc = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, chunk, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)  # steps of the chunk
        t = c * chunk + offs_k  # steps of the sequence
        mask_k = (offs_k < chunk) & (t < length)
        dyT = tl.load(dy_ptr + _at(b, t, h, length, heads, hdim)[None, :] + offs_p[:, None],
                      mask=mask_k[None, :] & (offs_p[:, None] < hdim), other=0.0)  # (P, K)
        Ck = tl.load(C_ptr + _at(b, t, g, length, groups, dstate)[:, None] + offs_n[None, :],
                     mask=mask_k[:, None] & (offs_n[None, :] < dstate), other=0.0)  # (K, N)
        a = tl.load(acum_ptr + row + offs_k, mask=mask_k, other=0.0)
        dyT = (dyT.to(tl.float32) * tl.exp(a)[None, :]).to(Ck.dtype)
        acc = _mma(dyT, Ck, acc, PRECISION)
    st = dstates_ptr + ((b * tl.num_programs(1) + c) * heads + h) * hdim * dstate
    tl.store(st + offs_p[:, None] * dstate + offs_n[None, :], acc,
             mask=(offs_p[:, None] < hdim) & (offs_n[None, :] < dstate))


@triton.jit
def _state_passing_bwd_kernel(
    # pointers
    dstates_ptr, states_ptr, dfinal_ptr, acum_ptr, dh0_ptr, pass_ptr,
    # dimensions
    heads, nchunks, chunk, size,
    # meta-parameters
    BLOCK: tl.constexpr,
):
    """Step 2, from the last chunk to the first, in place: dstates[c] (dH_c on entry)
    becomes dS_c; this block's part of exp(a_end) <H_c, dS_c> goes to pass_ptr."""
    pid = tl.program_id(0)  # block of the flattened (P, N) state
    pid_bh = tl.program_id(1)  # (batch, head)
    b, h = (pid_bh // heads).to(tl.int64), pid_bh % heads
    offs = pid * BLOCK + tl.arange(0, BLOCK)  # indices into the (P * N,) state
    mask = offs < size
    g = tl.load(dfinal_ptr + pid_bh * size + offs, mask=mask, other=0.0)
    for i in range(nchunks):
        c = nchunks - 1 - i
        at = ((b * nchunks + c) * heads + h) * size + offs
        dh = tl.load(dstates_ptr + at, mask=mask, other=0.0)
        tl.store(dstates_ptr + at, g, mask=mask)
        hc = tl.load(states_ptr + at, mask=mask, other=0.0)  # H_c
        decay = tl.exp(tl.load(acum_ptr + (pid_bh * nchunks + c) * chunk + chunk - 1))
        tl.store(pass_ptr + (pid_bh * tl.num_programs(0) + pid) * nchunks + c,
                 decay * tl.sum(hc * g, axis=0))
        g = decay * g + dh
    tl.store(dh0_ptr + pid_bh * size + offs, g, mask=mask)


@triton.jit
def _chunk_scan_dC_kernel(
    # pointers
    dy_ptr, x_ptr, B_ptr, C_ptr, dt_ptr, acum_ptr, states_ptr, dC_ptr, r_ptr,
    # dimensions
    length, heads, hdim, dstate, chunk, groups, heads_per_prog,
    # meta-parameters
    BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Step 3, rows m of a chunk: dC_m summed over the heads this program takes of one
    group, and per head r_m = dy_m . y_off_m + sum_{k <= m} W_mk."""
    pid_m = tl.program_id(0)  # block of rows
    c = tl.program_id(1)  # chunk
    b, g, s, h_lo, h_hi = _group_split(tl.program_id(2), heads, groups, heads_per_prog)
    nc = tl.num_programs(1)
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)  # rows: steps of the chunk
    offs_p, offs_n = tl.arange(0, BLOCK_P), tl.arange(0, BLOCK_N)  # all of P and N
    valid = chunk - tl.maximum(c * chunk + chunk - length, 0)  # steps of this chunk < L
    mask_m, mask_p, mask_n = offs_m < valid, offs_p < hdim, offs_n < dstate
    t_m = c * chunk + offs_m
    Cm = tl.load(C_ptr + _at(b, t_m, g, length, groups, dstate)[:, None] + offs_n[None, :],
                 mask=mask_m[:, None] & mask_n[None, :], other=0.0)  # (M, N)
    dC = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for h in range(h_lo, h_hi):
        row = ((b * heads + h) * nc + c) * chunk  # (B, H, chunks, T) buffers
        a_m = tl.load(acum_ptr + row + offs_m, mask=mask_m, other=0.0)
        dym = tl.load(dy_ptr + _at(b, t_m, h, length, heads, hdim)[:, None] + offs_p[None, :],
                      mask=mask_m[:, None] & mask_p[None, :], other=0.0)  # (M, P)
        st = states_ptr + ((b * nc + c) * heads + h) * hdim * dstate
        Hc = tl.load(st + offs_p[:, None] * dstate + offs_n[None, :],
                     mask=mask_p[:, None] & mask_n[None, :], other=0.0)  # (P, N)
        dCh = _mma(dym, Hc.to(dym.dtype), None, PRECISION) * tl.exp(a_m)[:, None]  # (M, N)
        r = tl.sum(dCh * Cm.to(tl.float32), axis=1)  # dy_m . y_off_m
        for k0 in range(0, tl.minimum(m0 + BLOCK_M, valid), BLOCK_M):
            offs_k = k0 + tl.arange(0, BLOCK_M)  # columns: steps of the chunk
            mask_k, t_k = offs_k < valid, c * chunk + offs_k
            xT = tl.load(x_ptr + _at(b, t_k, h, length, heads, hdim)[None, :]
                         + offs_p[:, None], mask=mask_k[None, :] & mask_p[:, None],
                         other=0.0)  # (P, K)
            Bk = tl.load(B_ptr + _at(b, t_k, g, length, groups, dstate)[:, None]
                         + offs_n[None, :], mask=mask_k[:, None] & mask_n[None, :],
                         other=0.0)  # (K, N)
            a_k = tl.load(acum_ptr + row + offs_k, mask=mask_k, other=0.0)
            dt_k = tl.load(dt_ptr + row + offs_k, mask=mask_k, other=0.0)
            seg = tl.where(offs_k[None, :] <= offs_m[:, None], a_m[:, None] - a_k[None, :],
                           -float("inf"))  # (M, K)
            Q = _mma(dym, xT, None, PRECISION) * tl.exp(seg) * dt_k[None, :]  # L dt dy.x
            r += tl.sum(Q * _mma(Cm, tl.trans(Bk), None, PRECISION), axis=1)  # W by rows
            dCh = _mma(Q.to(Bk.dtype), Bk, dCh, PRECISION)
        dC += dCh
        tl.store(r_ptr + row + offs_m, r, mask=offs_m < chunk)
    nsplit = tl.cdiv(heads // groups, heads_per_prog)  # dC: (B, L, splits, G, N) partials
    tl.store(dC_ptr + _at(b, t_m, s * groups + g, length, nsplit * groups, dstate)[:, None]
             + offs_n[None, :], dC, mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _chunk_scan_dx_kernel(
    # pointers
    dy_ptr, x_ptr, B_ptr, C_ptr, D_ptr, dt_ptr, acum_ptr, dstates_ptr,
    dx_ptr, dB_ptr, ddt_ptr, r_ptr, e_ptr, dD_ptr,
    # dimensions
    length, heads, hdim, dstate, chunk, groups, heads_per_prog,
    # meta-parameters
    BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Step 4, columns k of a chunk (steps read by later rows and by the chunk's state):
    per head dx_k, ddt_k = u_k . x_k, -sum_{m >= k} W_mk, e_k and D's partial sum; dB_k
    summed over the heads this program takes of one group."""
    pid_k = tl.program_id(0)  # block of columns
    c = tl.program_id(1)  # chunk
    b, g, s, h_lo, h_hi = _group_split(tl.program_id(2), heads, groups, heads_per_prog)
    nc = tl.num_programs(1)
    k0 = pid_k * BLOCK_M
    offs_k = k0 + tl.arange(0, BLOCK_M)  # columns: steps of the chunk
    offs_p, offs_n = tl.arange(0, BLOCK_P), tl.arange(0, BLOCK_N)  # all of P and N
    valid = chunk - tl.maximum(c * chunk + chunk - length, 0)  # steps of this chunk < L
    mask_k, mask_p, mask_n = offs_k < valid, offs_p < hdim, offs_n < dstate
    mask_kp, mask_kn = mask_k[:, None] & mask_p[None, :], mask_k[:, None] & mask_n[None, :]
    t_k = c * chunk + offs_k
    Bk = tl.load(B_ptr + _at(b, t_k, g, length, groups, dstate)[:, None] + offs_n[None, :],
                 mask=mask_kn, other=0.0)  # (K, N)
    dB = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for h in range(h_lo, h_hi):
        row = ((b * heads + h) * nc + c) * chunk  # (B, H, chunks, T) buffers
        a_k = tl.load(acum_ptr + row + offs_k, mask=mask_k, other=0.0)
        dt_k = tl.load(dt_ptr + row + offs_k, mask=mask_k, other=0.0)
        to_end = tl.exp(tl.load(acum_ptr + row + chunk - 1) - a_k)  # decay to chunk's end
        x_at = _at(b, t_k, h, length, heads, hdim)[:, None] + offs_p[None, :]
        xk = tl.load(x_ptr + x_at, mask=mask_kp, other=0.0)  # (K, P)
        st = dstates_ptr + ((b * nc + c) * heads + h) * hdim * dstate
        dS = tl.load(st + offs_p[:, None] * dstate + offs_n[None, :],
                     mask=mask_p[:, None] & mask_n[None, :], other=0.0).to(xk.dtype)  # (P, N)
        u = _mma(Bk, tl.trans(dS), None, PRECISION) * to_end[:, None]  # (K, P)
        v = _mma(xk, dS, None, PRECISION) * to_end[:, None]  # (K, N)
        tl.store(e_ptr + row + offs_k, dt_k * tl.sum(u * xk.to(tl.float32), axis=1),
                 mask=offs_k < chunk)
        w = tl.zeros((BLOCK_M,), dtype=tl.float32)  # sum_{m >= k} W_mk / dt_k
        for m0 in range(k0, valid, BLOCK_M):
            offs_m = m0 + tl.arange(0, BLOCK_M)  # rows m >= k: steps of the chunk
            mask_m, t_m = offs_m < valid, c * chunk + offs_m
            dym = tl.load(dy_ptr + _at(b, t_m, h, length, heads, hdim)[:, None]
                          + offs_p[None, :], mask=mask_m[:, None] & mask_p[None, :],
                          other=0.0)  # (M, P)
            Cm = tl.load(C_ptr + _at(b, t_m, g, length, groups, dstate)[:, None]
                         + offs_n[None, :], mask=mask_m[:, None] & mask_n[None, :],
                         other=0.0)  # (M, N)
            a_m = tl.load(acum_ptr + row + offs_m, mask=mask_m, other=0.0)
            LT = tl.exp(tl.where(offs_m[None, :] >= offs_k[:, None],
                                 a_m[None, :] - a_k[:, None], -float("inf")))  # (K, M)
            CBT = _mma(Bk, tl.trans(Cm), None, PRECISION) * LT  # (K, M): (L o C B^T)^T
            u = _mma(CBT.to(dym.dtype), dym, u, PRECISION)
            GT = _mma(xk, tl.trans(dym), None, PRECISION)  # (K, M): (dy x^T)^T
            w += tl.sum(CBT * GT, axis=1)
            v = _mma((GT * LT).to(Cm.dtype), Cm, v, PRECISION)
        tl.store(ddt_ptr + row + offs_k, tl.sum(u * xk.to(tl.float32), axis=1),
                 mask=offs_k < chunk)
        tl.store(r_ptr + row + offs_k, -dt_k * w, mask=offs_k < chunk)
        dx = u * dt_k[:, None]
        if D_ptr is not None:
            dyk = tl.load(dy_ptr + x_at, mask=mask_kp, other=0.0).to(tl.float32)
            dx += dyk * tl.load(D_ptr + h * hdim + offs_p, mask=mask_p, other=0.0)[None, :]
            part = ((b * heads + h) * nc + c) * tl.num_programs(0) + pid_k  # (B,H,c,K-blocks)
            tl.store(dD_ptr + part * hdim + offs_p,
                     tl.sum(dyk * xk.to(tl.float32), axis=0), mask=mask_p)
        tl.store(dx_ptr + x_at, dx.to(dx_ptr.dtype.element_ty), mask=mask_kp)
        dB += v * dt_k[:, None]
    nsplit = tl.cdiv(heads // groups, heads_per_prog)  # dB: (B, L, splits, G, N) partials
    tl.store(dB_ptr + _at(b, t_k, s * groups + g, length, nsplit * groups, dstate)[:, None]
             + offs_n[None, :], dB, mask=mask_kn)


@triton.jit
def _dt_bwd_kernel(
    # pointers
    dt_ptr, A_ptr, bias_ptr, dtc_ptr, ddt_ptr, rows_ptr, cols_ptr, e_ptr, pass_ptr,
    ddt_out_ptr, dA_ptr, dbias_ptr,
    # dimensions
    length, heads, chunk,
    # strides (dt, ddt_out: batch, time, head)
    s_dt_b, s_dt_l, s_dt_h,
    # meta-parameters
    SOFTPLUS: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """Step 5 for one chunk: X_s = sum_{t >= s} r_t + p_c + sum_{t < s} e_t, with r the
    rows' and columns' parts; d dt_s = ddt_s + A X_s, dA's partial sum_s dt_s X_s, then the
    softplus, and dt_bias's partial sum."""
    c = tl.program_id(0)  # chunk
    pid_bh = tl.program_id(1)  # (batch, head)
    b, h = (pid_bh // heads).to(tl.int64), pid_bh % heads
    offs_t = tl.arange(0, BLOCK_T)  # steps of the chunk
    t = c * chunk + offs_t  # steps of the sequence
    part = pid_bh * tl.num_programs(0) + c  # (B, H, chunks) partial sums
    at, mask_c = part * chunk + offs_t, offs_t < chunk
    r = (tl.load(rows_ptr + at, mask=mask_c, other=0.0)
         + tl.load(cols_ptr + at, mask=mask_c, other=0.0))
    e = tl.load(e_ptr + at, mask=mask_c, other=0.0)
    X = (tl.sum(r, axis=0) - tl.cumsum(r, axis=0) + r) + tl.load(pass_ptr + part) \
        + (tl.cumsum(e, axis=0) - e)
    ddt = tl.load(ddt_ptr + at, mask=mask_c, other=0.0) + tl.load(A_ptr + h) * X
    tl.store(dA_ptr + part, tl.sum(tl.load(dtc_ptr + at, mask=mask_c, other=0.0) * X, axis=0))
    mask = mask_c & (t < length)
    if SOFTPLUS:  # dt = softplus(raw): d raw = d dt sigmoid(raw) (1 above softplus's 20)
        raw = tl.load(dt_ptr + b * s_dt_b + t * s_dt_l + h * s_dt_h, mask=mask,
                      other=0.0).to(tl.float32)
        if bias_ptr is not None:
            raw += tl.load(bias_ptr + h).to(tl.float32)
        ddt *= tl.where(raw <= 20.0, tl.sigmoid(raw), 1.0)
    ddt = tl.where(mask, ddt, 0.0)
    tl.store(ddt_out_ptr + b * s_dt_b + t * s_dt_l + h * s_dt_h,
             ddt.to(ddt_out_ptr.dtype.element_ty), mask=mask)
    if bias_ptr is not None:
        tl.store(dbias_ptr + part, tl.sum(ddt, axis=0))


# ----------------------------------------------------------------------------- host
def heads_per_program(hpg: int, programs: int, device: torch.device) -> int:
    """How many heads of a group one dC / dx program loops over (their dC, dB summed in
    registers; one partial buffer per split of the group). On a GPU: as many as leave at
    least 4 programs per SM, with the group's heads split evenly; under the interpreter 2,
    so that small tests cover splits and a ragged last split."""
    if INTERPRET or device.type != "cuda":
        return min(2, hpg)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    nsplit = triton.cdiv(hpg, max(1, min(hpg, programs // (4 * sms))))
    return triton.cdiv(hpg, nsplit)


def ssd_backward(dout, dfinal, x, dt, A, B, C, D, z, dt_bias, dt_softplus, chunk,
                 dt_c, acum, states, y):
    """The launches of the backward; inputs as the forward took them, plus what it saved:
    dt_c and acum (B, H, chunks, T), the entering states (B, chunks, H, P, N) and y before
    the gate (with z). Returns the gradients of
    (x, dt, A, B, C, D, z, dt_bias, initial_states), in their dtypes (dh0 float32)."""
    bsz, length, heads, hdim = x.shape
    groups, dstate = B.shape[2], B.shape[3]
    nc = dt_c.shape[2]
    # the kernels index these as contiguous; dt's gradient is written with dt's strides
    x, B, C, dout = x.contiguous(), B.contiguous(), C.contiguous(), dout.contiguous()
    dt = dt.contiguous()
    f32 = dict(device=x.device, dtype=torch.float32)
    precision = "ieee" if x.dtype == torch.float32 else "tf32"  # tf32: unused for 2-byte
    block_m, block_p, block_n = _blocks(chunk, hdim, dstate)
    block_m = min(block_m, 32)  # the backward holds more tiles per program than the forward
    dy, dz = dout, None
    if z is not None:  # dy = dout silu(z) and dz
        dy, dz = torch.empty_like(dout), torch.empty(z.shape, dtype=z.dtype, device=z.device)
        _gate_bwd_kernel[(triton.cdiv(dout.numel(), 1024),)](
            dout, z.contiguous(), y, dy, dz, dout.numel(), BLOCK=1024)
    dstates = torch.empty(bsz, nc, heads, hdim, dstate, **f32)
    bn_state = min(block_n, 64)
    grid = (triton.cdiv(hdim, block_p) * triton.cdiv(dstate, bn_state), nc, bsz * heads)
    _state_grad_kernel[grid](dy, C, acum, dstates, length, heads, hdim, dstate, chunk,
                             groups, BLOCK_P=block_p, BLOCK_N=bn_state, BLOCK_K=block_m,
                             PRECISION=precision)
    size = hdim * dstate
    block = min(1024, triton.next_power_of_2(size))
    nblk = triton.cdiv(size, block)
    dh0 = torch.empty(bsz, heads, hdim, dstate, **f32)
    passed = torch.empty(bsz * heads, nblk, nc, **f32)  # p_c, per block of the state
    _state_passing_bwd_kernel[(nblk, bsz * heads)](
        dstates, states, dfinal.float().contiguous(), acum, dh0, passed, heads, nc, chunk,
        size, BLOCK=block)
    # steps 3 and 4: programs over (row or column blocks, chunks, batch x group x split)
    hpg, nrow = heads // groups, triton.cdiv(chunk, block_m)
    hpp = heads_per_program(hpg, nrow * nc * bsz * heads, x.device)
    nsplit = triton.cdiv(hpg, hpp)
    grid = (nrow, nc, bsz * groups * nsplit)
    meta = dict(BLOCK_M=block_m, BLOCK_P=max(16, triton.next_power_of_2(hdim)),
                BLOCK_N=block_n, PRECISION=precision,
                num_warps=8)  # 4 warps spill several times more registers (sm_90 compile)
    dims = (length, heads, hdim, dstate, chunk, groups, hpp)
    dC = torch.empty(bsz, length, nsplit, groups, dstate, **f32)
    rows, cols, e, ddt = (torch.empty(bsz, heads, nc, chunk, **f32) for _ in range(4))
    _chunk_scan_dC_kernel[grid](dy, x, B, C, dt_c, acum, states, dC, rows, *dims, **meta)
    Dm = None if D is None else D.float().reshape(heads, -1).expand(heads, hdim).contiguous()
    dx, dB = torch.empty(x.shape, dtype=x.dtype, device=x.device), torch.empty_like(dC)
    dD = torch.empty(bsz, heads, nc, nrow, hdim, **f32) if D is not None else None
    _chunk_scan_dx_kernel[grid](dy, x, B, C, Dm, dt_c, acum, dstates, dx, dB, ddt, cols, e,
                                dD, *dims, **meta)
    # step 5
    ddt_out = torch.empty(dt.shape, dtype=dt.dtype, device=dt.device)
    dA = torch.empty(bsz, heads, nc, **f32)
    dbias = torch.empty(bsz, heads, nc, **f32) if dt_bias is not None else None
    _dt_bwd_kernel[(nc, bsz * heads)](
        dt, A.float().contiguous(), dt_bias, dt_c, ddt, rows, cols, e, passed.sum(1),
        ddt_out, dA, dbias,
        length, heads, chunk, *dt.stride(), SOFTPLUS=bool(dt_softplus),
        BLOCK_T=triton.next_power_of_2(chunk))
    if D is not None:
        dD = dD.sum((0, 2, 3))  # (H, P)
        dD = (dD.sum(1) if D.dim() == 1 else dD).to(D.dtype)
    return (dx, ddt_out, dA.sum((0, 2)).to(A.dtype), dB.sum(2).to(x.dtype),
            dC.sum(2).to(x.dtype), dD, dz,
            dbias.sum((0, 2)).to(dt_bias.dtype) if dt_bias is not None else None, dh0)
