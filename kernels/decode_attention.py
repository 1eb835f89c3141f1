"""Decoding attention over a preallocated KV cache, flash-decoding style (chapter 8).

out = softmax(q K[:n]^T / sqrt(P)) V[:n] for one query per (batch row, head), n the filled
length of the cache, read from a device tensor: a CUDA graph of the step replays while n
grows, and the keys past n are never read. The cache is split into parts that parallel
programs process with a running max and sum, then a small kernel combines them (Dao et
al., "Flash-Decoding for long-context inference", 2023). Inference only: no backward.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..attention import check_decode_attention_args
from .common import check_kernel_inputs

MAX_HEAD_DIM = 256  # largest P the kernel supports
TARGET_PROGRAMS = 1024  # split the cache until B x H x splits reaches this (~8 per SM)
MIN_SPLIT = 128  # ... but give every program at least this many keys


@triton.jit
def _decode_attention_split_kernel(
    # pointers
    q_ptr, k_ptr, v_ptr, len_ptr, out_ptr, part_ptr, lse_ptr,
    # dimensions
    heads, max_len, head_dim, split_len, n_splits,
    # strides
    s_q_b, s_q_h, s_q_p, s_k_b, s_k_h, s_k_t, s_k_p, s_v_b, s_v_h, s_v_t, s_v_p, s_len_b,
    s_o_b, s_o_h, s_o_p,
    # scalars
    scale_log2,
    # meta-parameters
    ONE_SPLIT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr,
):
    pid_bh = tl.program_id(0)  # (batch row, head)
    pid_s = tl.program_id(1)  # part of the cache: keys [pid_s * split_len, + split_len)
    b = (pid_bh // heads).to(tl.int64)
    h = (pid_bh % heads).to(tl.int64)
    n = tl.minimum(tl.load(len_ptr + b * s_len_b).to(tl.int32), max_len)  # filled length
    start = pid_s * split_len
    if start < n:  # a part past the filled length reads nothing and writes nothing
        end = tl.minimum(start + split_len, n)
        offs_p = tl.arange(0, BLOCK_P)  # head-dim indices, (BLOCK_P,)
        mask_p = offs_p < head_dim
        q = tl.load(q_ptr + b * s_q_b + h * s_q_h + offs_p * s_q_p, mask=mask_p, other=0.0)
        q = q.to(tl.float32) * scale_log2  # scores in log2 units: exp2 below
        k_row = k_ptr + b * s_k_b + h * s_k_h
        v_row = v_ptr + b * s_v_b + h * s_v_h
        m = tl.full((), float("-inf"), tl.float32)  # running max of the scores
        l = tl.full((), 0.0, tl.float32)  # running sum of exp2(score - m)
        acc = tl.zeros((BLOCK_P,), tl.float32)  # running sum of exp2(score - m) v
        for t0 in range(start, end, BLOCK_N):
            offs_t = t0 + tl.arange(0, BLOCK_N)  # key positions, (BLOCK_N,)
            mask_t = offs_t < end
            mask_tp = mask_t[:, None] & mask_p[None, :]
            k = tl.load(k_row + offs_t[:, None] * s_k_t + offs_p[None, :] * s_k_p,
                        mask=mask_tp, other=0.0).to(tl.float32)  # (BLOCK_N, BLOCK_P)
            v = tl.load(v_row + offs_t[:, None] * s_v_t + offs_p[None, :] * s_v_p,
                        mask=mask_tp, other=0.0).to(tl.float32)
            s = tl.where(mask_t, tl.sum(k * q[None, :], axis=1), float("-inf"))  # (BLOCK_N,)
            m_new = tl.maximum(m, tl.max(s, axis=0))
            alpha = tl.exp2(m - m_new)  # rescales what was summed under the old max
            p = tl.exp2(s - m_new)  # (BLOCK_N,)
            l = l * alpha + tl.sum(p, axis=0)
            acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
            m = m_new
        if ONE_SPLIT:  # the whole cache in one program: the answer itself
            tl.store(out_ptr + b * s_o_b + h * s_o_h + offs_p * s_o_p,
                     (acc / l).to(out_ptr.dtype.element_ty), mask=mask_p)
        else:  # this part's normalised output and log2-sum-exp, for the combine
            row = pid_bh * n_splits + pid_s
            tl.store(part_ptr + row * head_dim + offs_p, acc / l, mask=mask_p)
            tl.store(lse_ptr + row, m + tl.log2(l))


@triton.jit
def _decode_attention_combine_kernel(
    # pointers
    part_ptr, lse_ptr, len_ptr, out_ptr,
    # dimensions
    heads, max_len, head_dim, split_len, n_splits,
    # strides
    s_len_b, s_o_b, s_o_h, s_o_p,
    # meta-parameters
    BLOCK_S: tl.constexpr, BLOCK_P: tl.constexpr,
):
    pid_bh = tl.program_id(0)  # (batch row, head)
    b = (pid_bh // heads).to(tl.int64)
    h = (pid_bh % heads).to(tl.int64)
    n = tl.minimum(tl.load(len_ptr + b * s_len_b).to(tl.int32), max_len)
    offs_s = tl.arange(0, BLOCK_S)  # parts, (BLOCK_S,)
    mask_s = offs_s < tl.cdiv(n, split_len)  # the parts that held keys
    offs_p = tl.arange(0, BLOCK_P)  # head-dim indices, (BLOCK_P,)
    mask_p = offs_p < head_dim
    rows = pid_bh * n_splits + offs_s
    lse = tl.load(lse_ptr + rows, mask=mask_s, other=float("-inf"))  # (BLOCK_S,)
    w = tl.where(mask_s, tl.exp2(lse - tl.max(lse, axis=0)), 0.0)  # each part's weight
    part = tl.load(part_ptr + rows[:, None] * head_dim + offs_p[None, :],
                   mask=mask_s[:, None] & mask_p[None, :], other=0.0)  # (BLOCK_S, BLOCK_P)
    out = tl.sum(w[:, None] * part, axis=0) / tl.sum(w, axis=0)  # (BLOCK_P,)
    tl.store(out_ptr + b * s_o_b + h * s_o_h + offs_p * s_o_p,
             out.to(out_ptr.dtype.element_ty), mask=mask_p)


def split_rule(bsz: int, heads: int, max_len: int, block_n: int) -> tuple[int, int]:
    """(keys per part, parts): split each (row, head)'s cache until B H parts reaches
    TARGET_PROGRAMS, with at least MIN_SPLIT keys a part (a multiple of block_n). Host
    values only (max_len, not the filled length): the grid of a replayed graph is fixed."""
    want = max(1, min(triton.cdiv(TARGET_PROGRAMS, bsz * heads), triton.cdiv(max_len, MIN_SPLIT)))
    split_len = triton.cdiv(triton.cdiv(max_len, want), block_n) * block_n
    return split_len, triton.cdiv(max_len, split_len)


def decode_attention(q, k_cache, v_cache, length, scale: float | None = None):
    """softmax(q K[:n]^T * scale) V[:n], one query per (row, head), n = length (or
    length[b] for row b): only the filled part of the cache is read.

    q: (B, H, P); k_cache, v_cache: (B, H, max_len, P) float32, float16 or bfloat16 (one
    dtype); length: () or (B,) int64/int32 tensor on the same device, 1 <= n <= max_len
    (n past max_len reads max_len keys; the value is not checked: that would need a host
    sync). scale defaults to 1 / sqrt(P); the softmax runs in float32. Returns (B, H, P) in
    q's dtype, as `mambabook.attention.decode_attention_ref`. Capturable in a CUDA graph.
    """
    bsz, heads, max_len, dim = check_decode_attention_args(q, k_cache, v_cache, length)
    check_kernel_inputs(q=q)
    if dim > MAX_HEAD_DIM:
        raise ValueError(f"q must have shape (B, H, P) with P <= {MAX_HEAD_DIM} for this "
                         f"kernel, got P = {dim}")
    scale = dim ** -0.5 if scale is None else scale
    block_p = triton.next_power_of_2(dim)
    block_n = 64 if block_p <= 64 else 32  # a (BLOCK_N, BLOCK_P) tile of K and of V in registers
    split_len, n_splits = split_rule(bsz, heads, max_len, block_n)
    out = torch.empty_like(q)
    one = n_splits == 1
    part = q.new_empty((1,) if one else (bsz * heads, n_splits, dim), dtype=torch.float32)
    lse = q.new_empty((1,) if one else (bsz * heads, n_splits), dtype=torch.float32)
    s_len = length.stride(0) if length.dim() == 1 else 0
    _decode_attention_split_kernel[(bsz * heads, n_splits)](
        q, k_cache, v_cache, length, out, part, lse,
        heads, max_len, dim, split_len, n_splits,
        *q.stride(), *k_cache.stride(), *v_cache.stride(), s_len, *out.stride(),
        scale * 1.4426950408889634,
        ONE_SPLIT=one, BLOCK_N=block_n, BLOCK_P=block_p, num_warps=4,
    )
    if not one:
        _decode_attention_combine_kernel[(bsz * heads,)](
            part, lse, length, out, heads, max_len, dim, split_len, n_splits,
            s_len, *out.stride(),
            BLOCK_S=triton.next_power_of_2(n_splits), BLOCK_P=block_p, num_warps=2,
        )
    return out
