"""Selection (S6): the selective scan and the layer that computes its inputs (chapter 5).

`selective_scan_ref` follows the conventions of mamba_ssm's `selective_scan_fn` (Gu & Dao,
2023, Algorithm 2), so results can be compared with it: ZOH for A (Ab = exp(delta A)) and
Euler for B (Bb u = delta B u). It is the plain-PyTorch twin of
`mambabook.kernels.selective_scan`: it materialises (L, B, D, N) tensors, on purpose.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .checks import (  # noqa: F401 (re-exported: the checks of this module's functions)
    check_same_device,
    check_selective_scan_args,
    check_state_update_args,
    check_tensor,
)


def _expand_groups(M: torch.Tensor, dim: int) -> torch.Tensor:
    """(B, N, L) or (B, G, N, L) -> (B, D, N, L); group g serves channels g*D/G ... ."""
    if M.dim() == 3:
        return M[:, None].expand(M.shape[0], dim, *M.shape[1:])
    return M.repeat_interleave(dim // M.shape[1], dim=1)


def step_sizes(delta, delta_bias=None, delta_softplus=False):
    """delta (B, D, L) -> float32 (B, D, L): plus delta_bias (D,), then softplus if asked."""
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    return F.softplus(delta) if delta_softplus else delta


def skip_and_gate(y, u, D=None, z=None):
    """The scan's epilogue on (B, D, L) float32 tensors: y + D u, then times silu(z)."""
    out = y if D is None else y + u * D.float()[:, None]
    return out if z is None else out * F.silu(z.float())


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                       delta_softplus=False, return_last_state=False):
    """h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t,  y_t = C_t h_t + D u_t,  out = y * silu(z).

    u, delta, z: (B, D, L); A: (D, N); B, C: (B, N, L), (B, G, N, L) or (D, N);
    D, delta_bias: (D,). Returns out (B, D, L) in u's dtype, and with return_last_state the
    state h_L: (B, D, N) in float32. Computed in float32 by a loop over L.
    """
    _, dim, length, _, _ = check_selective_scan_args(u, delta, A, B, C, D, z, delta_bias)
    dtype_in = u.dtype
    u, A = u.float(), A.float()
    delta = step_sizes(delta, delta_bias, delta_softplus)  # (B, D, L) float32
    # (L, B, D, N) layouts: the loop below reads one contiguous (B, D, N) slab per step
    deltaA = torch.exp(torch.einsum("bdl,dn->lbdn", delta, A)).contiguous()  # (L, B, D, N)
    if B.dim() == 2:
        deltaB_u = torch.einsum("bdl,dn,bdl->lbdn", delta, B.float(), u)  # (L, B, D, N)
    else:
        deltaB_u = torch.einsum("bdl,bdnl,bdl->lbdn", delta, _expand_groups(B.float(), dim), u)
    deltaB_u = deltaB_u.contiguous()
    bsz, dstate = u.shape[0], A.shape[1]
    if C.dim() == 2:
        Cf = C.float()  # (D, N)
    else:  # (B, L, G, 1, N): contiguous per step; channel d reads group d // (D / G)
        Cf = (C if C.dim() == 4 else C[:, None]).float().permute(0, 3, 1, 2).contiguous()[:, :, :, None]
    h = u.new_zeros(bsz, dim, dstate)  # (B, D, N)
    ys = []
    # unbind, not indexing: its backward stacks the L gradients once (indexing would
    # allocate and add a full (L, B, D, N) gradient at every step: O(L^2) in backward)
    dA_t, dBu_t = deltaA.unbind(0), deltaB_u.unbind(0)  # L x (B, D, N)
    C_t = Cf.unbind(1) if Cf.dim() > 2 else None  # L x (B, G, 1, N)
    for t in range(length):
        h = dA_t[t] * h + dBu_t[t]  # (B, D, N)
        if C_t is None:
            ys.append((h * Cf).sum(-1))  # (B, D)
        else:
            hg = h.view(bsz, Cf.shape[2], -1, dstate)  # (B, G, D/G, N)
            ys.append((hg * C_t[t]).sum(-1).reshape(bsz, dim))  # (B, D)
    out = skip_and_gate(torch.stack(ys, dim=2), u, D, z)  # (B, D, L)
    out = out.to(dtype_in)
    return (out, h) if return_last_state else out


