"""Linear state space models: discretization, HiPPO, and the recurrent and convolution views.

h'(t) = A h(t) + B u(t), y(t) = C h(t) becomes h_k = Ab h_{k-1} + Bb u_k, y_k = C h_k
(Euler, bilinear or zero-order hold; S4 paper eq. (3)-(5), with its state x named h and
its input u, as in every signature of this library). Unrolled, y = K * u with the
kernel K_k = C Ab^k Bb (eq. (4)-(5)). Used in chapters 04 (S4) and 05 (selection).
"""

from __future__ import annotations

import math

import torch

from .checks import check_positive_int, check_tensor

METHODS = ("euler", "bilinear", "zoh")
_ANY = (torch.float32, torch.float64, torch.complex64, torch.complex128)


# ----------------------------------------------------------------------------- validation
def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def _check_delta(delta) -> None:
    d = torch.as_tensor(delta)
    if not torch.is_floating_point(d) and not isinstance(delta, (int, float)):
        raise TypeError(f"delta must be a positive float or tensor, got {type(delta).__name__}")
    if (d <= 0).any():
        raise ValueError(f"delta must be > 0, got {delta}")


def is_stable(A: torch.Tensor) -> bool:
    """h' = Ah decays (or stays bounded at 0) iff every eigenvalue of A has real part <= 0.

    A: (N, N) dense, or (D, N) holding the diagonals of D diagonal matrices. A property of
    the system to show; discretize accepts unstable A as well.
    """
    if A.dim() == 2 and A.shape[0] == A.shape[1]:
        eig = torch.linalg.eigvals(A.cdouble() if A.is_complex() else A.double())  # (N,)
        return bool(eig.real.max() <= 0)
    return bool(A.real.max() <= 0)


def _check_square_and_input(A, B, a_name: str, b_name: str) -> tuple[int, int]:
    """A: (N, N) and B: (N, M) under the given names; returns (N, M)."""
    check_tensor(a_name, A, 2, dtypes=_ANY, dims="(N, N)")
    n = A.shape[0]
    if A.shape[1] != n:
        raise ValueError(f"{a_name} must have shape (N, N), got shape {tuple(A.shape)}")
    check_tensor(b_name, B, 2, dtypes=_ANY, shape=(n, None), dims="(N, M)")
    return n, B.shape[1]


def _check_dense(A, B) -> tuple[int, int]:
    return _check_square_and_input(A, B, "A", "B")


# ----------------------------------------------------------------------------- dense A
def discretize_euler(A, B, delta):
    """Forward Euler: Ab = I + delta A, Bb = delta B.   A: (N, N), B: (N, M)."""
    eye = torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
    return eye + delta * A, delta * B


def discretize_bilinear(A, B, delta):
    """Bilinear (Tustin): Ab = (I - delta/2 A)^-1 (I + delta/2 A), Bb = (I - delta/2 A)^-1 delta B.

    Undefined when I - delta/2 A is singular (A has the eigenvalue 2 / delta): ValueError.
    """
    eye = torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
    left = eye - delta / 2 * A  # (N, N)
    if torch.linalg.matrix_rank(left.double() if not left.is_complex() else left) < A.shape[0]:
        raise ValueError(f"A must not have the eigenvalue 2 / delta = {2 / delta:.4g} for the "
                         "bilinear method: I - delta/2 A is singular")
    Ab = torch.linalg.solve(left, eye + delta / 2 * A)  # (N, N)
    Bb = torch.linalg.solve(left, delta * B)  # (N, M)
    return Ab, Bb


def discretize_zoh(A, B, delta):
    """Zero-order hold: Ab = exp(delta A), Bb = A^-1 (exp(delta A) - I) B (exact for held u).

    Computed as one matrix exponential, exp(delta [[A, B], [0, 0]]) = [[Ab, Bb], [0, I]],
    which also holds when A is singular.
    """
    n, m = B.shape
    block = torch.zeros(n + m, n + m, dtype=A.dtype, device=A.device)  # (N+M, N+M)
    block[:n, :n], block[:n, n:] = A, B
    E = torch.linalg.matrix_exp(delta * block)  # (N+M, N+M)
    return E[:n, :n], E[:n, n:]


