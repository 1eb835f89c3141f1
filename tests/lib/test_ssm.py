"""mambabook.ssm: discretizations against their closed forms, HiPPO, recurrent == convolution."""

import math

import numpy as np
import pytest
import torch
from helpers import tol
from hypothesis import given, settings
from hypothesis import strategies as st

from mambabook import ssm

F64 = tol(torch.float64)


def random_stable(N, M=1, seed=0):
    """A random stable dense A (eigenvalues with real part <= -0.1), B (N, M), C (1, N)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N, N, generator=g, dtype=torch.float64)
    A = X - X.T - (0.1 + torch.rand(N, generator=g, dtype=torch.float64)).diag()  # skew - diag
    return A, torch.randn(N, M, generator=g, dtype=torch.float64), torch.randn(1, N, generator=g, dtype=torch.float64)


# ----------------------------------------------------------------------------- closed forms
def test_euler_closed_form():
    A, B, _ = random_stable(5, 2)
    Ab, Bb = ssm.discretize(A, B, 0.1, "euler")
    torch.testing.assert_close(Ab, torch.eye(5, dtype=A.dtype) + 0.1 * A, **F64)
    torch.testing.assert_close(Bb, 0.1 * B, **F64)


def test_bilinear_closed_form():
    A, B, _ = random_stable(5, 2)
    d = 0.3
    inv = torch.linalg.inv(torch.eye(5, dtype=A.dtype) - d / 2 * A)
    Ab, Bb = ssm.discretize(A, B, d, "bilinear")
    torch.testing.assert_close(Ab, inv @ (torch.eye(5, dtype=A.dtype) + d / 2 * A), **F64)
    torch.testing.assert_close(Bb, inv @ (d * B), **F64)


def test_zoh_closed_form_by_eigendecomposition():
    """Ab = V exp(delta Lambda) V^-1 and Bb = A^-1 (Ab - I) B, computed independently."""
    A, B, _ = random_stable(6, 3)
    d = 0.25
    lam, V = torch.linalg.eig(A)
    Ab_eig = (V @ torch.diag(torch.exp(d * lam)) @ torch.linalg.inv(V)).real
    Ab, Bb = ssm.discretize(A, B, d, "zoh")
    torch.testing.assert_close(Ab, Ab_eig, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(Bb, torch.linalg.solve(A, (Ab_eig - torch.eye(6, dtype=A.dtype)) @ B),
                               rtol=1e-9, atol=1e-10)


def test_zoh_singular_A_is_the_integrator():
    """A = 0 (marginally stable): x_k = x_{k-1} + delta u_k, the limit of A^-1 (e^{dA} - I) B."""
    A, B = torch.zeros(2, 2, dtype=torch.float64), torch.ones(2, 1, dtype=torch.float64)
    Ab, Bb = ssm.discretize(A, B, 0.5, "zoh")
    torch.testing.assert_close(Ab, torch.eye(2, dtype=torch.float64), **F64)
    torch.testing.assert_close(Bb, 0.5 * B, **F64)
    Ad, Bd = ssm.discretize_diag(torch.zeros(1, 2), torch.ones(1, 2), 0.5, "zoh")
    torch.testing.assert_close(Bd, torch.full((1, 2), 0.5))


@pytest.mark.parametrize("method", ssm.METHODS)
def test_diagonal_form_equals_dense_form(method):
    """discretize_diag on the diagonal == discretize on diag(A), channel by channel."""
    g = torch.Generator().manual_seed(1)
    A = -torch.rand(3, 4, generator=g, dtype=torch.float64) * 5  # (D, N)
    B = torch.randn(3, 4, generator=g, dtype=torch.float64)
    delta = torch.tensor([0.01, 0.1, 0.5], dtype=torch.float64)
    Ab, Bb = ssm.discretize_diag(A, B, delta, method)
    for d in range(3):
        Ad, Bd = ssm.discretize(torch.diag(A[d]), B[d][:, None], delta[d].item(), method)
        torch.testing.assert_close(Ab[d], torch.diagonal(Ad), **F64)
        torch.testing.assert_close(Bb[d], Bd[:, 0], **F64)


def test_complex_diagonal_zoh():
    A = ssm.s4d_lin_init(2, 3, dtype=torch.complex128)
    B = torch.ones(2, 3, dtype=torch.complex128)
    Ab, Bb = ssm.discretize_diag(A, B, 0.1, "zoh")
    torch.testing.assert_close(Ab, torch.exp(0.1 * A))
    torch.testing.assert_close(Bb, (torch.exp(0.1 * A) - 1) / A)
    assert (Ab.abs() < 1).all()


# ----------------------------------------------------------------------------- agreement as delta -> 0
def test_local_error_orders():
    """||Ab_euler - e^{dA}|| ~ d^2 and ||Ab_bilinear - e^{dA}|| ~ d^3 (one step's error)."""
    A, B, _ = random_stable(4)
    ds = [0.04, 0.02, 0.01, 0.005]
    err = {m: [] for m in ("euler", "bilinear")}
    for d in ds:
        Az, _ = ssm.discretize(A, B, d, "zoh")
        for m in err:
            err[m].append((ssm.discretize(A, B, d, m)[0] - Az).norm().item())
    slope = {m: np.polyfit(np.log(ds), np.log(e), 1)[0] for m, e in err.items()}
    assert abs(slope["euler"] - 2) < 0.1, slope
    assert abs(slope["bilinear"] - 3) < 0.1, slope


def test_step_response_global_error_orders():
    """Against the exact step response: Euler O(delta), bilinear O(delta^2), ZOH exact."""
    A, B, C = ssm.damped_oscillator()
    ds = [0.02, 0.01, 0.005]
    errs = {m: [ssm.step_response_error(A, B, C, d, m, 2.0) for d in ds] for m in ssm.METHODS}
    slope = {m: np.polyfit(np.log(ds), np.log(errs[m]), 1)[0] for m in ("euler", "bilinear")}
    assert abs(slope["euler"] - 1) < 0.15, slope
    assert abs(slope["bilinear"] - 2) < 0.15, slope
    assert max(errs["zoh"]) < 1e-10


def test_impulse_response_matches_kernel():
    """K_k / delta -> C e^{k delta A} B (the ZOH kernel converges to the impulse response)."""
    A, B, C = ssm.damped_oscillator()
    d = 1e-3
    Ab, Bb = ssm.discretize(A, B, d, "zoh")
    K = ssm.ssm_kernel(Ab, Bb, C, 200)[0, 0]  # (L,)
    exact = ssm.impulse_response_exact(A, B, C, torch.arange(200, dtype=A.dtype) * d)[:, 0, 0]
    torch.testing.assert_close(K / d, exact, rtol=0, atol=1e-2 * exact.abs().max().item())


def test_bilinear_and_zoh_stay_in_unit_disk_euler_leaves_it():
    A, B, _ = ssm.damped_oscillator()
    for d in (0.01, 0.1, 1.0):
        for m in ("bilinear", "zoh"):
            assert torch.linalg.eigvals(ssm.discretize(A, B, d, m)[0]).abs().max() < 1
    assert torch.linalg.eigvals(ssm.discretize(A, B, 0.1, "euler")[0]).abs().max() > 1


# ----------------------------------------------------------------------------- HiPPO and S4D
def test_hippo_legs_structure():
    N = 8
    A, B = ssm.hippo_legs(N)
    assert torch.equal(A, torch.tril(A))  # lower triangular
    torch.testing.assert_close(torch.diagonal(A), -(torch.arange(N, dtype=A.dtype) + 1))
    assert A[3, 1] == -math.sqrt(7) * math.sqrt(3)
    torch.testing.assert_close(B[:, 0], torch.sqrt(2 * torch.arange(N, dtype=A.dtype) + 1))
    P = ssm.hippo_legs_low_rank(N)
    S = A + P @ P.T + 0.5 * torch.eye(N, dtype=A.dtype)  # normal plus low rank: S skew
    torch.testing.assert_close(S, -S.T, **F64)


def test_s4d_inits():
    A_real = ssm.s4d_real_init(3, 5)
    A_hippo, _ = ssm.hippo_legs(5)
    torch.testing.assert_close(A_real[1], torch.diagonal(A_hippo).float())
    A_lin = ssm.s4d_lin_init(3, 5)
    torch.testing.assert_close(A_lin.real, torch.full((3, 5), -0.5))
    torch.testing.assert_close(A_lin.imag[0], math.pi * torch.arange(5.0))


def test_hippo_reconstructs_history():
    """The N coefficients hold the whole history: reconstruction error shrinks with N."""
    t = torch.linspace(0, 1, 400)
    f = torch.sin(6 * t) + 0.5 * torch.cos(17 * t)
    errs = {}
    for N in (4, 32):
        c = ssm.hippo_legs_encode(f, N)[-1]
        errs[N] = (ssm.hippo_legs_reconstruct(c, 400) - f.double()).abs().mean().item()
    assert errs[32] < 0.02 and errs[4] > 5 * errs[32], errs


def test_legendre_basis_orthonormal():
    s = torch.linspace(-1, 1, 20001, dtype=torch.float64)
    P = ssm.legendre_basis(6, s)  # (S, N)
    gram = torch.trapezoid(P[:, :, None] * P[:, None, :], s, dim=0) / 2
    torch.testing.assert_close(gram, torch.eye(6, dtype=torch.float64), rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------- the two views
@settings(max_examples=15, deadline=None)
@given(N=st.integers(1, 5), M=st.integers(1, 3), P=st.integers(1, 3), L=st.integers(1, 17),
       batch=st.integers(1, 3), method=st.sampled_from(ssm.METHODS))
def test_recurrence_equals_convolution_dense(N, M, P, L, batch, method):
    A, B, _ = random_stable(N, M, seed=N * 7 + M)
    C = torch.randn(P, N, dtype=torch.float64)
    Ab, Bb = ssm.discretize(A, B, 0.1, method)
    u = torch.randn(batch, M, L, dtype=torch.float64)
    y_rec = ssm.ssm_recurrent(Ab, Bb, C, u)
    y_conv = ssm.ssm_convolution(ssm.ssm_kernel(Ab, Bb, C, L), u)
    assert y_rec.shape == (batch, P, L)
    torch.testing.assert_close(y_conv, y_rec, rtol=1e-7, atol=1e-9)


@settings(max_examples=15, deadline=None)
@given(D=st.integers(1, 5), N=st.integers(1, 6), L=st.integers(1, 33), complex_=st.booleans())
def test_recurrence_equals_convolution_diag(D, N, L, complex_):
    A = ssm.s4d_lin_init(D, N, torch.complex128) if complex_ else ssm.s4d_real_init(D, N, torch.float64)
    B = torch.randn(D, N, dtype=A.dtype)
    C = torch.randn(D, N, dtype=A.dtype)
    Ab, Bb = ssm.discretize_diag(A, B, torch.rand(D, dtype=torch.float64) * 0.5 + 0.01, "zoh")
    u = torch.randn(2, D, L, dtype=torch.float64)
    K = ssm.ssm_kernel_diag(Ab, Bb, C, L)
    torch.testing.assert_close(ssm.ssm_convolution(K, u), ssm.ssm_recurrent_diag(Ab, Bb, C, u),
                               rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(ssm.causal_conv_direct(K, u), ssm.ssm_convolution(K, u),
                               rtol=1e-7, atol=1e-9)


def test_dense_kernel_equals_diag_kernel_for_diagonal_A():
    A = ssm.s4d_real_init(1, 4, torch.float64)
    B, C = torch.randn(1, 4, dtype=torch.float64), torch.randn(1, 4, dtype=torch.float64)
    Ab, Bb = ssm.discretize_diag(A, B, 0.2, "bilinear")
    Kd = ssm.ssm_kernel(torch.diag(Ab[0]), Bb[0][:, None], C, 12)[0, 0]
    torch.testing.assert_close(ssm.ssm_kernel_diag(Ab, Bb, C, 12)[0], Kd, **F64)


def test_s4d_layer_equals_its_recurrence():
    layer = ssm.S4D(6, 4).double()
    with torch.no_grad():
        layer.B.normal_()
    u = torch.randn(2, 6, 19, dtype=torch.float64)
    A = -torch.exp(layer.A_log)
    Ab, Bb = ssm.discretize_diag(A, layer.B, torch.exp(layer.log_delta), "zoh")
    y_rec = ssm.ssm_recurrent_diag(Ab, Bb, layer.C, u) + layer.D[:, None] * u
    torch.testing.assert_close(layer(u), y_rec, rtol=1e-7, atol=1e-9)


# ----------------------------------------------------------------------------- bad inputs
def test_unstable_and_singular_A_discretize_like_cont2discrete():
    """Every A is accepted, as scipy.signal.cont2discrete accepts it; checked by hand:
    unstable diagonal A: Ab = e^{dA}, Bb = (e^{dA} - 1) / a * b; the nilpotent
    A = [[0, 1], [0, 0]]: e^{dA} = I + dA and Bb = (d I + d^2/2 A) B (its series ends)."""
    d = 0.3
    A = torch.tensor([[0.5, 0.0], [0.0, -1.0]], dtype=torch.float64)  # unstable
    B = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    a = A.diagonal()
    Ab, Bb = ssm.discretize(A, B, d, "zoh")
    torch.testing.assert_close(Ab, torch.diag(torch.exp(d * a)), **F64)
    torch.testing.assert_close(Bb, ((torch.exp(d * a) - 1) / a)[:, None] * B, **F64)
    assert not ssm.is_stable(A) and torch.linalg.eigvals(Ab).abs().max() > 1  # shown, not refused
    Ad, Bd = ssm.discretize_diag(a[None], B.T, d, "zoh")  # (1, 2): the same, diagonal
    torch.testing.assert_close(Ad[0], Ab.diagonal(), **F64)
    torch.testing.assert_close(Bd[0], Bb[:, 0], **F64)
    for method in ("euler", "bilinear"):
        Ab, Bb = ssm.discretize(A, B, d, method)
        torch.testing.assert_close(ssm.discretize_diag(a[None], B.T, d, method)[0][0],
                                   Ab.diagonal(), **F64)
    N = torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)  # singular, nilpotent
    I = torch.eye(2, dtype=torch.float64)
    Ab, Bb = ssm.discretize(N, B, d, "zoh")
    torch.testing.assert_close(Ab, I + d * N, **F64)
    torch.testing.assert_close(Bb, (d * I + d * d / 2 * N) @ B, **F64)
    assert ssm.is_stable(N) and ssm.is_stable(-torch.eye(3)) and not ssm.is_stable(a[None])


def test_bilinear_refuses_only_a_singular_left_matrix():
    """I - d/2 A is singular when A has the eigenvalue 2/d: the one thing bilinear cannot do."""
    A = torch.tensor([[4.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="bilinear"):
        ssm.discretize(A, torch.ones(2, 1, dtype=torch.float64), 0.5, "bilinear")
    with pytest.raises(ValueError, match="bilinear"):
        ssm.discretize_diag(A.diagonal()[None], torch.ones(1, 2), 0.5, "bilinear")
    for method in ("euler", "zoh"):  # the same A and step: computable
        assert torch.isfinite(ssm.discretize(A, torch.ones(2, 1, dtype=torch.float64), 0.5,
                                             method)[0]).all()


@pytest.mark.parametrize("call, match", [
    (lambda: ssm.discretize(-torch.eye(3), torch.ones(2, 1), 0.1), "B must have shape"),
    (lambda: ssm.discretize(-torch.ones(3, 2), torch.ones(3, 1), 0.1), "A must have shape"),
    (lambda: ssm.discretize(-torch.eye(2), torch.ones(2, 1), 0.1, "rk4"), "method"),
    (lambda: ssm.discretize(-torch.eye(2), torch.ones(2, 1), -0.1), "delta"),
    (lambda: ssm.discretize(-torch.eye(2)[0], torch.ones(2, 1), 0.1), "A must have shape"),
    (lambda: ssm.discretize_diag(-torch.ones(2, 3), torch.ones(2, 4), 0.1), "B must have shape"),
    (lambda: ssm.discretize_diag(-torch.ones(2, 3), torch.ones(2, 3), torch.ones(3)), "delta"),
    (lambda: ssm.ssm_kernel(torch.eye(2), torch.ones(2, 1), torch.ones(1, 3), 4), "C must have shape"),
    (lambda: ssm.ssm_kernel(torch.eye(2), torch.ones(2, 1), torch.ones(1, 2), 0), "L"),
    (lambda: ssm.ssm_recurrent(torch.eye(2), torch.ones(2, 1), torch.ones(1, 2), torch.ones(1, 2, 5)), "u must have shape"),
    (lambda: ssm.ssm_convolution(torch.ones(3, 5), torch.ones(1, 3, 6)), "K must have shape"),
    (lambda: ssm.ssm_convolution(torch.ones(3, 5), torch.ones(3, 5)), "u must have shape"),
])
def test_bad_inputs_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_non_tensor_raises_type_error():
    with pytest.raises(TypeError, match="A must be a torch.Tensor"):
        ssm.discretize([[-1.0]], torch.ones(1, 1), 0.1)
