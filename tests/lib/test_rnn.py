"""mambabook.rnn: the step-by-step loops equal torch.nn.RNN / torch.nn.LSTM; BPTT norms."""

import pytest
import torch
from helpers import tol
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mambabook import rnn


@settings(max_examples=8, deadline=None)
@given(B=st.integers(1, 3), L=st.integers(1, 9), D_in=st.integers(1, 7), D=st.integers(1, 9),
       layers=st.integers(1, 2), nonlinearity=st.sampled_from(["tanh", "relu"]),
       bias=st.booleans())
@example(B=1, L=1, D_in=1, D=1, layers=1, nonlinearity="tanh", bias=True)
def test_elman_matches_torch_rnn(B, L, D_in, D, layers, nonlinearity, bias):
    ref = torch.nn.RNN(D_in, D, num_layers=layers, nonlinearity=nonlinearity, bias=bias,
                       batch_first=True)
    mine = rnn.ElmanRNN.from_torch(ref)
    x, h0 = torch.randn(B, L, D_in), torch.randn(layers, B, D)
    with torch.no_grad():
        out_ref, h_ref = ref(x, h0)
        out, h = mine(x, h0)
    torch.testing.assert_close(out, out_ref, **tol(torch.float32))
    torch.testing.assert_close(h, h_ref, **tol(torch.float32))


@settings(max_examples=8, deadline=None)
@given(B=st.integers(1, 3), L=st.integers(1, 9), D_in=st.integers(1, 7), D=st.integers(1, 9),
       layers=st.integers(1, 2), bias=st.booleans())
@example(B=1, L=1, D_in=1, D=1, layers=1, bias=True)
def test_lstm_matches_torch_lstm(B, L, D_in, D, layers, bias):
    ref = torch.nn.LSTM(D_in, D, num_layers=layers, bias=bias, batch_first=True)
    mine = rnn.LSTM.from_torch(ref)
    x = torch.randn(B, L, D_in)
    state = (torch.randn(layers, B, D), torch.randn(layers, B, D))
    with torch.no_grad():
        out_ref, (h_ref, c_ref) = ref(x, state)
        out, (h, c) = mine(x, state)
    torch.testing.assert_close(out, out_ref, **tol(torch.float32))
    torch.testing.assert_close(h, h_ref, **tol(torch.float32))
    torch.testing.assert_close(c, c_ref, **tol(torch.float32))


def test_lstm_gradients_match_torch():
    ref = torch.nn.LSTM(4, 6, batch_first=True).double()
    mine = rnn.LSTM.from_torch(ref)
    x = torch.randn(2, 7, 4, dtype=torch.float64)
    ref(x)[0].pow(2).sum().backward()
    mine(x)[0].pow(2).sum().backward()
    for (name, p_ref), p in zip(ref.named_parameters(), mine.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, **tol(torch.float64), msg=name)


def test_default_state_is_zeros():
    ref = torch.nn.RNN(3, 5, batch_first=True)
    x = torch.randn(2, 4, 3)
    with torch.no_grad():
        torch.testing.assert_close(rnn.ElmanRNN.from_torch(ref)(x)[0], ref(x)[0])


def test_scale_to_spectral_radius():
    W = rnn.scale_to_spectral_radius(torch.randn(16, 16, dtype=torch.float64), 0.7)
    assert torch.linalg.eigvals(W).abs().max().item() == pytest.approx(0.7)