def discretize(A, B, delta, method: str = "zoh"):
    """h_k = Ab h_{k-1} + Bb u_k from h' = Ah + Bu with step delta.

    A: (N, N) (any: stable or not, singular or not), B: (N, M), delta > 0, method in
    {"euler", "bilinear", "zoh"} -> Ab: (N, N), Bb: (N, M). As scipy's cont2discrete, the
    only refusal is what cannot be computed: bilinear with I - delta/2 A singular.
    """
    _check_method(method)
    _check_dense(A, B)
    _check_delta(delta)
    return {"euler": discretize_euler, "bilinear": discretize_bilinear,
            "zoh": discretize_zoh}[method](A, B, delta)


# ----------------------------------------------------------------------------- diagonal A
def discretize_diag(A, B, delta, method: str = "zoh"):
    """The same three rules with A diagonal, one SSM per channel (S4D, Mamba).

    A: (D, N) real or complex (its diagonal per channel), B: (D, N), delta: (D,) or a float
    -> Ab, Bb: (D, N). zoh: Ab = exp(delta A), Bb = (Ab - 1) / A * B;
    bilinear: Ab = (1 + delta A/2) / (1 - delta A/2), Bb = delta B / (1 - delta A/2);
    euler: Ab = 1 + delta A, Bb = delta B.
    """
    _check_method(method)
    check_tensor("A", A, 2, dtypes=_ANY, dims="(D, N)")
    check_tensor("B", B, 2, dtypes=_ANY, shape=tuple(A.shape), dims="(D, N)")
    delta = torch.as_tensor(delta, dtype=A.real.dtype, device=A.device)
    if delta.dim() == 1:
        check_tensor("delta", delta, 1, shape=(A.shape[0],), dims="(D,)")
        delta = delta[:, None]  # (D, 1)
    elif delta.dim() != 0:
        raise ValueError(f"delta must be a float or have shape (D,) = ({A.shape[0]},), "
                         f"got shape {tuple(delta.shape)}")
    _check_delta(delta)
    dA = delta * A  # (D, N)
    if method == "euler":
        return 1 + dA, delta * B
    if method == "bilinear":
        if (1 - dA / 2 == 0).any():
            raise ValueError("A must have no entry equal to 2 / delta for the bilinear method: "
                             "1 - delta A / 2 = 0")
        return (1 + dA / 2) / (1 - dA / 2), delta * B / (1 - dA / 2)
    Ab = torch.exp(dA)  # (D, N)
    safe = torch.where(A == 0, torch.ones_like(A), A)
    Bb = torch.where(A == 0, delta * B, (Ab - 1) / safe * B)  # A -> 0 limit: delta B
    return Ab, Bb


# ----------------------------------------------------------------------------- HiPPO, S4D
def hippo_legs(N: int, dtype=torch.float64):
    """HiPPO-LegS: A_nk = -sqrt(2n+1) sqrt(2k+1) (n > k), -(n+1) (n = k), 0 (n < k); B_n = sqrt(2n+1).

    -> A: (N, N), B: (N, 1). h' = Ah + Bu keeps h the Legendre coefficients of u's history
    (Gu et al. 2020, eq. (2) with 1/t dropped as in S4).
    """
    check_positive_int("N", N)
    q = torch.sqrt(2 * torch.arange(N, dtype=dtype) + 1)  # (N,)
    A = -torch.tril(q[:, None] * q[None, :], diagonal=-1) - torch.diag(torch.arange(N, dtype=dtype) + 1)
    return A + 0.0, q[:, None].clone()  # + 0.0: no negative zeros above the diagonal


def hippo_legs_low_rank(N: int, dtype=torch.float64):
    """P with A + P P^T = -I/2 + S, S skew-symmetric (S4's normal-plus-low-rank): P_n = sqrt(n + 1/2)."""
    check_positive_int("N", N)
    return torch.sqrt(torch.arange(N, dtype=dtype) + 0.5)[:, None]  # (N, 1)


def s4d_real_init(D: int, N: int, dtype=torch.float32):
    """S4D-Real: A_n = -(n + 1), the diagonal of HiPPO-LegS, for every channel -> (D, N)."""
    check_positive_int("D", D), check_positive_int("N", N)
    return -(torch.arange(N, dtype=dtype) + 1).expand(D, N).clone()


def s4d_lin_init(D: int, N: int, dtype=torch.complex64):
    """S4D-Lin: A_n = -1/2 + i pi n for every channel -> (D, N) complex."""
    check_positive_int("D", D), check_positive_int("N", N)
    n = torch.arange(N, dtype=torch.float64)
    return torch.complex(-0.5 * torch.ones_like(n), math.pi * n).to(dtype).expand(D, N).clone()


