"""`selective_scan`: the selective scan (S6) as fused Triton kernels, forward and backward
(chapter 7), a drop-in for mamba_ssm's `selective_scan_fn`.

h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t,  y_t = C_t h_t + D u_t,  out = y * silu(z):
the semantics of `mambabook.selective.selective_scan_ref`. Which forward runs is a fixed
rule on the inputs (`forward_for`), never a timing; the backward recomputes the states
from checkpoints the forward saves every `ckpt_chunk` steps.
"""

from __future__ import annotations

import torch

from ..checks import check_same_device, check_selective_scan_args, check_tensor
from .common import INTERPRET, MAX_DSTATE, check_kernel_inputs, ckpt_chunk
from .scan_backward import scan_backward
from .scan_lanes import scan_forward_lanes
from .scan_loop import scan_forward_loop
from .scan_states import scan_forward_states

FORWARDS = {"loop": scan_forward_loop, "lanes": scan_forward_lanes,
            "states": scan_forward_states}
LANES_MAX_N = 32  # the lanes and states forwards unroll their states: up to this N


def forward_for(device_type: str, element_size: int, dstate: int,
                interpret: bool = INTERPRET) -> str:
    """The forward `selective_scan` runs, by a fixed rule measured on the H200 (B=8,
    D=1536, N=16, L=2K-64K; benchmarks/selective_scan_notes.md): on a GPU with N <= 32,
    "states" for 2-byte inputs (bfloat16, float16) and "lanes" for float32; "loop" for
    larger N and under Triton's interpreter (the CPU), where its plain loop runs quickest."""
    if interpret or device_type != "cuda" or dstate > LANES_MAX_N:
        return "loop"
    return "states" if element_size == 2 else "lanes"


def check_kernel_args(u, delta, A, B, C, D, z, delta_bias):
    """`check_selective_scan_args` and what the kernels add: float dtypes, a contiguous time
    axis, N <= MAX_DSTATE, a device the kernels run on. Returns (B, D, L, N, groups)."""
    bsz, dim, length, dstate, groups = check_selective_scan_args(u, delta, A, B, C, D, z,
                                                                 delta_bias)
    check_kernel_inputs(u=u, delta=delta, B=B, C=C, z=z)
    for name, t in (("u", u), ("delta", delta), ("B", B), ("C", C), ("z", z)):
        if t is not None and t.stride(-1) != 1 and t.shape[-1] > 1:
            raise ValueError(f"{name} must have a contiguous last dimension (stride 1), got "
                             f"strides {tuple(t.stride())} for shape {tuple(t.shape)}")
    if dstate > MAX_DSTATE:
        raise ValueError(f"A must have shape (D, N) with N <= {MAX_DSTATE} for this kernel, "
                         f"got N = {dstate}")
    return bsz, dim, length, dstate, groups


class SelectiveScanFn(torch.autograd.Function):
    """Forward saves only the inputs and per-chunk states; backward recomputes the rest.
    The last state is differentiable, and so is the initial state when one is given."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, h0, delta_softplus, forward):
        needs_grad = any(ctx.needs_input_grad[:9])
        chunk = ckpt_chunk(A.shape[1], u.element_size()) if needs_grad else None
        h0f = h0.float().contiguous() if h0 is not None else None
        out, last, ckpt = FORWARDS[forward](u, delta, A, B, C, D, z, delta_bias,
                                            delta_softplus, chunk, h0=h0f)
        if needs_grad:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ckpt)
            ctx.delta_softplus, ctx.chunk = delta_softplus, chunk
            ctx.h0_dtype = h0.dtype if h0 is not None else None
        return out, last

    @staticmethod
    def backward(ctx, dout, dlast):
        u, delta, A, B, C, D, z, delta_bias, ckpt = ctx.saved_tensors
        grads = scan_backward(dout, u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus,
                              ckpt, ctx.chunk, dlast=dlast,
                              want_dh0=ctx.h0_dtype is not None)
        if ctx.h0_dtype is None:
            return (*grads, None, None, None)
        return (*grads[:8], grads[8].to(ctx.h0_dtype), None, None)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, initial_state=None, forward=None):
    """h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t,  y_t = C_t h_t + D u_t,  out = y * silu(z).

    u, delta, z: (B, D, L) float32/float16/bfloat16 with contiguous last dimension; A: (D, N)
    with N <= 64; B, C: (B, N, L), (B, G, N, L) or (D, N); D, delta_bias: (D,). Returns out
    (B, D, L) in u's dtype, and with return_last_state the state h_L: (B, D, N) in float32.
    `initial_state` (B, D, N) is h_0's predecessor (zeros when None): a sequence can be
    scanned in pieces, each starting from the last state of the one before. Same semantics
    as mambabook.selective.selective_scan_ref; differentiable in every input, the initial
    state and through the last state. `forward` ("loop", "lanes" or "states") runs that
    forward instead of `forward_for`'s.
    """
    bsz, dim, _, dstate, _ = check_kernel_args(u, delta, A, B, C, D, z, delta_bias)
    if initial_state is not None:
        check_tensor("initial_state", initial_state, 3, shape=(bsz, dim, dstate),
                     dims="(B, D, N)")
        check_same_device(u=u, initial_state=initial_state)
    forward = forward or forward_for(u.device.type, u.element_size(), A.shape[1])
    if forward not in FORWARDS:
        raise ValueError(f"forward must be one of {sorted(FORWARDS)} or None, got {forward!r}")
    out, last = SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, initial_state,
                                      delta_softplus, forward)
    return (out, last) if return_last_state else out
