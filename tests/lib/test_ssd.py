"""mambabook.ssd: quadratic == chunked == recurrent == step by step == a scalar hand loop."""

import pytest
import torch
from helpers import tol
from hypothesis import given, settings
from hypothesis import strategies as st

from mambabook.ssd import (
    segsum,
    ssd_chunked,
    ssd_matrix,
    ssd_recurrent,
    ssd_ref,
    ssd_step,
)


def make_inputs(bsz, L, H, P, G, N, dtype=torch.float32, D_shape="H", seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)
    x = r(bsz, L, H, P)
    dt = torch.rand(bsz, L, H, generator=g) * 0.5 + 0.01  # positive
    A = -(torch.rand(H, generator=g) * 2 + 0.1)  # negative
    B, C = r(bsz, L, G, N), r(bsz, L, G, N)
    D = {"H": r(H), "HP": r(H, P), None: None}[D_shape]
    return [t.to(dtype) if t is not None else None for t in (x, dt, A, B, C, D)]


def ssd_by_hand(x, dt, A, B, C, D):
    """Scalar loops in float64, from the equations: h[p, n] <- exp(dt A) h + dt x[p] B[n],
    y[p] = sum_n h[p, n] C[n] + D x[p]. Returns y and the last state."""
    bsz, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    y = torch.zeros(bsz, L, H, P, dtype=torch.float64)
    last = torch.zeros(bsz, H, P, N, dtype=torch.float64)
    for b in range(bsz):
        for h in range(H):
            g = h // (H // G)
            s = torch.zeros(P, N, dtype=torch.float64)
            for t in range(L):
                d = dt[b, t, h].double()
                s = torch.exp(d * A[h].double()) * s \
                    + d * torch.outer(x[b, t, h].double(), B[b, t, g].double())
                y[b, t, h] = s @ C[b, t, g].double()
                if D is not None:  # D[h]: a scalar (H,) or a (P,) row (H, P)
                    y[b, t, h] += D[h].double() * x[b, t, h].double()
            last[b, h] = s
    return y, last


def test_segsum_is_the_decay_exponent():
    a = torch.tensor([0.5, -1.0, 2.0, 0.25], dtype=torch.float64)
    s = segsum(a)
    for i in range(4):
        for j in range(4):
            want = a[j + 1:i + 1].sum() if j <= i else -torch.inf
            assert s[i, j].item() == pytest.approx(float(want))


def test_segsum_stays_exact_for_long_sums():
    """The masked-cumsum form keeps small segment sums exact where a difference of large
    cumulative sums would not."""
    a = torch.full((2048,), -1.0)
    s = segsum(a)
    assert s[-1, -2].item() == -1.0 and s[-1, -1].item() == 0.0


@pytest.mark.parametrize("D_shape", [None, "H", "HP"])
def test_recurrent_equals_hand_loop(D_shape):
    x, dt, A, B, C, D = make_inputs(2, 7, 4, 3, 2, 5, D_shape=D_shape)
    y, last = ssd_recurrent(x, dt, A, B, C, D, return_final_states=True)
    y_h, last_h = ssd_by_hand(x, dt, A, B, C, D)
    torch.testing.assert_close(y.double(), y_h, **tol(torch.float32))
    torch.testing.assert_close(last.double(), last_h, **tol(torch.float32))


def test_matrix_is_lower_triangular_and_equals_the_recurrence_column_by_column():
    """Column s of M is the response to a unit input at step s: M[t, s] = C_t . B_s decay."""
    x, dt, A, B, C, _ = make_inputs(1, 6, 2, 1, 1, 4, dtype=torch.float64)
    M = ssd_matrix(dt, A, B, C)  # (1, H, L, L)
    assert torch.all(torch.triu(M, 1) == 0)
    for s in range(6):
        e = torch.zeros_like(x)
        e[:, s] = 1.0 / dt[:, s, :, None]  # dt x = 1 at step s
        y = ssd_recurrent(e, dt, A, B, C)  # (1, L, H, 1)
        torch.testing.assert_close(y[0, :, :, 0].T, M[0, :, :, s])


@settings(max_examples=25, deadline=None)
@given(bsz=st.integers(1, 2), L=st.integers(1, 19), G=st.sampled_from([1, 2]),
       hpg=st.integers(1, 2), P=st.integers(1, 5), N=st.integers(1, 6),
       chunk=st.integers(1, 8), D_shape=st.sampled_from([None, "H", "HP"]),
       init=st.booleans())