def hippo_legs_encode(f: torch.Tensor, N: int) -> torch.Tensor:
    """Online Legendre coefficients of f[0..t] for every t (HiPPO-LegS, scaled measure).

    c' = (A c + B f) / t, discretized by the bilinear rule with step 1/(k+1) at step k:
    f: (L,) -> c: (L, N); c[t] summarises the whole history f[0..t] with N numbers.
    """
    check_tensor("f", f, 1, dims="(L,)")
    A, B = hippo_legs(N)
    eye = torch.eye(N, dtype=A.dtype)
    c = torch.zeros(N, dtype=A.dtype)
    out = []
    for k, fk in enumerate(f.double()):
        step = 1.0 / (k + 1)
        left = eye - step / 2 * A
        c = torch.linalg.solve(left, (eye + step / 2 * A) @ c + step * B[:, 0] * fk)  # (N,)
        out.append(c)
    return torch.stack(out)  # (L, N)


def legendre_basis(N: int, s: torch.Tensor) -> torch.Tensor:
    """sqrt(2n+1) P_n(s) for s in [-1, 1]: s (S,) -> (S, N), by the three-term recurrence."""
    s = s.double()
    P = [torch.ones_like(s), s]
    for n in range(1, N - 1):
        P.append(((2 * n + 1) * s * P[n] - n * P[n - 1]) / (n + 1))
    scale = torch.sqrt(2 * torch.arange(N, dtype=torch.float64) + 1)
    return torch.stack(P[:N], dim=1) * scale  # (S, N)


def hippo_legs_reconstruct(c: torch.Tensor, num: int) -> torch.Tensor:
    """The history f(s), s in [0, t], rebuilt from the N coefficients c (N,) -> (num,) samples.

    f(s) ~ sum_n c_n sqrt(2n+1) P_n(2 s/t - 1), sampled at num evenly spaced s.
    """
    check_tensor("c", c, 1, dims="(N,)")
    s = torch.linspace(-1, 1, num, dtype=torch.float64)
    return legendre_basis(c.shape[0], s) @ c.double()  # (num,)


# ----------------------------------------------------------------------------- the two views
def ssm_kernel(Ab, Bb, C, L: int):
    """Convolution kernel K_k = C Ab^k Bb, k = 0 .. L-1.

    Ab: (N, N), Bb: (N, M), C: (P, N) -> K: (P, M, L).
    """
    n, _ = _check_square_and_input(Ab, Bb, "Ab", "Bb")
    check_tensor("C", C, 2, dtypes=_ANY, shape=(None, n), dims="(P, N)")
    check_positive_int("L", L)
    ks, h = [], Bb  # (N, M): Ab^k Bb
    for _ in range(L):
        ks.append(C @ h)  # (P, M)
        h = Ab @ h
    return torch.stack(ks, dim=-1)  # (P, M, L)


def ssm_kernel_diag(Ab, Bb, C, L: int):
    """Diagonal kernel K[d, k] = sum_n C[d,n] Bb[d,n] Ab[d,n]^k (a Vandermonde product).

    Ab, Bb, C: (D, N) -> K: (D, L), real (the real part when A is complex, as in S4D).
    """
    check_tensor("Ab", Ab, 2, dtypes=_ANY, dims="(D, N)")
    for name, t in (("Bb", Bb), ("C", C)):
        check_tensor(name, t, 2, dtypes=_ANY, shape=tuple(Ab.shape), dims="(D, N)")
    check_positive_int("L", L)
    powers = Ab[:, :, None] ** torch.arange(L, device=Ab.device)  # (D, N, L)
    K = torch.einsum("dn,dnl->dl", C * Bb, powers)  # (D, L)
    return K.real if K.is_complex() else K


def ssm_recurrent(Ab, Bb, C, u):
    """The recurrent view: h_k = Ab h_{k-1} + Bb u_k, y_k = C h_k, h_{-1} = 0.

    Ab: (N, N), Bb: (N, M), C: (P, N), u: (B, M, L) -> y: (B, P, L).
    """
    n, m = _check_square_and_input(Ab, Bb, "Ab", "Bb")
    check_tensor("C", C, 2, dtypes=_ANY, shape=(None, n), dims="(P, N)")
    check_tensor("u", u, 3, shape=(None, m, None), dims="(B, M, L)")
    h = u.new_zeros(u.shape[0], n, dtype=torch.result_type(Ab, u))  # (B, N)
    ys = []
    for k in range(u.shape[2]):
        h = h @ Ab.T + u[:, :, k] @ Bb.T  # (B, N)
        ys.append(h @ C.T)  # (B, P)
    return torch.stack(ys, dim=-1)  # (B, P, L)


