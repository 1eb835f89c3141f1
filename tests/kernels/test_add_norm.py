"""mambabook.kernels.add_rms_norm against mambabook.norm.add_rms_norm_ref: the new residual
and the normed row, strided inputs, bad inputs; the launch compiles for sm_90."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

import pytest  # noqa: E402
from helpers import compile_for_sm90, tol  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mambabook.kernels import add_rms_norm  # noqa: E402
from mambabook.norm import add_rms_norm_ref  # noqa: E402


def check_add_norm(x, y, w, eps, dtype):
    r, out = add_rms_norm(x, y, w, eps)
    r_ref, out_ref = add_rms_norm_ref(x, y, w, eps)
    assert r.dtype == out.dtype == x.dtype
    torch.testing.assert_close(r, r_ref, **tol(dtype))
    torch.testing.assert_close(out, out_ref, **tol(dtype))


@settings(max_examples=20, deadline=None)
@given(rows=st.integers(1, 4), d=st.integers(1, 300), strided=st.booleans(),
       eps=st.sampled_from([1e-5, 1e-6, 0.1]))
def test_add_rms_norm_matches_ref(rows, d, strided, eps):
    """x, y as given or as every other column of wider tensors (read at their strides)."""
    x = torch.randn(rows, 2 * d, device=DEVICE)
    y = torch.randn(rows, 2 * d, device=DEVICE)
    x, y = (x[:, ::2], y[:, 1::2]) if strided else (x[:, :d].contiguous(), y[:, :d])
    w = torch.randn(d, device=DEVICE)
    check_add_norm(x, y, w, eps, torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_add_rms_norm_half_inputs(dtype):
    x, y = (torch.randn(3, 200, device=DEVICE).to(dtype) for _ in range(2))
    w = (1 + 0.1 * torch.randn(200, device=DEVICE)).to(dtype)
    check_add_norm(x, y, w, 1e-5, dtype)


def test_add_rms_norm_bad_inputs():
    x, w = torch.randn(2, 8), torch.randn(8)
    with pytest.raises(ValueError, match=r"y must have shape \(B, d\) = \(2, 8\)"):
        add_rms_norm(x, torch.randn(2, 7), w)
    with pytest.raises(ValueError, match=r"weight must have shape \(d,\)"):
        add_rms_norm(x, x, torch.randn(7))
    with pytest.raises(ValueError, match=r"x must have shape \(B, d\)"):
        add_rms_norm(x[0], x[0], w)
    with pytest.raises(TypeError, match="x must be float32"):
        add_rms_norm(x.double(), x.double(), w)
    with pytest.raises(ValueError, match="d <= 16384"):
        add_rms_norm(torch.randn(1, 16385), torch.randn(1, 16385), torch.randn(16385))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_add_rms_norm_gpu_decoding_size(dtype):
    x, y = (torch.randn(128, 2048, device="cuda").to(dtype) for _ in range(2))
    check_add_norm(x, y, torch.rand(2048, device="cuda").to(dtype), 1e-5, dtype)


def test_add_rms_norm_compiles_for_sm90():
    """The launch compiles for an H100/H200 (sm_90), float32 and bfloat16, d = 2048."""
    spec = dict(_module="mambabook.kernels.add_norm", _kernel="_add_rms_norm_kernel",
                EPS=1e-5, BLOCK=2048, _num_warps=8)
    compile_for_sm90([spec, dict(spec, _bf16=["x_ptr", "y_ptr", "w_ptr", "r_ptr", "out_ptr"])])