@pytest.mark.parametrize("kind", ["rnn", "lstm"])
def test_gradient_norms_equal_jacobian_norms(kind):
    # the batched-copies trick of gradient_norms against torch.autograd.functional.jacobian
    # of "run the cell from step t to L" at the state after t steps.
    L, D = 6, 5
    g = rnn.gradient_norms(kind, radius=0.9, L=L, D=D, batch=1, forget_bias=1.0, seed=3)
    gen = torch.Generator().manual_seed(3)
    G = 1 if kind == "rnn" else 4
    W_hh = torch.cat([rnn.scale_to_spectral_radius(
        torch.randn(D, D, generator=gen, dtype=torch.float64), 0.9) for _ in range(G)])
    W_ih = torch.randn(G * D, D, generator=gen, dtype=torch.float64) / D ** 0.5
    b = torch.zeros(G * D, dtype=torch.float64)
    b[D:2 * D] = 1.0 if kind == "lstm" else 0.0
    x = torch.randn(1, 1, L, D, generator=gen, dtype=torch.float64)[:, 0]  # (1, L, D)
    cell = rnn.elman_rnn if kind == "rnn" else rnn.lstm
    zeros = torch.zeros(1, D, dtype=torch.float64)
    for t in range(L):
        s_t = cell(x[:, :t], W_ih, W_hh, b)[1] if t else (zeros if kind == "rnn" else (zeros, zeros))
        if kind == "rnn":
            J = torch.autograd.functional.jacobian(
                lambda h, t=t: cell(x[:, t:], W_ih, W_hh, b, h0=h)[1], s_t)
            norm = J.norm()
        else:
            h_t, c_t = s_t
            Jh, Jc = torch.autograd.functional.jacobian(
                lambda h, c, t=t: cell(x[:, t:], W_ih, W_hh, b, h0=h, c0=c)[1][0], (h_t, c_t))
            norm = torch.cat([Jh.flatten(), Jc.flatten()]).norm()
        assert g[t].item() == pytest.approx(norm.item(), rel=1e-9)


def test_gradient_norms_vanish_and_explode():
    small = rnn.gradient_norms("rnn", radius=0.5, L=40, D=16, batch=2)
    big = rnn.gradient_norms("rnn", radius=3.0, L=40, D=16, batch=2)
    assert small[0] < 1e-6 * small[-1]  # far-back states are forgotten
    assert big[0] > 1e2 * big[-1]  # far-back states blow up
    lstm = rnn.gradient_norms("lstm", radius=1.0, L=40, D=16, batch=2, forget_bias=3.0)
    assert lstm[0] > 0.05 * lstm[-1]  # the cell's additive path keeps the gradient


def test_bad_inputs_name_the_argument():
    W = torch.randn(4, 4)
    with pytest.raises(ValueError, match="x"):
        rnn.elman_rnn(torch.randn(2, 4), W, W)
    with pytest.raises(ValueError, match="W_ih"):
        rnn.elman_rnn(torch.randn(2, 3, 5), W, W)
    with pytest.raises(ValueError, match="W_hh"):
        rnn.lstm(torch.randn(2, 3, 4), torch.randn(16, 4), torch.randn(12, 4))
    with pytest.raises(ValueError, match="h0"):
        rnn.elman_rnn(torch.randn(2, 3, 4), W, W, h0=torch.randn(3, 4))
    with pytest.raises(ValueError, match="c0"):
        rnn.lstm(torch.randn(2, 3, 4), torch.randn(16, 4), torch.randn(16, 4), c0=torch.randn(2, 5))
    with pytest.raises(TypeError, match="x"):
        rnn.elman_rnn(torch.ones(2, 3, 4, dtype=torch.long), W, W)
    with pytest.raises(ValueError, match="nonlinearity"):
        rnn.elman_rnn(torch.randn(2, 3, 4), W, W, nonlinearity="gelu")
    with pytest.raises(ValueError, match="kind"):
        rnn.gradient_norms("gru")
    with pytest.raises(TypeError, match="module"):
        rnn.LSTM.from_torch(torch.nn.RNN(3, 4, batch_first=True))
    with pytest.raises(ValueError, match="batch_first"):
        rnn.ElmanRNN.from_torch(torch.nn.RNN(3, 4))


def test_bad_device_names_the_arguments():
    meta = torch.empty(4, 4, device="meta")
    with pytest.raises(ValueError, match="W_hh on meta"):
        rnn.elman_rnn(torch.randn(2, 3, 4), torch.randn(4, 4), meta)
