"""`ssd_chunk_scan`: Mamba-2's state space duality as Triton kernels on tensor cores (chapter 9),
the semantics of mamba_ssm's `mamba_chunk_scan_combined`.

The sequence is cut into chunks of T steps and the four steps of `mambabook.ssd.ssd_chunked`
run as four launches: dt and its cumulative decay per chunk; each chunk's state (a matrix
product (P, T) x (T, N)); the states passed from chunk to chunk (the only sequential part,
L / T steps); each chunk's output, C h_entering plus the masked quadratic form inside the
chunk (products (T, N) x (N, T) and (T, T) x (T, P)). Every product is a `tl.dot`.
Precision: float32 inputs multiply in full float32 (input_precision="ieee", what the
interpreter computes too); 2-byte inputs (bfloat16, float16) multiply in their own type on
tensor cores and accumulate in float32, as mamba_ssm's kernels do. The backward
(`ssd_backward.py`) runs the four steps in reverse, also as `tl.dot` kernels, from what the
forward saves: dt, the cumulative decay, the states entering each chunk and y before the
gate.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..checks import check_positive_int, check_same_device, check_tensor
from ..ssd import check_ssd_args, check_state
from .common import ASM, _softplus, check_kernel_inputs

MAX_DSTATE = 256  # largest N: the output kernel holds a whole (rows, N) block of C


@triton.jit
def _mma(a, b, acc, PRECISION: tl.constexpr):
    """acc + a @ b by tl.dot, accumulated in float32. Triton's interpreter multiplies
    2-byte floats wrongly (values off by 1e10), so there the operands go up to float32
    first: the same products, exact in float32."""
    if not ASM:
        a, b = a.to(tl.float32), b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def _dt_cumsum_kernel(
    # pointers
    dt_ptr, A_ptr, bias_ptr, dt_out_ptr, acum_ptr,
    # dimensions
    length, heads, chunk,
    # strides (dt: batch, time, head)
    s_dt_b, s_dt_l, s_dt_h,
    # meta-parameters
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """dt (plus bias, softplus) and a_cum[t] = dt_1 A + ... + dt_t A inside one chunk."""
    c = tl.program_id(0)  # chunk
    pid_bh = tl.program_id(1)  # (batch, head)
    b, h = (pid_bh // heads).to(tl.int64), pid_bh % heads
    offs_t = tl.arange(0, BLOCK_T)  # steps of the chunk
    t = c * chunk + offs_t  # steps of the sequence
    mask = (offs_t < chunk) & (t < length)
    dt = tl.load(dt_ptr + b * s_dt_b + t * s_dt_l + h * s_dt_h, mask=mask, other=0.0)
    dt = dt.to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + h).to(tl.float32)
    if SOFTPLUS:
        dt = _softplus(dt)
    dt = tl.where(mask, dt, 0.0)  # steps past L: dt = 0 keeps the state as it is
    acum = tl.cumsum(dt * tl.load(A_ptr + h).to(tl.float32), axis=0)
    out = (pid_bh * tl.num_programs(0) + c) * chunk + offs_t  # (B, H, chunks, T) buffers
    tl.store(dt_out_ptr + out, dt, mask=offs_t < chunk)
    tl.store(acum_ptr + out, acum, mask=offs_t < chunk)


@triton.jit
def _chunk_state_kernel(
    # pointers
    x_ptr, B_ptr, dt_ptr, acum_ptr, states_ptr,
    # dimensions
    length, heads, hdim, dstate, chunk, heads_per_group,
    # strides (x: batch, time, head, p; B: batch, time, group, n)
    s_x_b, s_x_l, s_x_h, s_x_p, s_B_b, s_B_l, s_B_g, s_B_n,
    # meta-parameters
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """The state a chunk leaves from zero, (P, N):
    sum_t exp(a_end - a_t) dt_t x_t B_t^T."""
    pid_pn = tl.program_id(0)  # (block of P, block of N)
    c = tl.program_id(1)  # chunk
    pid_bh = tl.program_id(2)  # (batch, head)
    b, h = (pid_bh // heads).to(tl.int64), pid_bh % heads
    g = h // heads_per_group  # the group of B this head reads
    n_blk_n = tl.cdiv(dstate, BLOCK_N)
    offs_p = (pid_pn // n_blk_n) * BLOCK_P + tl.arange(0, BLOCK_P)  # rows of the state
    offs_n = (pid_pn % n_blk_n) * BLOCK_N + tl.arange(0, BLOCK_N)  # state columns
    # this chunk in the (B, H, chunks, T) buffers
    row = (pid_bh * tl.num_programs(1) + c) * chunk
    a_end = tl.load(acum_ptr + row + chunk - 1)
    x_base = x_ptr + b * s_x_b + h * s_x_h + (c * chunk) * s_x_l
    B_base = B_ptr + b * s_B_b + g * s_B_g + (c * chunk) * s_B_l
    acc = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, chunk, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)  # steps of the chunk
        mask_k = (offs_k < chunk) & (c * chunk + offs_k < length)
        xT = tl.load(x_base + offs_k[None, :] * s_x_l + offs_p[:, None] * s_x_p,
                     mask=mask_k[None, :] & (offs_p[:, None] < hdim),
                     other=0.0)  # (P, K)
        Bk = tl.load(B_base + offs_k[:, None] * s_B_l + offs_n[None, :] * s_B_n,
                     mask=mask_k[:, None] & (offs_n[None, :] < dstate),
                     other=0.0)  # (K, N)
        dt = tl.load(dt_ptr + row + offs_k, mask=mask_k, other=0.0)
        a = tl.load(acum_ptr + row + offs_k, mask=mask_k, other=0.0)
        w = tl.exp(a_end - a) * dt  # (K,): decay to the chunk's end, times dt
        xT = (xT.to(tl.float32) * w[None, :]).to(Bk.dtype)
        acc = _mma(xT, Bk, acc, PRECISION)
    st = states_ptr + ((b * tl.num_programs(1) + c) * heads + h) * hdim * dstate
    tl.store(st + offs_p[:, None] * dstate + offs_n[None, :], acc,
             mask=(offs_p[:, None] < hdim) & (offs_n[None, :] < dstate))


@triton.jit
def _state_passing_kernel(
    # pointers
    states_ptr, acum_ptr, h0_ptr, final_ptr,
    # dimensions
    heads, nchunks, chunk, size,
    # meta-parameters
    HAS_H0: tl.constexpr, BLOCK: tl.constexpr,
):
    """h_entering(c + 1) = exp(a_end(c)) h_entering(c) + state(c), in place: states[c]
    becomes the state entering chunk c; the last one leaving is the final state."""
    pid = tl.program_id(0)  # block of the flattened (P, N) state
    pid_bh = tl.program_id(1)  # (batch, head)
    b, h = (pid_bh // heads).to(tl.int64), pid_bh % heads
    offs = pid * BLOCK + tl.arange(0, BLOCK)  # indices into the (P * N,) state
    mask = offs < size
    if HAS_H0:
        s = tl.load(h0_ptr + pid_bh * size + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        s = tl.zeros((BLOCK,), dtype=tl.float32)
    for c in range(nchunks):
        ptrs = states_ptr + ((b * nchunks + c) * heads + h) * size + offs
        new = tl.load(ptrs, mask=mask, other=0.0)  # what chunk c adds, from zero
        tl.store(ptrs, s, mask=mask)  # the state entering chunk c
        a_end = tl.load(acum_ptr + (pid_bh * nchunks + c) * chunk + chunk - 1)
        s = tl.exp(a_end) * s + new
    tl.store(final_ptr + pid_bh * size + offs, s, mask=mask)


@triton.jit
def _chunk_scan_kernel(
    # pointers
    x_ptr, B_ptr, C_ptr, z_ptr, D_ptr, dt_ptr, acum_ptr, states_ptr, out_ptr, y_ptr,
    # dimensions
    length, heads, hdim, dstate, chunk, heads_per_group,
    # strides (x, z, out: batch, time, head, p; B, C: batch, time, group, n)
    s_x_b, s_x_l, s_x_h, s_x_p, s_B_b, s_B_l, s_B_g, s_B_n,
    s_C_b, s_C_l, s_C_g, s_C_n, s_z_b, s_z_l, s_z_h, s_z_p,
    s_o_b, s_o_l, s_o_h, s_o_p, s_D_h, s_D_p,
    # meta-parameters
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):
    """Rows m of a chunk: y_m = exp(a_m) C_m h_entering
    + sum_{k <= m} (L o C B^T)_mk dt_k x_k, then + D x_m, times silu(z_m); y before the
    gate also goes to y_ptr when given (the backward's dz)."""
    pid_mp = tl.program_id(0)  # (block of rows, block of P)
    c = tl.program_id(1)  # chunk
    pid_bh = tl.program_id(2)  # (batch, head)
    b, h = (pid_bh // heads).to(tl.int64), pid_bh % heads
    g = h // heads_per_group
    n_blk_p = tl.cdiv(hdim, BLOCK_P)
    m0 = (pid_mp // n_blk_p) * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)  # rows: steps of the chunk
    offs_p = (pid_mp % n_blk_p) * BLOCK_P + tl.arange(0, BLOCK_P)  # columns: head dims
    offs_n = tl.arange(0, BLOCK_N)  # the whole state
    valid = chunk - tl.maximum(c * chunk + chunk - length, 0)  # steps of this chunk < L
    mask_m, mask_p, mask_n = offs_m < valid, offs_p < hdim, offs_n < dstate
    row = (pid_bh * tl.num_programs(1) + c) * chunk  # (B, H, chunks, T) buffers
    a_m = tl.load(acum_ptr + row + offs_m, mask=mask_m, other=0.0)  # (M,)
    C_base = C_ptr + b * s_C_b + g * s_C_g + (c * chunk) * s_C_l
    Cm = tl.load(C_base + offs_m[:, None] * s_C_l + offs_n[None, :] * s_C_n,
                 mask=mask_m[:, None] & mask_n[None, :], other=0.0)  # (M, N)
    # off-diagonal blocks of M: the state entering the chunk, read out by C, decayed
    st = states_ptr + ((b * tl.num_programs(1) + c) * heads + h) * hdim * dstate
    S = tl.load(st + offs_n[:, None] + offs_p[None, :] * dstate,
                mask=mask_n[:, None] & mask_p[None, :], other=0.0)  # (N, P): h^T
    acc = _mma(Cm, S.to(Cm.dtype), None, PRECISION) * tl.exp(a_m)[:, None]
    # diagonal block of M: (L o C B^T) (dt x), columns k up to the block's last row
    x_base = x_ptr + b * s_x_b + h * s_x_h + (c * chunk) * s_x_l
    B_base = B_ptr + b * s_B_b + g * s_B_g + (c * chunk) * s_B_l
    for k0 in range(0, tl.minimum(m0 + BLOCK_M, valid), BLOCK_M):
        offs_k = k0 + tl.arange(0, BLOCK_M)  # columns: steps of the chunk
        mask_k = offs_k < valid
        BkT = tl.load(B_base + offs_k[None, :] * s_B_l + offs_n[:, None] * s_B_n,
                      mask=mask_k[None, :] & mask_n[:, None], other=0.0)  # (N, K)
        CB = _mma(Cm, BkT.to(Cm.dtype), None, PRECISION)  # (M, K)
        a_k = tl.load(acum_ptr + row + offs_k, mask=mask_k, other=0.0)
        dt_k = tl.load(dt_ptr + row + offs_k, mask=mask_k, other=0.0)
        seg = tl.where(offs_k[None, :] <= offs_m[:, None], a_m[:, None] - a_k[None, :],
                       -float("inf"))  # the segment sum, -inf above the diagonal
        W = CB * tl.exp(seg) * dt_k[None, :]  # (M, K): a block of M, times dt
        xk = tl.load(x_base + offs_k[:, None] * s_x_l + offs_p[None, :] * s_x_p,
                     mask=mask_k[:, None] & mask_p[None, :], other=0.0)  # (K, P)
        acc = _mma(W.to(xk.dtype), xk, acc, PRECISION)
    mask_mp = mask_m[:, None] & mask_p[None, :]
    t = c * chunk + offs_m  # steps of the sequence
    if HAS_D:
        xm = tl.load(x_base + offs_m[:, None] * s_x_l + offs_p[None, :] * s_x_p,
                     mask=mask_mp, other=0.0).to(tl.float32)
        Dv = tl.load(D_ptr + h * s_D_h + offs_p * s_D_p, mask=mask_p, other=0.0)
        acc += xm * Dv.to(tl.float32)[None, :]
    o_at = b * s_o_b + h * s_o_h + t[:, None] * s_o_l + offs_p[None, :] * s_o_p
    if y_ptr is not None:
        tl.store(y_ptr + o_at, acc.to(y_ptr.dtype.element_ty), mask=mask_mp)
    if HAS_Z:
        z = tl.load(z_ptr + b * s_z_b + h * s_z_h + t[:, None] * s_z_l
                    + offs_p[None, :] * s_z_p, mask=mask_mp, other=0.0).to(tl.float32)
        acc *= z * tl.sigmoid(z)
    tl.store(out_ptr + o_at, acc.to(out_ptr.dtype.element_ty), mask=mask_mp)


# ----------------------------------------------------------------------------- host
def _blocks(chunk: int, hdim: int, dstate: int) -> tuple[int, int, int]:
    """(rows or steps per block, P per block, N per block): at least 16 (tl.dot's smallest
    side), at most 64 rows and P; N whole up to MAX_DSTATE."""
    block_m = min(64, max(16, triton.next_power_of_2(chunk)))
    block_p = min(64, max(16, triton.next_power_of_2(hdim)))
    return block_m, block_p, max(16, triton.next_power_of_2(dstate))


def ssd_forward(x, dt, A, B, C, chunk, D, z, dt_bias, dt_softplus, h0, keep_y=False):
    """The four launches; returns out (B, L, H, P) in x's dtype, the final state
    (B, H, P, N) float32 and what the backward reuses: dt and its cumulative decay
    (B, H, chunks, T), the states entering each chunk (B, chunks, H, P, N), and with
    keep_y, y before the gate (B, L, H, P), else None. Inputs already checked."""
    bsz, length, heads, hdim = x.shape
    groups, dstate = B.shape[2], B.shape[3]
    nc = triton.cdiv(length, chunk)
    f32 = dict(device=x.device, dtype=torch.float32)
    dt_c = torch.empty(bsz, heads, nc, chunk, **f32)  # dt per chunk step (0 past L)
    acum = torch.empty(bsz, heads, nc, chunk, **f32)  # cumulative dt A inside each chunk
    states = torch.empty(bsz, nc, heads, hdim, dstate, **f32)
    final = torch.empty(bsz, heads, hdim, dstate, **f32)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    y = torch.empty_like(out) if keep_y and z is not None else None
    A = A.float().contiguous()
    precision = "ieee" if x.dtype == torch.float32 else "tf32"  # tf32: unused for 2-byte
    block_m, block_p, block_n = _blocks(chunk, hdim, dstate)
    dummy = A
    _dt_cumsum_kernel[(nc, bsz * heads)](
        dt, A, dt_bias if dt_bias is not None else dummy, dt_c, acum,
        length, heads, chunk, *dt.stride(),
        HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus),
        BLOCK_T=triton.next_power_of_2(chunk))
    bn_state = min(block_n, 64)
    grid = (triton.cdiv(hdim, block_p) * triton.cdiv(dstate, bn_state), nc, bsz * heads)
    _chunk_state_kernel[grid](
        x, B, dt_c, acum, states, length, heads, hdim, dstate, chunk, heads // groups,
        *x.stride(), *B.stride(),
        BLOCK_P=block_p, BLOCK_N=bn_state, BLOCK_K=block_m, PRECISION=precision)
    block = min(1024, triton.next_power_of_2(hdim * dstate))
    _state_passing_kernel[(triton.cdiv(hdim * dstate, block), bsz * heads)](
        states, acum, h0 if h0 is not None else final, final, heads, nc, chunk,
        hdim * dstate, HAS_H0=h0 is not None, BLOCK=block)
    zz = z if z is not None else x
    Dm = D if D is None or D.dim() == 2 else D[:, None].expand(heads, hdim)
    _chunk_scan_kernel[(triton.cdiv(chunk, block_m) * triton.cdiv(hdim, block_p), nc,
                        bsz * heads)](
        x, B, C, zz, Dm if Dm is not None else dummy, dt_c, acum, states, out, y,
        length, heads, hdim, dstate, chunk, heads // groups,
        *x.stride(), *B.stride(), *C.stride(), *zz.stride(), *out.stride(),
        *(Dm.stride() if Dm is not None else (0, 0)),
        HAS_D=D is not None, HAS_Z=z is not None, BLOCK_M=block_m, BLOCK_P=block_p,
        BLOCK_N=block_n, PRECISION=precision)
    return out, final, (dt_c, acum, states, y)


class SSDChunkScanFn(torch.autograd.Function):
    """The Triton forward and backward (`ssd_backward`); the forward saves the small
    per-chunk tensors the backward reuses, and y before the gate when z is given."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, z, dt_bias, h0, chunk, dt_softplus):
        out, final, saved = ssd_forward(x, dt, A, B, C, chunk, D, z, dt_bias, dt_softplus,
                                        h0, keep_y=any(ctx.needs_input_grad))
        ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, *saved)
        ctx.chunk, ctx.dt_softplus, ctx.has_h0 = chunk, dt_softplus, h0 is not None
        return out, final

    @staticmethod
    def backward(ctx, dout, dfinal):
        from .ssd_backward import ssd_backward  # here: its kernels use this module's _mma

        x, dt, A, B, C, D, z, dt_bias, dt_c, acum, states, y = ctx.saved_tensors
        grads = ssd_backward(dout, dfinal, x, dt, A, B, C, D, z, dt_bias, ctx.dt_softplus,
                             ctx.chunk, dt_c, acum, states, y)
        grads = grads[:-1] + (grads[-1] if ctx.has_h0 else None,)
        return (*(g if need else None for g, need in zip(grads, ctx.needs_input_grad)),
                None, None)


def ssd_chunk_scan(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None,
                   dt_softplus=False, initial_states=None, return_final_states=False):
    """y = SSD(x, dt, A, B, C) + D x, out = y * silu(z): mamba_chunk_scan_combined's call.

    x, z: (B, L, H, P); dt: (B, L, H), made softplus(dt + dt_bias) when dt_softplus;
    A: (H,) negative; B, C: (B, L, G, N) with G dividing H and N <= 256; D: (H,) or (H, P);
    dt_bias: (H,); initial_states: (B, H, P, N). Returns out (B, L, H, P) in x's dtype and,
    with return_final_states, the final state (B, H, P, N) float32. Differentiable in every
    input (Triton backward). Same numbers as `mambabook.ssd.ssd_chunked`."""
    bsz, _, heads, hdim, _, dstate = check_ssd_args(x, dt, A, B, C, D)
    check_positive_int("chunk_size", chunk_size)
    if z is not None:
        check_tensor("z", z, 4, shape=tuple(x.shape), dims="(B, L, H, P)")
    if dt_bias is not None:
        check_tensor("dt_bias", dt_bias, 1, shape=(heads,), dims="(H,)")
    if initial_states is not None:
        check_state("initial_states", initial_states, bsz, heads, hdim, dstate, x)
    check_same_device(x=x, z=z, dt_bias=dt_bias)
    check_kernel_inputs(x=x, dt=dt, B=B, C=C, z=z)
    if dstate > MAX_DSTATE:
        raise ValueError(f"B must have shape (B, L, G, N) with N <= {MAX_DSTATE} for this "
                         f"kernel, got N = {dstate}")
    h0 = initial_states.float().contiguous() if initial_states is not None else None
    out, final = SSDChunkScanFn.apply(x, dt, A, B.to(x.dtype), C.to(x.dtype), D, z,
                                      dt_bias, h0, chunk_size, dt_softplus)
    return (out, final) if return_final_states else out