def test_four_forms_agree(bsz, L, G, hpg, P, N, chunk, D_shape, init):
    """L = 1, L not a multiple of the chunk, G > 1, P and N not powers of two."""
    H = G * hpg
    x, dt, A, B, C, D = make_inputs(bsz, L, H, P, G, N, dtype=torch.float64,
                                    D_shape=D_shape)
    h0 = torch.randn(bsz, H, P, N, dtype=torch.float64) if init else None
    y_rec, last_rec = ssd_recurrent(x, dt, A, B, C, D, initial_states=h0,
                                    return_final_states=True)
    y_chk, last_chk = ssd_chunked(x, dt, A, B, C, chunk, D, initial_states=h0,
                                  return_final_states=True)
    torch.testing.assert_close(y_chk, y_rec, **tol(torch.float64))
    torch.testing.assert_close(last_chk, last_rec, **tol(torch.float64))
    if h0 is None:
        torch.testing.assert_close(ssd_ref(x, dt, A, B, C, D), y_rec, **tol(torch.float64))
    # step by step through the public one-step function
    h = torch.zeros(bsz, H, P, N, dtype=torch.float64) if h0 is None else h0
    for t in range(L):
        y_t, h = ssd_step(h, x[:, t], dt[:, t], A, B[:, t], C[:, t], D)
        torch.testing.assert_close(y_t, y_rec[:, t], **tol(torch.float64))
    torch.testing.assert_close(h, last_rec, **tol(torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_matches_ref_in_low_precision(dtype):
    x, dt, A, B, C, D = make_inputs(2, 37, 4, 6, 2, 5)
    y64 = ssd_ref(*(t.double() for t in (x, dt, A, B, C, D)))
    args = [t.to(dtype) for t in (x, dt)] + [A] + [t.to(dtype) for t in (B, C)] + [D]
    y = ssd_chunked(*args[:5], 16, args[5])
    assert y.dtype == dtype
    torch.testing.assert_close(y.double(), y64.to(dtype).double(), **tol(dtype))


@pytest.mark.parametrize("L,chunk", [(1, 4), (13, 4), (16, 8)])
def test_gradients_of_every_input_agree(L, chunk):
    """d/d(x, dt, A, B, C, D, initial_states) of a loss on y and the final state."""
    x, dt, A, B, C, D = make_inputs(2, L, 4, 3, 2, 5, dtype=torch.float64, D_shape="HP")
    h0 = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    ins = [t.clone().requires_grad_() for t in (x, dt, A, B, C, D, h0)]
    w_y, w_h = torch.randn(2, L, 4, 3, dtype=torch.float64), torch.randn_like(h0)

    def grads(fn):
        for t in ins:
            t.grad = None
        y, last = fn(*ins)
        ((y * w_y).sum() + (last * w_h).sum()).backward()
        return [t.grad.clone() for t in ins]

    g_rec = grads(lambda x, dt, A, B, C, D, h0: ssd_recurrent(
        x, dt, A, B, C, D, initial_states=h0, return_final_states=True))
    g_chk = grads(lambda x, dt, A, B, C, D, h0: ssd_chunked(
        x, dt, A, B, C, chunk, D, initial_states=h0, return_final_states=True))
    for name, a, b in zip("x dt A B C D h0".split(), g_chk, g_rec):
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a, b, **tol(torch.float64), msg=name)
    # the quadratic form's gradients (no initial state) against the recurrence's
    ins2 = [t.detach().clone().requires_grad_() for t in ins[:6]]
    (ssd_ref(*ins2) * w_y).sum().backward()
    ins3 = [t.detach().clone().requires_grad_() for t in ins[:6]]
    (ssd_recurrent(*ins3) * w_y).sum().backward()
    for a, b in zip(ins2, ins3):
        torch.testing.assert_close(a.grad, b.grad, **tol(torch.float64))


def test_long_sequence_stays_finite():
    """Large total decay (sum dt A far below -100): the block form stays finite."""
    x, dt, A, B, C, _ = make_inputs(1, 300, 2, 2, 1, 3)
    dt = dt * 4
    y = ssd_chunked(x, dt, A, B, C, 64)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, ssd_recurrent(x, dt, A, B, C), **tol(torch.float32))


@pytest.mark.parametrize("fn", ["ref", "chunked", "recurrent"])
def test_bad_inputs_name_the_argument(fn):
    x, dt, A, B, C, D = make_inputs(1, 5, 4, 3, 2, 5)
    call = {"ref": lambda *a, **k: ssd_ref(*a, **k),
            "chunked": lambda *a, **k: ssd_chunked(*a[:5], 4, *a[5:], **k),
            "recurrent": lambda *a, **k: ssd_recurrent(*a, **k)}[fn]
    with pytest.raises(ValueError, match=r"dt must have shape \(B, L, H\)"):
        call(x, dt[:, :4], A, B, C)
    with pytest.raises(ValueError, match="A must have shape"):
        call(x, dt, A[:3], B, C)
    with pytest.raises(ValueError, match="B must have shape .* G dividing H = 4"):
        call(x, dt, A, torch.randn(1, 5, 3, 5), C)
    with pytest.raises(ValueError, match="C must have shape"):
        call(x, dt, A, B, C[..., :4])
    with pytest.raises(ValueError, match=r"D must have shape \(H,\)"):
        call(x, dt, A, B, C, torch.randn(5))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        call(x.numpy(), dt, A, B, C)
    with pytest.raises(ValueError, match="L >= 1"):
        call(x[:, :0], dt[:, :0], A, B[:, :0], C[:, :0])


def test_bad_state_and_chunk_size():
    x, dt, A, B, C, _ = make_inputs(1, 5, 4, 3, 2, 5)
    with pytest.raises(ValueError, match=r"initial_states must have shape \(B, H, P, N\)"):
        ssd_chunked(x, dt, A, B, C, 4, initial_states=torch.zeros(1, 4, 3, 4))
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        ssd_chunked(x, dt, A, B, C, 0)
    with pytest.raises(ValueError, match=r"x must have shape \(B, H, P\)"):
        ssd_step(torch.zeros(1, 4, 3, 5), x[:, 0, :2], dt[:, 0], A, B[:, 0], C[:, 0])
    with pytest.raises(ValueError, match="B must have shape"):
        ssd_step(torch.zeros(1, 4, 3, 5), x[:, 0], dt[:, 0], A, B[:, 0, :, :4], C[:, 0])