def ssm_recurrent_diag(Ab, Bb, C, u):
    """Recurrent view, diagonal: h_k = Ab * h_{k-1} + Bb u_k, y_k = Re sum_n C h_k.

    Ab, Bb, C: (D, N), u: (B, D, L) -> y: (B, D, L).
    """
    check_tensor("Ab", Ab, 2, dtypes=_ANY, dims="(D, N)")
    check_tensor("u", u, 3, shape=(None, Ab.shape[0], None), dims="(B, D, L)")
    h = torch.zeros(u.shape[0], *Ab.shape, dtype=torch.result_type(Ab, u), device=u.device)
    ys = []
    for k in range(u.shape[2]):
        h = Ab * h + Bb * u[:, :, k, None]  # (B, D, N)
        ys.append((h * C).sum(-1))  # (B, D)
    y = torch.stack(ys, dim=-1)  # (B, D, L)
    return y.real if y.is_complex() else y


def ssm_convolution(K, u):
    """The convolution view y = K * u (causal), by FFT in O(L log L).

    K: (P, M, L) with u: (B, M, L) -> y: (B, P, L); or K: (D, L) depthwise with u: (B, D, L).
    Kernel and input are zero-padded to 2L so the circular FFT convolution is a linear one.
    """
    check_tensor("K", K, (2, 3), dims="(P, M, L) or (D, L)")
    check_tensor("u", u, 3, dims="(B, M, L)")
    L = u.shape[-1]
    channels = K.shape[1] if K.dim() == 3 else K.shape[0]
    if K.shape[-1] != L or u.shape[1] != channels:
        raise ValueError(f"K must have shape (P, M, L) or (D, L) matching u {tuple(u.shape)} "
                         f"(M or D = {u.shape[1]}, L = {L}), got shape {tuple(K.shape)}")
    Kf = torch.fft.rfft(K, n=2 * L)  # (..., L+1)
    uf = torch.fft.rfft(u, n=2 * L)  # (B, M, L+1)
    yf = torch.einsum("pmf,bmf->bpf", Kf, uf) if K.dim() == 3 else Kf * uf
    return torch.fft.irfft(yf, n=2 * L)[..., :L]  # (B, P, L)


def causal_conv_direct(K, u):
    """y_k = sum_{j <= k} K_j u_{k-j} as an O(L^2) sum, for checking: K (D, L), u (B, D, L)."""
    L = u.shape[-1]
    y = torch.zeros_like(u)
    for k in range(L):
        y[..., k] = (K[:, : k + 1].flip(-1) * u[..., : k + 1]).sum(-1)
    return y


# ----------------------------------------------------------------------------- exact solution
def step_response_exact(A, B, C, t):
    """y(t) for u = 1 (t >= 0), x(0) = 0: C A^-1 (exp(tA) - I) B.  t: (T,) -> (T, P, M)."""
    _check_dense(A, B)
    return torch.stack([C @ discretize_zoh(A, B, float(s))[1] for s in t])


def impulse_response_exact(A, B, C, t):
    """y(t) for u = Dirac delta at 0: C exp(tA) B.  t: (T,) -> (T, P, M)."""
    _check_dense(A, B)
    return torch.stack([C @ torch.linalg.matrix_exp(float(s) * A) @ B for s in t])


def step_response_error(A, B, C, delta: float, method: str, T: float) -> float:
    """max_k |y_k - y(k delta)| of the discretized step response over [0, T]."""
    Ab, Bb = discretize(A, B, delta, method)
    L = max(1, int(round(T / delta)))
    u = torch.ones(1, B.shape[1], L, dtype=A.dtype)
    y = ssm_recurrent(Ab, Bb, C, u)[0]  # (P, L): y_k at time (k+1) delta
    t = torch.arange(1, L + 1, dtype=A.dtype) * delta
    exact = step_response_exact(A, B, C, t)[:, :, 0].T  # (P, L)
    return (y - exact).abs().max().item()


