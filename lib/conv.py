"""The causal depthwise convolution of the Mamba block (Gu & Dao, 2023, section 3.4), and
its decoding step: plain-PyTorch twins of `mambabook.kernels.causal_conv1d` and
`causal_conv1d_update` (chapter 8).

out_t = SiLU(bias + sum_k weight_k x_{t-K+1+k}) per channel, with x_t for t < 0 taken from
`initial` (the K-1 inputs before x; zeros when None).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .checks import check_conv1d_args, check_conv1d_update_args


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)  # float64 stays, halves go to float32


def conv_state_after(x, width: int, initial=None):
    """The last K-1 inputs after x (B, D, L): (B, D, K-1), the state a decoding step
    continues from. A view of x when L >= K-1 (no copy of x), else initial's tail (zeros
    when None) and x."""
    bsz, dim, length = x.shape
    if length >= width - 1:
        return x[..., length - (width - 1):]  # (B, D, K-1)
    if initial is None:
        initial = x.new_zeros(bsz, dim, width - 1)
    return torch.cat([initial[..., length:], x], dim=-1)  # (B, D, K-1)


def causal_conv1d_ref(x, weight, bias=None, silu=True, initial=None,
                      return_final_state=False):
    """out_t = SiLU(bias + sum_k weight[:, k] x_{t-K+1+k}): x (B, D, L) -> (B, D, L).

    weight: (D, K); bias: (D,); initial: (B, D, K-1), the inputs before x (zeros when
    None). Computed in float32 (float64 for float64 inputs), returned in x's dtype; with
    return_final_state also the last K-1 inputs (B, D, K-1), what `causal_conv1d_update`
    continues from. Differentiable in x, weight, bias and initial.
    """
    bsz, dim, _, width = check_conv1d_args(x, weight, bias, initial)
    ct = _compute_dtype(x)
    past = initial if initial is not None else x.new_zeros(bsz, dim, width - 1)
    padded = torch.cat([past, x], dim=-1).to(ct)  # (B, D, K-1 + L)
    out = F.conv1d(padded, weight.to(ct)[:, None], None if bias is None else bias.to(ct),
                   groups=dim)  # (B, D, L)
    out = (F.silu(out) if silu else out).to(x.dtype)
    if not return_final_state:
        return out
    return out, conv_state_after(x, width, initial)


def causal_conv1d_update_ref(x, conv_state, weight, bias=None, silu=True):
    """One decoding step: x (B, D) -> (B, D); conv_state (B, D, K-1) is shifted in place
    (its oldest input out, x in). The twin of mambabook.kernels.causal_conv1d_update."""
    check_conv1d_update_args(x, conv_state, weight, bias)
    ct = _compute_dtype(x)
    window = torch.cat([conv_state, x[..., None].to(conv_state.dtype)], dim=-1)  # (B, D, K)
    out = (window.to(ct) * weight.to(ct)).sum(-1)  # (B, D)
    if bias is not None:
        out = out + bias.to(ct)
    conv_state.copy_(window[..., 1:])
    return (F.silu(out) if silu else out).to(x.dtype)
