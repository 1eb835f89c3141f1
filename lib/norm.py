"""The residual add and RMSNorm between two blocks of a decoding step, fused: the twin of
`mambabook.kernels.add_rms_norm` (chapter 8).

r = x + y,  out = r / sqrt(mean(r^2) + eps) * weight: the new residual and the next block's
input (or the final norm's) from one read of x and y.
"""

from __future__ import annotations

import torch.nn.functional as F

from .checks import check_add_rms_norm_args


def add_rms_norm_ref(x, y, weight, eps: float = 1e-5):
    """x, y: (B, d), weight: (d,) -> (x + y, RMSNorm(x + y) * weight), both (B, d) in x's
    dtype: the residual stream after a block and the input of the next one."""
    check_add_rms_norm_args(x, y, weight)
    r = x + y
    return r, F.rms_norm(r, (r.shape[-1],), weight, eps)