def damped_oscillator(omega: float = 2 * math.pi, zeta: float = 0.15, dtype=torch.float64):
    """A small stable system for pictures: x'' + 2 zeta omega x' + omega^2 x = u.

    -> A: (2, 2), B: (2, 1), C: (1, 2) with state (position, velocity), output the position.
    """
    A = torch.tensor([[0.0, 1.0], [-omega ** 2, -2 * zeta * omega]], dtype=dtype)
    B = torch.tensor([[0.0], [1.0]], dtype=dtype)
    C = torch.tensor([[omega ** 2, 0.0]], dtype=dtype)  # unit DC gain
    return A, B, C


# ----------------------------------------------------------------------------- S4D layer
class S4D(torch.nn.Module):
    """A time-invariant diagonal SSM layer (S4D, Gu et al. 2022) computed as a convolution.

    u: (B, D, L) -> y: (B, D, L). Per channel: A = -exp(A_log) (S4D-Real init), a learned step
    delta = exp(log_delta) (one per channel, not per token), ZOH, K = ssm_kernel_diag, y = K * u + D u.
    """

    def __init__(self, d_inner: int, d_state: int = 16, dt_min: float = 1e-3, dt_max: float = 0.1):
        super().__init__()
        self.d_inner, self.d_state = d_inner, d_state
        log_delta = torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_delta = torch.nn.Parameter(log_delta)  # (D,)
        self.A_log = torch.nn.Parameter(torch.log(-s4d_real_init(d_inner, d_state)))  # (D, N)
        self.B = torch.nn.Parameter(torch.ones(d_inner, d_state))  # (D, N)
        self.C = torch.nn.Parameter(torch.randn(d_inner, d_state) * d_state ** -0.5)  # (D, N)
        self.D = torch.nn.Parameter(torch.ones(d_inner))  # (D,)

    def kernel(self, L: int) -> torch.Tensor:
        """K[d, k] = sum_n C Bb exp(k delta A): (D, L)."""
        A = -torch.exp(self.A_log)  # (D, N)
        dA = torch.exp(self.log_delta)[:, None] * A  # (D, N)
        Bb = torch.expm1(dA) / A * self.B  # (D, N)  ZOH
        powers = torch.exp(dA[:, :, None] * torch.arange(L, device=A.device))  # (D, N, L)
        return torch.einsum("dn,dnl->dl", self.C * Bb, powers)  # (D, L)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        check_tensor("u", u, 3, shape=(None, self.d_inner, None), dims="(B, D, L)")
        return ssm_convolution(self.kernel(u.shape[-1]), u) + self.D[:, None] * u


# ----------------------------------------------------------------------------- chapter views
def compare_discretizations(A, B, C, delta: float, T: float = 3.0) -> dict:
    """Everything the chapter-04 delta widget draws, for one delta.

    -> {"t": (L,) sample times, "impulse"/"step": {method: (L,)} discrete responses
    (impulse scaled by 1/delta), "impulse_exact"/"step_exact": (L,) the continuous ones at the
    same times, "t_fine", "impulse_fine", "step_fine": (300,) the continuous ones, "eig": {method: (N,) complex eigenvalues of Ab}, "error": {method: max error of
    the step response}}. SISO: B (N, 1), C (1, N).
    """
    _check_dense(A, B)
    L = max(2, int(round(T / delta)))
    t = torch.arange(1, L + 1, dtype=A.dtype) * delta  # y_k sits at time (k+1) delta
    out = {"t": t, "impulse": {}, "step": {}, "eig": {}, "error": {}}
    out["step_exact"] = step_response_exact(A, B, C, t)[:, 0, 0]
    out["impulse_exact"] = impulse_response_exact(A, B, C, t - delta)[:, 0, 0]
    out["t_fine"] = torch.linspace(0, float(t[-1]), 300, dtype=A.dtype)  # for drawing y(t)
    out["impulse_fine"] = impulse_response_exact(A, B, C, out["t_fine"])[:, 0, 0]
    out["step_fine"] = step_response_exact(A, B, C, out["t_fine"])[:, 0, 0]
    for m in METHODS:
        Ab, Bb = discretize(A, B, delta, m)
        out["impulse"][m] = ssm_kernel(Ab, Bb, C, L)[0, 0] / delta  # (L,)
        out["step"][m] = torch.cumsum(out["impulse"][m], 0) * delta  # step = running sum
        out["eig"][m] = torch.linalg.eigvals(Ab)
        out["error"][m] = (out["step"][m] - out["step_exact"]).abs().max().item()
    return out