def selective_state_update_ref(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                               dt_softplus=False):
    """One decoding step of the selective SSM; `state` is updated in place.

    state: (B, D, N); x, dt, z: (B, D); A: (D, N); B, C: (B, N) or (B, G, N);
    D, dt_bias: (D,). h <- exp(dt A) h + dt B x;  out = C h + D x, times silu(z).
    Returns out: (B, D) in x's dtype. The twin of mambabook.kernels.selective_state_update.
    """
    _, dim, _ = check_state_update_args(state, x, dt, A, B, C, D, z, dt_bias)
    dt = dt.float() if dt_bias is None else dt.float() + dt_bias.float()
    if dt_softplus:
        dt = F.softplus(dt)
    Bf = B.float() if B.dim() == 2 else B.float().repeat_interleave(dim // B.shape[1], dim=1)
    Cf = C.float() if C.dim() == 2 else C.float().repeat_interleave(dim // C.shape[1], dim=1)
    if Bf.dim() == 2:
        Bf, Cf = Bf[:, None], Cf[:, None]  # (B, 1, N): shared by every channel
    dA = torch.exp(dt[..., None] * A.float())  # (B, D, N)
    new = dA * state.float() + dt[..., None] * Bf * x.float()[..., None]  # (B, D, N)
    state.copy_(new)
    out = (new * Cf).sum(-1)  # (B, D)
    if D is not None:
        out = out + x.float() * D.float()
    if z is not None:
        out = out * F.silu(z.float())
    return out.to(x.dtype)


# ----------------------------------------------------------------------------- the S6 layer
def dt_bias_init(dim: int, dt_min: float = 1e-3, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4) -> torch.Tensor:
    """Mamba's delta bias: softplus(bias) ~ log-uniform in [dt_min, dt_max] -> (D,).

    bias = dt + log(1 - exp(-dt)) is the inverse of softplus at dt.
    """
    dt = torch.exp(torch.rand(dim) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=dt_init_floor)  # (D,)
    return dt + torch.log(-torch.expm1(-dt))


def _selective_scan_fn(x: torch.Tensor):
    """The Triton kernel on CUDA when it is importable, else the reference."""
    if x.is_cuda:
        try:
            from mambabook.kernels import selective_scan
            return selective_scan
        except (ImportError, AttributeError):
            pass
    return selective_scan_ref


class S6(nn.Module):
    """Selective SSM (Mamba's S6): delta, B and C are functions of the input.

    x: (B, D, L) -> y: (B, D, L).  delta_t = softplus(W_dt (W_x x_t)_dt + dt_bias),
    B_t, C_t = (W_x x_t)_B, (W_x x_t)_C, A = -exp(A_log) (S4D-Real init, A_n = -(n+1)),
    h_t = exp(delta_t A) h_{t-1} + delta_t B_t x_t,  y_t = C_t h_t + D x_t  (Gu & Dao 2023, Alg. 2).
    """

    def __init__(self, d_inner: int, d_state: int = 16, dt_rank: int | None = None,
                 dt_min: float = 1e-3, dt_max: float = 0.1, dt_scale: float = 1.0):
        super().__init__()
        self.d_inner, self.d_state = d_inner, d_state
        self.dt_rank = dt_rank or math.ceil(d_inner / 16)
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True)
        std = self.dt_rank ** -0.5 * dt_scale
        with torch.no_grad():
            nn.init.uniform_(self.dt_proj.weight, -std, std)
            self.dt_proj.bias.copy_(dt_bias_init(d_inner, dt_min, dt_max))
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)  # (D, N)
        self.A_log = nn.Parameter(torch.log(A))  # A = -exp(A_log) = -(n+1)
        self.D = nn.Parameter(torch.ones(d_inner))

    @property
    def A(self) -> torch.Tensor:
        return -torch.exp(self.A_log.float())  # (D, N)

    def ssm_params(self, x: torch.Tensor):
        """x: (B, D, L) -> delta (B, D, L) after softplus, B_t, C_t: (B, N, L)."""
        x_dbl = self.x_proj(x.transpose(1, 2))  # (B, L, R + 2N)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(dt)).transpose(1, 2)  # (B, D, L)
        return delta, B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous()

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None,
                return_last_state: bool = False):
        check_tensor("x", x, 3, shape=(None, self.d_inner, None), dims="(B, D, L)")
        x_dbl = self.x_proj(x.transpose(1, 2))  # (B, L, R + 2N)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = (dt @ self.dt_proj.weight.T).transpose(1, 2)  # (B, D, L), bias added in the scan
        B, C = B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous()  # (B, N, L)
        scan = _selective_scan_fn(x)
        if scan is not selective_scan_ref:  # the kernel reads time with stride 1: a gate z
            # split from a (B, L, 2D) projection and transposed has stride 2D there
            x, z = (t if t is None else t.contiguous() for t in (x, z))
        return scan(x, delta.contiguous(), self.A, B, C, self.D.float(), z=z,
                    delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
                    return_last_state=return_last_state)


def selection_price_suite(quick: bool, device) -> list:
    """Benchmark: what selection costs. An LTI layer (S4D: one kernel, FFT convolution) vs the
    selective scan (delta, B, C per token: no kernel, a scan over L), D = 64, N = 16.

    Register as a suite with `bench.suite("selection_price")(selection_price_suite)`.
    """
    from . import bench
    from .ssm import S4D

    D, N = 64, 16
    Ls = [64, 128, 256, 512] if quick else [256, 1024, 4096, 16384]
    lti = S4D(D, N).to(device)
    providers = {}

    def s4d_fft(L):
        u = torch.randn(1, D, L, device=device)
        return torch.no_grad()(lambda: lti(u))

    def scan(fn):
        def make(L):
            g = torch.Generator(device=device).manual_seed(0)
            u, delta = (torch.randn(1, D, L, device=device, generator=g) for _ in range(2))
            B, C = (torch.randn(1, N, L, device=device, generator=g) for _ in range(2))
            A = -torch.rand(D, N, device=device, generator=g)
            return lambda: fn(u, delta, A, B, C, delta_softplus=True)
        return make

    providers["S4D (FFT conv)"] = s4d_fft
    providers["selective_scan_ref"] = scan(selective_scan_ref)
    if torch.device(device).type == "cuda":
        try:
            from mambabook.kernels import selective_scan
            providers["selective_scan (triton)"] = scan(selective_scan)
        except (ImportError, AttributeError):
            pass
    return bench.sweep("selection_price", providers, [{"L": L} for L in Ls], device=device,
                       min_run_time=0.05 if quick else 0.2)
