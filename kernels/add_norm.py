"""The residual add and RMSNorm between two blocks of a decoding step, as one Triton kernel
(chapter 8): r = x + y, out = r / sqrt(mean(r^2) + eps) * weight. Twin:
mambabook.norm.add_rms_norm_ref.

Unfused, the two are two launches and read the residual twice; here one program holds a
whole row (d <= MAX_D): x, y and weight read once, r and out written once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..checks import check_add_rms_norm_args
from .common import check_kernel_inputs

MAX_D = 16384  # widest row one program holds


@triton.jit
def _add_rms_norm_kernel(
    # pointers
    x_ptr, y_ptr, w_ptr, r_ptr, out_ptr,
    # dimensions
    d,
    # strides
    s_x_b, s_x_d, s_y_b, s_y_d, s_r_b, s_o_b,
    # meta-parameters
    EPS: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # one row of the batch
    offs = tl.arange(0, BLOCK)  # columns, (BLOCK,)
    mask = offs < d
    x = tl.load(x_ptr + row * s_x_b + offs * s_x_d, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + row * s_y_b + offs * s_y_d, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    # rounded to the stored dtype first, as the twin's x + y is: the norm reads that value
    r = (x + y).to(r_ptr.dtype.element_ty)
    tl.store(r_ptr + row * s_r_b + offs, r, mask=mask)
    rf = r.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(rf * rf, axis=0) / d + EPS)
    tl.store(out_ptr + row * s_o_b + offs, (rf * rstd * w).to(out_ptr.dtype.element_ty),
             mask=mask)


def add_rms_norm(x, y, weight, eps: float = 1e-5):
    """x, y: (B, d), weight: (d,) -> (x + y, RMSNorm(x + y) * weight), both (B, d)
    contiguous in x's dtype. Read at their strides; d <= MAX_D. No gradient (a decoding
    step). Same semantics as mambabook.norm.add_rms_norm_ref."""
    rows, d = check_add_rms_norm_args(x, y, weight)
    check_kernel_inputs(x=x, y=y, weight=weight)
    if d > MAX_D:
        raise ValueError(f"x must have shape (B, d) with d <= {MAX_D} for this kernel, got "
                         f"d = {d}")
    r = torch.empty(rows, d, device=x.device, dtype=x.dtype)
    out = torch.empty_like(r)
    block = triton.next_power_of_2(d)
    weight = weight.contiguous()  # read at unit stride
    _add_rms_norm_kernel[(rows,)](
        x, y, weight, r, out, d, x.stride(0), x.stride(1), y.stride(0), y.stride(1),
        r.stride(0), out.stride(0), EPS=float(eps), BLOCK=block,
        num_warps=max(1, min(8, block // 256)))
    return r, out
