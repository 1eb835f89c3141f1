"""mambabook.conv: the causal conv twin is its definition (nn.Conv1d padded on the left,
cut to L), initial inputs continue a sequence, the step twin equals the sequence twin."""

import pytest
import torch
import torch.nn.functional as F
from helpers import tol
from hypothesis import given, settings
from hypothesis import strategies as st

from mambabook.conv import causal_conv1d_ref, causal_conv1d_update_ref, conv_state_after
from mambabook.norm import add_rms_norm_ref


@settings(max_examples=15, deadline=None)
@given(bsz=st.integers(1, 3), dim=st.integers(1, 6), length=st.integers(1, 9),
       width=st.integers(1, 4), silu=st.booleans())
def test_conv_ref_is_a_left_padded_conv1d(bsz, dim, length, width, silu):
    """== nn.Conv1d(D, D, K, groups=D, padding=K-1) cut to the first L outputs (the
    Mamba block's original formulation), float64."""
    conv = torch.nn.Conv1d(dim, dim, width, groups=dim, padding=width - 1).double()
    x = torch.randn(bsz, dim, length, dtype=torch.float64)
    want = conv(x)[..., :length]
    want = F.silu(want) if silu else want
    got = causal_conv1d_ref(x, conv.weight[:, 0], conv.bias, silu=silu)
    torch.testing.assert_close(got, want, **tol(torch.float64))


@pytest.mark.parametrize("split", [1, 2, 3, 6])
def test_conv_ref_initial_continues_the_sequence(split):
    """conv(x[:, :, s:], initial = final state of x[:, :, :s]) == conv(x)[:, :, s:]."""
    x = torch.randn(2, 5, 9, dtype=torch.float64)
    w, b = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    _, state = causal_conv1d_ref(x[..., :split], w, b, return_final_state=True)
    assert state.shape == (2, 5, 3)
    tail = causal_conv1d_ref(x[..., split:], w, b, initial=state)
    torch.testing.assert_close(tail, causal_conv1d_ref(x, w, b)[..., split:],
                               **tol(torch.float64))


def test_conv_state_after_pads_short_sequences():
    x = torch.arange(1.0, 3.0).view(1, 1, 2)  # L = 2 < K-1 = 3
    assert conv_state_after(x, 4).tolist() == [[[0.0, 1.0, 2.0]]]
    init = torch.tensor([[[7.0, 8.0, 9.0]]])
    assert conv_state_after(x, 4, init).tolist() == [[[9.0, 1.0, 2.0]]]
    long = torch.arange(6.0).view(1, 1, 6)
    assert conv_state_after(long, 4).tolist() == [[[3.0, 4.0, 5.0]]]
    assert conv_state_after(long, 1).shape == (1, 1, 0)


def test_conv_update_ref_steps_equal_the_sequence():
    x = torch.randn(2, 4, 7, dtype=torch.float64)
    w, b = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    state = torch.zeros(2, 4, 2, dtype=torch.float64)
    steps = torch.stack([causal_conv1d_update_ref(x[..., t], state, w, b) for t in range(7)], -1)
    out, last = causal_conv1d_ref(x, w, b, return_final_state=True)
    torch.testing.assert_close(steps, out, **tol(torch.float64))
    torch.testing.assert_close(state, last, **tol(torch.float64))


def test_add_rms_norm_ref_is_add_then_rmsnorm():
    x, y = torch.randn(3, 16, dtype=torch.float64), torch.randn(3, 16, dtype=torch.float64)
    w = torch.randn(16, dtype=torch.float64)
    r, out = add_rms_norm_ref(x, y, w, 1e-5)
    torch.testing.assert_close(r, x + y, **tol(torch.float64))
    want = (x + y) / ((x + y).pow(2).mean(-1, keepdim=True) + 1e-5).sqrt() * w
    torch.testing.assert_close(out, want, **tol(torch.float64))
    with pytest.raises(ValueError, match=r"y must have shape \(B, d\)"):
        add_rms_norm_ref(x, y[:2], w)
