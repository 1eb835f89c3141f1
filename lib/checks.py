"""Input validation shared by every public function: one place for the error messages.

Validate once at the public boundary; inner functions trust their callers. Each check
raises TypeError (not a tensor, wrong dtype) or ValueError (wrong rank, shape, device)
and names the argument, the expected shape and the shape given.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(
    name: str,
    x,
    ndim: int | Sequence[int] | None = None,
    *,
    dtypes: Sequence[torch.dtype] | None = FLOAT_DTYPES,
    shape: Sequence[int | None] | None = None,
    dims: str | None = None,
) -> torch.Tensor:
    """Check that `x` is a tensor of the given rank, dtype family and (partial) shape.

    `shape` may hold None for "any size"; `dims` names the dimensions for the message,
    e.g. dims="(B, D, L)". Returns x unchanged.
    """
    expect = dims or (f"{ndim}-D" if ndim is not None else "a tensor")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {expect}, got {type(x).__name__}")
    ranks = (ndim,) if isinstance(ndim, int) else ndim
    if ranks is not None and x.dim() not in ranks:
        raise ValueError(f"{name} must have shape {expect}, got shape {tuple(x.shape)}")
    if dtypes is not None and x.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have a floating dtype ({names}), got {x.dtype}")
    if shape is not None:
        if len(shape) != x.dim() or any(s is not None and s != t for s, t in zip(shape, x.shape)):
            want = tuple("*" if s is None else s for s in shape)
            raise ValueError(
                f"{name} must have shape {expect} = {want}, got shape {tuple(x.shape)}"
            )
    return x


def check_same_device(**tensors: torch.Tensor | None) -> torch.device:
    """All given tensors (None skipped) on one device; returns it."""
    devices = {n: t.device for n, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all inputs must be on one device, got {listing}")
    return next(iter(devices.values()))


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def check_selective_scan_args(u, delta, A, B, C, D=None, z=None, delta_bias=None):
    """Validate selective-scan inputs; returns (batch, dim, L, N, groups or 0 if B is (D, N)).

    u, delta, z: (B, D, L); A: (D, N) real; B, C: (B, N, L), (B, G, N, L) with G dividing
    D, or (D, N); D, delta_bias: (D,).
    """
    check_tensor("u", u, 3, dims="(B, D, L)")
    bsz, dim, length = u.shape
    check_tensor("delta", delta, 3, shape=(bsz, dim, length), dims="(B, D, L)")
    check_tensor("A", A, 2, dtypes=(torch.float32, torch.float64, torch.float16, torch.bfloat16),
                 dims="(D, N)")
    if A.shape[0] != dim:
        raise ValueError(f"A must have shape (D, N) with D = {dim} (from u), got shape {tuple(A.shape)}")
    dstate = A.shape[1]
    groups = {}
    for name, t in (("B", B), ("C", C)):
        check_tensor(name, t, (2, 3, 4), dims="(B, N, L), (B, G, N, L) or (D, N)")
        if t.dim() == 2 and tuple(t.shape) != (dim, dstate):
            raise ValueError(f"{name} must have shape (D, N) = {(dim, dstate)}, got shape {tuple(t.shape)}")
        if t.dim() == 3 and tuple(t.shape) != (bsz, dstate, length):
            raise ValueError(f"{name} must have shape (B, N, L) = {(bsz, dstate, length)}, got shape {tuple(t.shape)}")
        if t.dim() == 4:
            g = t.shape[1]
            if (t.shape[0], t.shape[2], t.shape[3]) != (bsz, dstate, length) or g == 0 or dim % g:
                raise ValueError(
                    f"{name} must have shape (B, G, N, L) = ({bsz}, G, {dstate}, {length}) with G "
                    f"dividing D = {dim}, got shape {tuple(t.shape)}")
        groups[name] = t.shape[1] if t.dim() == 4 else (1 if t.dim() == 3 else 0)
    if (groups["B"] == 0) != (groups["C"] == 0):
        raise ValueError("B and C must both be time-varying ((B, N, L) / (B, G, N, L)) or both (D, N)")
    if D is not None:
        check_tensor("D", D, 1, shape=(dim,), dims="(D,)")
    if delta_bias is not None:
        check_tensor("delta_bias", delta_bias, 1, shape=(dim,), dims="(D,)")
    if z is not None:
        check_tensor("z", z, 3, shape=(bsz, dim, length), dims="(B, D, L)")
    check_same_device(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias)
    if length == 0:
        raise ValueError("u must have shape (B, D, L) with L >= 1, got L = 0")
    return bsz, dim, length, dstate, max(groups["B"], groups["C"])


def check_state_update_args(state, x, dt, A, B, C, D=None, z=None, dt_bias=None):
    """Validate one decoding step's inputs; returns (batch, dim, N).

    state: (B, D, N); x, dt, z: (B, D); A: (D, N); B, C: (B, N) or (B, G, N) with the same
    G dividing D; D, dt_bias: (D,).
    """
    check_tensor("state", state, 3, dims="(B, D, N)")
    bsz, dim, dstate = state.shape
    check_tensor("x", x, 2, shape=(bsz, dim), dims="(B, D)")
    check_tensor("dt", dt, 2, shape=(bsz, dim), dims="(B, D)")
    check_tensor("A", A, 2, shape=(dim, dstate), dims="(D, N)")
    for name, t in (("B", B), ("C", C)):
        check_tensor(name, t, (2, 3), dims="(B, N) or (B, G, N)")
        if t.shape[0] != bsz or t.shape[-1] != dstate or (t.dim() == 3 and dim % t.shape[1]):
            raise ValueError(f"{name} must have shape (B, N) = {(bsz, dstate)} or (B, G, N) with G "
                             f"dividing D = {dim}, got shape {tuple(t.shape)}")
    if B.dim() != C.dim() or (B.dim() == 3 and B.shape[1] != C.shape[1]):
        raise ValueError(f"B and C must have the same groups, got shapes {tuple(B.shape)} and "
                         f"{tuple(C.shape)}")
    if D is not None:
        check_tensor("D", D, 1, shape=(dim,), dims="(D,)")
    if z is not None:
        check_tensor("z", z, 2, shape=(bsz, dim), dims="(B, D)")
    if dt_bias is not None:
        check_tensor("dt_bias", dt_bias, 1, shape=(dim,), dims="(D,)")
    check_same_device(state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)
    return bsz, dim, dstate


def check_conv1d_args(x, weight, bias=None, initial=None):
    """Validate a causal depthwise convolution's inputs; returns (batch, dim, L, K).

    x: (B, D, L) with L >= 1; weight: (D, K); bias: (D,); initial: (B, D, K-1), the K-1
    inputs before x.
    """
    check_tensor("x", x, 3, dims="(B, D, L)")
    bsz, dim, length = x.shape
    if length == 0:
        raise ValueError("x must have shape (B, D, L) with L >= 1, got L = 0")
    check_tensor("weight", weight, 2, dims="(D, K)")
    if weight.shape[0] != dim or weight.shape[1] == 0:
        raise ValueError(f"weight must have shape (D, K) with D = {dim} (from x) and K >= 1, "
                         f"got shape {tuple(weight.shape)}")
    width = weight.shape[1]
    if bias is not None:
        check_tensor("bias", bias, 1, shape=(dim,), dims="(D,)")
    if initial is not None:
        check_tensor("initial", initial, 3, shape=(bsz, dim, width - 1), dims="(B, D, K-1)")
    check_same_device(x=x, weight=weight, bias=bias, initial=initial)
    return bsz, dim, length, width


def check_conv1d_update_args(x, conv_state, weight, bias=None):
    """Validate one decoding step of the causal conv; returns (batch, dim, K).

    x: (B, D), this step's input; conv_state: (B, D, K-1), the K-1 inputs before it;
    weight: (D, K); bias: (D,).
    """
    check_tensor("x", x, 2, dims="(B, D)")
    bsz, dim = x.shape
    check_tensor("weight", weight, 2, dims="(D, K)")
    if weight.shape[0] != dim or weight.shape[1] == 0:
        raise ValueError(f"weight must have shape (D, K) with D = {dim} (from x) and K >= 1, "
                         f"got shape {tuple(weight.shape)}")
    width = weight.shape[1]
    check_tensor("conv_state", conv_state, 3, shape=(bsz, dim, width - 1), dims="(B, D, K-1)")
    if bias is not None:
        check_tensor("bias", bias, 1, shape=(dim,), dims="(D,)")
    check_same_device(x=x, conv_state=conv_state, weight=weight, bias=bias)
    return bsz, dim, width


def check_add_rms_norm_args(x, y, weight):
    """Validate the residual add + RMSNorm's inputs; returns (rows, d).

    x (the residual), y (what is added to it): (B, d); weight: (d,).
    """
    check_tensor("x", x, 2, dims="(B, d)")
    check_tensor("y", y, 2, shape=tuple(x.shape), dims="(B, d)")
    check_tensor("weight", weight, 1, shape=(x.shape[1],), dims="(d,)")
    check_same_device(x=x, y=y, weight=weight)
    return tuple(x.shape)
