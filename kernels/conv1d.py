"""The Mamba block's causal depthwise convolution with its SiLU, as Triton kernels (chapter 8):
the forward and backward over a sequence (`causal_conv1d`) and one decoding step with the
window updated in place (`causal_conv1d_update`). Twins: mambabook.conv.causal_conv1d_ref
and causal_conv1d_update_ref.

out_t = SiLU(bias + sum_k w_k x_{t-K+1+k}). x is read at its strides (time stride 1), so
the (B, D, L) view of a (D, B*L) projection needs no copy; out takes x's layout. Both are
memory-bound: one read of x and one write of out (a step: the window, x and out).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..checks import check_conv1d_args, check_conv1d_update_args
from ..conv import conv_state_after
from .common import check_kernel_inputs

MAX_WIDTH = 8  # largest K the kernels unroll


@triton.jit
def _input_at(x_ptr, init_ptr, x_row, init_row, pos, mask_d, length, s_x_l, s_i_k,
              K: tl.constexpr):
    """x at positions pos (BLOCK_L,) for channel rows (BLOCK_D,) as float32 (BLOCK_D,
    BLOCK_L): x_row + pos for 0 <= pos < L, the initial inputs for -(K-1) <= pos < 0
    (zeros without them), zeros elsewhere."""
    inside = mask_d[:, None] & (pos >= 0)[None, :] & (pos < length)[None, :]
    v = tl.load(x_ptr + x_row[:, None] + pos[None, :] * s_x_l, mask=inside, other=0.0)
    v = v.to(tl.float32)
    if init_ptr is not None:
        before = mask_d[:, None] & (pos < 0)[None, :] & (pos >= 1 - K)[None, :]
        v += tl.load(init_ptr + init_row[:, None] + (pos + K - 1)[None, :] * s_i_k,
                     mask=before, other=0.0).to(tl.float32)
    return v


@triton.jit
def _causal_conv1d_fwd_kernel(
    # pointers
    x_ptr, w_ptr, bias_ptr, init_ptr, out_ptr,
    # dimensions
    dim, length,
    # strides
    s_x_b, s_x_d, s_x_l, s_w_d, s_w_k, s_i_b, s_i_d, s_i_k, s_o_b, s_o_d, s_o_l,
    # meta-parameters
    K: tl.constexpr, SILU: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
):
    pid_l = tl.program_id(0)  # block of time steps
    pid_d = tl.program_id(1)  # block of channels
    pid_b = tl.program_id(2).to(tl.int64)  # batch row
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # channels, (BLOCK_D,)
    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)  # time steps, (BLOCK_L,)
    mask_d = offs_d < dim
    x_row = pid_b * s_x_b + offs_d * s_x_d  # each channel's x, (BLOCK_D,)
    init_row = pid_b * s_i_b + offs_d * s_i_d
    acc = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
    for k in tl.static_range(K):  # tap k reads x_{t-K+1+k}
        w = tl.load(w_ptr + offs_d * s_w_d + k * s_w_k, mask=mask_d, other=0.0).to(tl.float32)
        xk = _input_at(x_ptr, init_ptr, x_row, init_row, offs_l - (K - 1) + k, mask_d, length,
                       s_x_l, s_i_k, K)
        acc += w[:, None] * xk
    if bias_ptr is not None:
        acc += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)[:, None]
    if SILU:
        acc = acc * tl.sigmoid(acc)
    o_ptrs = out_ptr + pid_b * s_o_b + offs_d[:, None] * s_o_d + offs_l[None, :] * s_o_l
    tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty),
             mask=mask_d[:, None] & (offs_l < length)[None, :])


@triton.jit
def _causal_conv1d_bwd_kernel(
    # pointers
    x_ptr, w_ptr, bias_ptr, init_ptr, dout_ptr, dx_ptr, dinit_ptr, dw_ptr, dbias_ptr,
    # dimensions
    dim, length, first, n_blk,
    # strides
    s_x_b, s_x_d, s_x_l, s_w_d, s_w_k, s_i_b, s_i_d, s_i_k, s_g_b, s_g_d, s_g_l,
    s_dx_b, s_dx_d, s_dx_l,
    # meta-parameters
    K: tl.constexpr, SILU: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
):
    # input positions p = first + ...: first = -(K-1) when the initial inputs want a gradient
    # (those positions are theirs), else 0. dx_p = sum_s w_{K-1-s} da_{p+s}, where
    # da_t = dout_t SiLU'(a_t) and a_t (the pre-activation) is recomputed from x.
    pid_l = tl.program_id(0)  # block of input positions
    pid_d = tl.program_id(1)  # block of channels
    pid_b = tl.program_id(2).to(tl.int64)  # batch row
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # channels, (BLOCK_D,)
    offs_p = first + pid_l * BLOCK_L + tl.arange(0, BLOCK_L)  # input positions, (BLOCK_L,)
    mask_d = offs_d < dim
    x_row = pid_b * s_x_b + offs_d * s_x_d
    init_row = pid_b * s_i_b + offs_d * s_i_d
    g_row = pid_b * s_g_b + offs_d * s_g_d
    ws = ()  # the K taps, (BLOCK_D,) each
    for k in tl.static_range(K):
        ws = ws + (tl.load(w_ptr + offs_d * s_w_d + k * s_w_k, mask=mask_d, other=0.0)
                   .to(tl.float32),)
    xs = ()  # inputs at p - (K-1) + j for j = 0 .. 2K-2, (BLOCK_D, BLOCK_L) each
    for j in tl.static_range(2 * K - 1):
        xs = xs + (_input_at(x_ptr, init_ptr, x_row, init_row, offs_p - (K - 1) + j, mask_d,
                             length, s_x_l, s_i_k, K),)
    if bias_ptr is not None:
        b = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)[:, None]
    dx = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
    da0 = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
    for s in tl.static_range(K):  # the output at t = p + s reads x_p through tap K-1-s
        t = offs_p + s
        da = tl.load(dout_ptr + g_row[:, None] + t[None, :] * s_g_l,
                     mask=mask_d[:, None] & ((t >= 0) & (t < length))[None, :],
                     other=0.0).to(tl.float32)
        if SILU:
            a = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
            for k in tl.static_range(K):
                a += ws[k][:, None] * xs[s + k]
            if bias_ptr is not None:
                a += b
            sig = tl.sigmoid(a)
            da = da * sig * (1.0 + a * (1.0 - sig))  # d SiLU(a) / da
        dx += ws[K - 1 - s][:, None] * da
        if s == 0:
            da0 = da  # da at p itself: 0 outside 0 <= p < L
    mask_p = offs_p < length
    dx_ptrs = dx_ptr + pid_b * s_dx_b + offs_d[:, None] * s_dx_d + offs_p[None, :] * s_dx_l
    tl.store(dx_ptrs, dx.to(dx_ptr.dtype.element_ty),
             mask=mask_d[:, None] & (mask_p & (offs_p >= 0))[None, :])
    if dinit_ptr is not None:  # (B, D, K-1) float32, contiguous
        di_ptrs = dinit_ptr + (pid_b * dim + offs_d[:, None]) * (K - 1) + (offs_p + K - 1)[None, :]
        tl.store(di_ptrs, dx, mask=mask_d[:, None] & (offs_p < 0)[None, :])
    # per-program partial sums of dw_k = sum_t da_t x_{t-K+1+k} and dbias = sum_t da_t:
    # (B, n_blk, D, K) and (B, n_blk, D) float32, summed by the host
    part = (pid_b * n_blk + pid_l) * dim + offs_d  # (BLOCK_D,)
    for k in tl.static_range(K):
        tl.store(dw_ptr + part * K + k, tl.sum(da0 * xs[k], axis=1), mask=mask_d)
    if dbias_ptr is not None:
        tl.store(dbias_ptr + part, tl.sum(da0, axis=1), mask=mask_d)


@triton.jit
def _causal_conv1d_update_kernel(
    # pointers
    x_ptr, state_ptr, w_ptr, bias_ptr, out_ptr,
    # dimensions
    dim,
    # strides
    s_x_b, s_x_d, s_s_b, s_s_d, s_s_k, s_w_d, s_w_k, s_o_b, s_o_d,
    # meta-parameters
    K: tl.constexpr, SILU: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_d = tl.program_id(0)  # block of channels
    pid_b = tl.program_id(1).to(tl.int64)  # batch row
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # channels, (BLOCK_D,)
    mask_d = offs_d < dim
    s_row = state_ptr + pid_b * s_s_b + offs_d * s_s_d  # each channel's window
    # the window: K-1 past inputs from the state and this step's x; every load before the
    # stores that shift it (each program owns its rows)
    win = ()
    for j in tl.static_range(K - 1):
        win = win + (tl.load(s_row + j * s_s_k, mask=mask_d, other=0.0),)
    x = tl.load(x_ptr + pid_b * s_x_b + offs_d * s_x_d, mask=mask_d, other=0.0)
    win = win + (x.to(state_ptr.dtype.element_ty),)  # as stored: the twin's window
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if bias_ptr is not None:
        acc += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    for k in tl.static_range(K):
        w = tl.load(w_ptr + offs_d * s_w_d + k * s_w_k, mask=mask_d, other=0.0).to(tl.float32)
        acc += w * win[k].to(tl.float32)
    if SILU:
        acc = acc * tl.sigmoid(acc)
    for j in tl.static_range(K - 1):  # shift: the oldest input out, x in
        tl.store(s_row + j * s_s_k, win[j + 1], mask=mask_d)
    tl.store(out_ptr + pid_b * s_o_b + offs_d * s_o_d, acc.to(out_ptr.dtype.element_ty),
             mask=mask_d)


# ----------------------------------------------------------------------------- host
FWD_BLOCK = dict(BLOCK_D=16, BLOCK_L=128, num_warps=4)  # 2048 outputs a program
BWD_BLOCK = dict(BLOCK_D=16, BLOCK_L=64, num_warps=4)  # 3K-1 tiles live: half the outputs


def _check_kernel_args(x, weight, bias, initial):
    """`check_conv1d_args` and what the kernels add: float dtypes, time stride 1, K up to
    MAX_WIDTH, a device the kernels run on. Returns (B, D, L, K)."""
    bsz, dim, length, width = check_conv1d_args(x, weight, bias, initial)
    check_kernel_inputs(x=x, weight=weight, bias=bias, initial=initial)
    if x.stride(-1) != 1 and length > 1:
        raise ValueError(f"x must have a contiguous last dimension (stride 1), got strides "
                         f"{tuple(x.stride())} for shape {tuple(x.shape)}")
    if width > MAX_WIDTH:
        raise ValueError(f"weight must have shape (D, K) with K <= {MAX_WIDTH} for this "
                         f"kernel, got K = {width}")
    return bsz, dim, length, width


def _strides3(t):
    return (t.stride(0), t.stride(1), t.stride(2)) if t is not None else (0, 0, 0)


def _conv1d_forward(x, weight, bias, initial, silu):
    bsz, dim, length = x.shape
    out = torch.empty_like(x)  # x's layout when x is dense (the projection's), else contiguous
    grid = (triton.cdiv(length, FWD_BLOCK["BLOCK_L"]), triton.cdiv(dim, FWD_BLOCK["BLOCK_D"]),
            bsz)
    _causal_conv1d_fwd_kernel[grid](
        x, weight, bias, initial, out, dim, length, *_strides3(x), weight.stride(0),
        weight.stride(1), *_strides3(initial), *_strides3(out), K=weight.shape[1],
        SILU=bool(silu), **FWD_BLOCK)
    return out


def _conv1d_backward(dout, x, weight, bias, initial, silu, want_dinit):
    bsz, dim, length = x.shape
    width = weight.shape[1]
    dout = dout if dout.stride(-1) == 1 else dout.contiguous()
    first = -(width - 1) if want_dinit else 0  # the first input position with a gradient
    n_blk = triton.cdiv(length - first, BWD_BLOCK["BLOCK_L"])
    f32 = dict(device=x.device, dtype=torch.float32)
    dx = torch.empty_like(x)
    dinit = torch.zeros(bsz, dim, width - 1, **f32) if want_dinit else None
    dw_part = torch.empty(bsz, n_blk, dim, width, **f32)
    dbias_part = torch.empty(bsz, n_blk, dim, **f32) if bias is not None else None
    grid = (n_blk, triton.cdiv(dim, BWD_BLOCK["BLOCK_D"]), bsz)
    _causal_conv1d_bwd_kernel[grid](
        x, weight, bias, initial, dout, dx, dinit, dw_part, dbias_part,
        dim, length, first, n_blk, *_strides3(x), weight.stride(0), weight.stride(1),
        *_strides3(initial), *_strides3(dout), *_strides3(dx), K=width, SILU=bool(silu),
        **BWD_BLOCK)
    dw = dw_part.sum((0, 1)).to(weight.dtype)
    dbias = dbias_part.sum((0, 1)).to(bias.dtype) if bias is not None else None
    return dx, dw, dbias, (dinit.to(initial.dtype) if want_dinit else None)


class CausalConv1dFn(torch.autograd.Function):
    """Forward saves its inputs only; backward recomputes the pre-activation."""

    @staticmethod
    def forward(ctx, x, weight, bias, initial, silu):
        ctx.save_for_backward(x, weight, bias, initial)
        ctx.silu = silu
        return _conv1d_forward(x, weight, bias, initial, silu)

    @staticmethod
    def backward(ctx, dout):
        x, weight, bias, initial = ctx.saved_tensors
        want_dinit = initial is not None and ctx.needs_input_grad[3]
        dx, dw, dbias, dinit = _conv1d_backward(dout, x, weight, bias, initial, ctx.silu,
                                                want_dinit)
        return dx, dw, dbias, dinit, None


def causal_conv1d(x, weight, bias=None, silu=True, initial=None, return_final_state=False):
    """out_t = SiLU(bias + sum_k weight[:, k] x_{t-K+1+k}): x (B, D, L) -> (B, D, L).

    x: float32/float16/bfloat16 with time stride 1 (any batch and channel strides);
    weight: (D, K) with K <= MAX_WIDTH; bias: (D,); initial: (B, D, K-1), the inputs before
    x (zeros when None). out has x's dtype and, when x is dense, its layout. With
    return_final_state also the last K-1 inputs (B, D, K-1). Differentiable in x, weight,
    bias and initial; same semantics as mambabook.conv.causal_conv1d_ref.
    """
    _check_kernel_args(x, weight, bias, initial)
    out = CausalConv1dFn.apply(x, weight, bias, initial, bool(silu))
    if not return_final_state:
        return out
    return out, conv_state_after(x, weight.shape[1], initial)


def causal_conv1d_update(x, conv_state, weight, bias=None, silu=True):
    """One decoding step: x (B, D) -> out (B, D) in x's dtype; conv_state (B, D, K-1) is
    shifted in place (its oldest input out, x in). weight: (D, K); bias: (D,). Every
    operand is read at its strides. No gradient (a decoding step). Same semantics as
    mambabook.conv.causal_conv1d_update_ref."""
    bsz, dim, width = check_conv1d_update_args(x, conv_state, weight, bias)
    check_kernel_inputs(x=x, conv_state=conv_state, weight=weight, bias=bias)
    if width > MAX_WIDTH:
        raise ValueError(f"weight must have shape (D, K) with K <= {MAX_WIDTH} for this "
                         f"kernel, got K = {width}")
    out = torch.empty_like(x)
    block_d = min(256, triton.next_power_of_2(dim))
    _causal_conv1d_update_kernel[(triton.cdiv(dim, block_d), bsz)](
        x, conv_state, weight, bias, out, dim, x.stride(0), x.stride(1), *_strides3(conv_state),
        weight.stride(0), weight.stride(1), out.stride(0), out.stride(1), K=width,
        SILU=bool(silu), BLOCK_D=block_d, num_warps=2 if block_d >= 128 else 1)
    return out
