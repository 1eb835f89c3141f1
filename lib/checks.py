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
