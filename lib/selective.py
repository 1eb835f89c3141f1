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
from .dispatch import check_path, kernels_or_twins


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
                       delta_softplus=False, return_last_state=False, initial_state=None):
    """h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t,  y_t = C_t h_t + D u_t,  out = y * silu(z).

    u, delta, z: (B, D, L); A: (D, N); B, C: (B, N, L), (B, G, N, L) or (D, N);
    D, delta_bias: (D,); initial_state: h_0 (B, D, N), the state entering the sequence
    (default zeros). Returns out (B, D, L) in u's dtype, and with return_last_state the
    state h_L: (B, D, N) in float32. Computed in float32 by a loop over L; differentiable
    in every input, initial_state and the last state included.
    """
    bsz, dim, length, dstate, _ = check_selective_scan_args(u, delta, A, B, C, D, z, delta_bias)
    if initial_state is not None:
        check_tensor("initial_state", initial_state, 3, shape=(bsz, dim, dstate), dims="(B, D, N)")
        check_same_device(u=u, initial_state=initial_state)
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
    h = u.new_zeros(bsz, dim, dstate) if initial_state is None else initial_state.float()
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
                               dt_softplus=False, A_is_log=False):
    """One decoding step of the selective SSM; `state` is updated in place.

    state: (B, D, N); x, dt, z: (B, D); A: (D, N); B, C: (B, N) or (B, G, N);
    D, dt_bias: (D,). h <- exp(dt A) h + dt B x;  out = C h + D x, times silu(z).
    With A_is_log, `A` is Mamba's A_log and A = -exp(A_log). Returns out: (B, D) in x's
    dtype. The twin of mambabook.kernels.selective_state_update.
    """
    _, dim, _ = check_state_update_args(state, x, dt, A, B, C, D, z, dt_bias)
    dt = dt.float() if dt_bias is None else dt.float() + dt_bias.float()
    if dt_softplus:
        dt = F.softplus(dt)
    Bf = B.float() if B.dim() == 2 else B.float().repeat_interleave(dim // B.shape[1], dim=1)
    Cf = C.float() if C.dim() == 2 else C.float().repeat_interleave(dim // C.shape[1], dim=1)
    if Bf.dim() == 2:
        Bf, Cf = Bf[:, None], Cf[:, None]  # (B, 1, N): shared by every channel
    A = -torch.exp(A.float()) if A_is_log else A.float()  # (D, N)
    dA = torch.exp(dt[..., None] * A)  # (B, D, N)
    new = dA * state.float() + dt[..., None] * Bf * x.float()[..., None]  # (B, D, N)
    state.copy_(new)
    out = (new * Cf).sum(-1)  # (B, D)
    if D is not None:
        out = out + x.float() * D.float()
    if z is not None:
        out = out * F.silu(z.float())
    return out.to(x.dtype)


# ----------------------------------------------------------------------------- the S6 layer
def scan_functions(x: torch.Tensor, path: str = "auto"):
    """(selective_scan, selective_state_update) for tensors like x, by `dispatch`'s rule.

    path "auto": mambabook.kernels on CUDA tensors (when Triton imports), the *_ref twins
    elsewhere; "kernel": the kernels on any device (on a CPU under TRITON_INTERPRET=1, for
    tests); "ref": the twins.
    """
    return kernels_or_twins(x, path, ("selective_scan", "selective_state_update"),
                            (selective_scan_ref, selective_state_update_ref))


def time_contiguous(t: torch.Tensor | None) -> torch.Tensor | None:
    """The kernels read time with stride 1: (..., L) views that are not get copied.

    A gate z split from a (B, L, 2D) projection and transposed has stride 2D along L.
    """
    return t if t is None or t.stride(-1) == 1 else t.contiguous()


def fold_batch(t: torch.Tensor) -> torch.Tensor:
    """(B, C, L) -> (C, B*L): rows that one matmul projects at once. A view when t is the
    (B, C, L) view of such rows (strides (L, B*L, 1), what `unfold_batch` gives), a copy
    otherwise."""
    return t.transpose(0, 1).reshape(t.shape[1], -1)


def unfold_batch(t: torch.Tensor, bsz: int) -> torch.Tensor:
    """(C, B*L) -> (B, C, L), a view with strides (L, B*L, 1): time stride 1 (what the
    kernels read) without a copy, as mamba_ssm's fast path lays out x, z and delta."""
    return t.view(t.shape[0], bsz, -1).transpose(0, 1)


def dt_bias_init(dim: int, dt_min: float = 1e-3, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4) -> torch.Tensor:
    """Mamba's delta bias: softplus(bias) ~ log-uniform in [dt_min, dt_max] -> (D,).

    bias = dt + log(1 - exp(-dt)) is the inverse of softplus at dt.
    """
    dt = torch.exp(torch.rand(dim) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=dt_init_floor)  # (D,)
    return dt + torch.log(-torch.expm1(-dt))


def dt_rank_rule(d_model: int) -> int:
    """Rank R of the delta projection: ceil(d_model / 16), as in mamba_ssm."""
    return math.ceil(d_model / 16)


class S6(nn.Module):
    """Selective SSM (Mamba's S6): delta, B and C are functions of the input.

    x: (B, D, L) -> y: (B, D, L).  delta_t = softplus(W_dt (W_x x_t)_dt + dt_bias),
    B_t, C_t = (W_x x_t)_B, (W_x x_t)_C, A = -exp(A_log) (S4D-Real init, A_n = -(n+1)),
    h_t = exp(delta_t A) h_{t-1} + delta_t B_t x_t,  y_t = C_t h_t + D x_t (Gu & Dao 2023,
    Alg. 2), times silu(z_t) when a gate z is given. Chapters 5 and 8.
    """

    def __init__(self, d_inner: int, d_state: int, dt_rank: int, dt_min: float = 1e-3,
                 dt_max: float = 0.1, dt_init_floor: float = 1e-4, path: str = "auto"):
        super().__init__()
        check_path(path)
        self.d_inner, self.d_state, self.dt_rank, self.path = d_inner, d_state, dt_rank, path
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)  # -> dt, B, C
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
        std = dt_rank ** -0.5
        with torch.no_grad():
            nn.init.uniform_(self.dt_proj.weight, -std, std)
            self.dt_proj.bias.copy_(dt_bias_init(d_inner, dt_min, dt_max, dt_init_floor))
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)  # (D, N)
        self.A_log = nn.Parameter(torch.log(A))  # A = -exp(A_log) = -(n+1)
        self.D = nn.Parameter(torch.ones(d_inner))  # skip: y += D x

    @property
    def A(self) -> torch.Tensor:
        return -torch.exp(self.A_log.float())  # (D, N)

    def projections(self, x: torch.Tensor):
        """x: (..., D) -> delta (..., D) before bias and softplus, B_t, C_t: (..., N)."""
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        return dt @ self.dt_proj.weight.T, B, C

    def ssm_params(self, x: torch.Tensor):
        """x: (B, D, L) -> delta (B, D, L) after bias and softplus, B_t, C_t: (B, N, L)."""
        delta, B, C = self.projections(x.transpose(1, 2))  # (B, L, D), (B, L, N) x 2
        delta = F.softplus(delta + self.dt_proj.bias)
        return delta.transpose(1, 2), B.transpose(1, 2), C.transpose(1, 2)

    def sequence_projections(self, x: torch.Tensor):
        """x: (B, D, L) -> delta (B, D, L) before bias and softplus, B_t, C_t: (B, N, L).

        Two matmuls over the (D, B*L) rows of x; each output is a view with time stride 1
        (`unfold_batch`): no copy when x is itself such a view (MambaBlock's layout)."""
        bsz = x.shape[0]
        dbl = self.x_proj.weight @ fold_batch(x)  # (R + 2N, B*L)
        dt, B, C = dbl.split([self.dt_rank, self.d_state, self.d_state], dim=0)
        delta = self.dt_proj.weight @ dt  # (D, B*L)
        return unfold_batch(delta, bsz), unfold_batch(B, bsz), unfold_batch(C, bsz)

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None,
                return_last_state: bool = False):
        """x, z: (B, D, L) -> y (B, D, L) [, the last state h_L (B, D, N) float32]; delta's
        bias and softplus are applied inside the scan."""
        check_tensor("x", x, 3, shape=(None, self.d_inner, None), dims="(B, D, L)")
        scan, _ = scan_functions(x, self.path)
        if scan is not selective_scan_ref:
            x, z = time_contiguous(x), time_contiguous(z)
        delta, B, C = self.sequence_projections(x)  # (B, D, L), (B, N, L) x 2
        return scan(x, delta, self.A, B, C, self.D.float(), z=z,
                    delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
                    return_last_state=return_last_state)

    def step(self, state: torch.Tensor, x: torch.Tensor, z: torch.Tensor | None = None):
        """One token: x, z (B, D) -> y (B, D); state (B, D, N) float32 is updated in place."""
        dt, B, C = self.projections(x)  # (B, D), (B, N), (B, N)
        _, update = scan_functions(x, self.path)
        # D and the bias as stored: the update reads any float dtype (no cast launches)
        return update(state, x, dt, self.A_log, B, C, self.D, z=z, dt_bias=self.dt_proj.bias,
                      dt_softplus=True, A_is_log=True)
