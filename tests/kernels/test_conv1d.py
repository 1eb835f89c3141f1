"""mambabook.kernels.causal_conv1d and causal_conv1d_update against their twins in
mambabook.conv: outputs, gradients (x, weight, bias, initial inputs), the final state,
strided inputs, bad inputs; the launches compile for sm_90."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

import pytest  # noqa: E402
from helpers import compile_for_sm90, tol  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mambabook.conv import causal_conv1d_ref, causal_conv1d_update_ref  # noqa: E402
from mambabook.kernels import causal_conv1d, causal_conv1d_update  # noqa: E402


def make_x(bsz, dim, length, layout, dtype=torch.float32, device=DEVICE):
    """x (B, D, L) in one of three layouts: contiguous; "rows", the (B, D, L) view of a
    (D, B*L) projection (strides (L, B*L, 1)); "sliced", every other channel of a wider
    tensor (not dense)."""
    if layout == "rows":
        return torch.randn(dim, bsz, length, device=device).to(dtype).transpose(0, 1)
    if layout == "sliced":
        return torch.randn(bsz, 2 * dim, length, device=device).to(dtype)[:, ::2]
    return torch.randn(bsz, dim, length, device=device).to(dtype)


def make_conv(bsz, dim, length, width, layout="contiguous", has_bias=True, has_init=False,
              dtype=torch.float32, device=DEVICE):
    x = make_x(bsz, dim, length, layout, dtype, device)
    weight = (torch.randn(dim, width, device=device) / width ** 0.5).to(dtype)
    bias = torch.randn(dim, device=device).to(dtype) if has_bias else None
    init = torch.randn(bsz, dim, width - 1, device=device).to(dtype) if has_init else None
    return x, weight, bias, init


def check_conv(x, weight, bias, init, silu, dtype):
    """Kernel == twin: out, final state, and the gradients of a random projection of both."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None
              for t in (x, weight, bias, init)]
    leaves_ref = [t.detach().clone().requires_grad_() if t is not None else None
                  for t in (x, weight, bias, init)]
    xk, wk, bk, ik = leaves
    xr, wr, br, ir = leaves_ref
    out, last = causal_conv1d(xk, wk, bk, silu=silu, initial=ik, return_final_state=True)
    out_ref, last_ref = causal_conv1d_ref(xr, wr, br, silu=silu, initial=ir,
                                          return_final_state=True)
    assert out.dtype == x.dtype and out.shape == x.shape
    torch.testing.assert_close(out, out_ref, **tol(dtype))
    torch.testing.assert_close(last, last_ref, **tol(dtype))
    g = torch.randn_like(out_ref)
    g_last = torch.randn_like(last_ref)
    ((out * g).sum() + (last * g_last).sum()).backward()
    ((out_ref * g).sum() + (last_ref * g_last).sum()).backward()
    for name, a, b in zip(("x", "weight", "bias", "initial"), leaves, leaves_ref):
        if a is not None:
            torch.testing.assert_close(a.grad, b.grad, **tol(dtype),
                                       msg=lambda m, name=name: f"d{name}: {m}")


@settings(max_examples=25, deadline=None)
@given(bsz=st.integers(1, 3), dim=st.integers(1, 20), length=st.integers(1, 24),
       width=st.integers(1, 4), layout=st.sampled_from(["contiguous", "rows", "sliced"]),
       has_bias=st.booleans(), has_init=st.booleans(), silu=st.booleans())
def test_conv1d_matches_ref(bsz, dim, length, width, layout, has_bias, has_init, silu):
    check_conv(*make_conv(bsz, dim, length, width, layout, has_bias, has_init), silu,
               torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_conv1d_half_inputs(dtype):
    check_conv(*make_conv(2, 19, 9, 4, "rows", has_init=True, dtype=dtype), True, dtype)


def test_conv1d_output_takes_the_projection_layout():
    """x viewed from a (D, B*L) projection: out is written in the same layout (a (D, B*L)
    view again, what the x projection multiplies without a copy); a non-dense x gives a
    contiguous out."""
    x, w, b, _ = make_conv(3, 8, 5, 4, "rows")
    assert causal_conv1d(x, w, b).stride() == x.stride() == (5, 15, 1)
    x, w, b, _ = make_conv(3, 8, 5, 4, "sliced")
    assert causal_conv1d(x, w, b).is_contiguous()


def test_conv1d_in_pieces_equals_whole():
    """A sequence convolved in two pieces, the second starting from the first's final
    state, equals the whole sequence convolved at once (the prefill-then-decode contract)."""
    x, w, b, _ = make_conv(2, 6, 11, 4)
    whole = causal_conv1d(x, w, b)
    first, last = causal_conv1d(x[..., :2], w, b, return_final_state=True)  # L < K-1
    second = causal_conv1d(x[..., 2:].contiguous(), w, b, initial=last.contiguous())
    torch.testing.assert_close(torch.cat([first, second], -1), whole, **tol(torch.float32))


@settings(max_examples=20, deadline=None)
@given(bsz=st.integers(1, 3), dim=st.integers(1, 300), width=st.integers(1, 4),
       has_bias=st.booleans(), silu=st.booleans(), strided=st.booleans())
def test_conv1d_update_matches_ref(bsz, dim, width, has_bias, silu, strided):
    """One step: out and the shifted state; x and z as columns of a (B, 2D) projection
    (strided) and the state a slice of a wider buffer, updated in place."""
    _, w, b, _ = make_conv(bsz, dim, 1, width, has_bias=has_bias)
    xz = torch.randn(bsz, 2 * dim, device=DEVICE)
    x = xz[:, ::2] if strided else xz[:, :dim]
    buf = torch.randn(bsz, dim, width + 2, device=DEVICE)
    state, state_ref = buf[..., 1:width], buf[..., 1:width].clone()
    rest = (buf[..., :1].clone(), buf[..., width:].clone())
    out = causal_conv1d_update(x, state, w, b, silu=silu)
    out_ref = causal_conv1d_update_ref(x, state_ref, w, b, silu=silu)
    torch.testing.assert_close(out, out_ref, **tol(torch.float32))
    torch.testing.assert_close(state, state_ref, **tol(torch.float32))
    assert torch.equal(buf[..., :1], rest[0]) and torch.equal(buf[..., width:], rest[1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_conv1d_update_half_inputs(dtype):
    _, w, b, init = make_conv(3, 70, 1, 4, has_init=True, dtype=dtype)
    x = torch.randn(3, 70, device=DEVICE).to(dtype)
    state, state_ref = init.clone(), init.clone()
    torch.testing.assert_close(causal_conv1d_update(x, state, w, b),
                               causal_conv1d_update_ref(x, state_ref, w, b), **tol(dtype))
    assert torch.equal(state, state_ref)  # a shift: no arithmetic


def test_conv1d_steps_equal_the_sequence():
    """L update steps from a zero state give causal_conv1d's outputs and final state."""
    x, w, b, _ = make_conv(2, 7, 6, 3)
    state = torch.zeros(2, 7, 2, device=DEVICE)
    steps = torch.stack([causal_conv1d_update(x[..., t], state, w, b) for t in range(6)], -1)
    out, last = causal_conv1d(x, w, b, return_final_state=True)
    torch.testing.assert_close(steps, out, **tol(torch.float32))
    torch.testing.assert_close(state, last, **tol(torch.float32))


def test_conv1d_bad_inputs():
    x, w, b, init = make_conv(2, 8, 5, 4, has_init=True, device="cpu")  # checked first
    with pytest.raises(ValueError, match=r"x must have shape \(B, D, L\)"):
        causal_conv1d(x[0], w, b)
    with pytest.raises(ValueError, match=r"weight must have shape \(D, K\) with D = 8"):
        causal_conv1d(x, w[:7], b)
    with pytest.raises(ValueError, match=r"bias must have shape \(D,\)"):
        causal_conv1d(x, w, b[:3])
    with pytest.raises(ValueError, match=r"initial must have shape \(B, D, K-1\)"):
        causal_conv1d(x, w, b, initial=init[..., :2])
    with pytest.raises(ValueError, match="x must have a contiguous last dimension"):
        causal_conv1d(x.transpose(1, 2).contiguous().transpose(1, 2), w, b)
    with pytest.raises(ValueError, match="K <= 8"):
        causal_conv1d(x, torch.randn(8, 9), b)
    with pytest.raises(TypeError, match="x must be float32"):
        causal_conv1d(x.double(), w, b)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        causal_conv1d(x.tolist(), w, b)
    with pytest.raises(ValueError, match="L >= 1"):
        causal_conv1d(x[..., :0], w, b)
    with pytest.raises(ValueError, match="device"):
        causal_conv1d(x, w, torch.randn(8, device="meta"))
    state = torch.zeros(2, 8, 3)
    with pytest.raises(ValueError, match=r"conv_state must have shape \(B, D, K-1\)"):
        causal_conv1d_update(x[..., 0], state[..., :2], w, b)
    with pytest.raises(ValueError, match=r"x must have shape \(B, D\)"):
        causal_conv1d_update(x, state, w, b)
    with pytest.raises(TypeError, match="conv_state must be float32"):
        causal_conv1d_update(x[..., 0], state.double(), w, b)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_conv1d_gpu_prefill_sizes(dtype):
    """The 1.4B model's conv at a prefill (B=4, D=4096, L=2048 in the projection's layout)
    and a training size with initial inputs; one decoding step at batch 128."""
    check_conv(*make_conv(4, 4096, 2048, 4, "rows", dtype=dtype, device="cuda"), True, dtype)
    check_conv(*make_conv(8, 1536, 1000, 4, has_init=True, dtype=dtype, device="cuda"), True,
               dtype)
    _, w, b, init = make_conv(128, 4096, 1, 4, has_init=True, dtype=dtype, device="cuda")
    x = torch.randn(128, 4096, device="cuda").to(dtype)
    state, state_ref = init.clone(), init.clone()
    torch.testing.assert_close(causal_conv1d_update(x, state, w, b),
                               causal_conv1d_update_ref(x, state_ref, w, b), **tol(dtype))
    assert torch.equal(state, state_ref)


def test_conv1d_kernels_compile_for_sm90():
    """The three launches compile for an H100/H200 (sm_90) on this machine, GPU or not:
    float32 and bfloat16, K = 2 and 4, and without bias, initial inputs and SiLU."""
    half = ["x_ptr", "w_ptr", "bias_ptr", "init_ptr", "out_ptr", "dout_ptr", "dx_ptr",
            "state_ptr"]
    mod = dict(_module="mambabook.kernels.conv1d")
    fwd = dict(mod, _kernel="_causal_conv1d_fwd_kernel", BLOCK_D=16, BLOCK_L=128,
               _num_warps=4)
    bwd = dict(mod, _kernel="_causal_conv1d_bwd_kernel", BLOCK_D=16, BLOCK_L=64,
               _num_warps=4)
    step = dict(mod, _kernel="_causal_conv1d_update_kernel", BLOCK_D=256, _num_warps=2)
    specs = []
    for K in (2, 4):
        for extra in ({}, dict(_bf16=half)):
            specs += [dict(kind, K=K, SILU=True, **extra) for kind in (fwd, bwd, step)]
    specs += [dict(fwd, K=4, SILU=False, bias_ptr=None, init_ptr=None),
              dict(bwd, K=4, SILU=False, bias_ptr=None, init_ptr=None, dinit_ptr=None,
                   dbias_ptr=None),
              dict(step, K=4, SILU=False, bias_ptr=None)]
    compile_for_sm90(specs)
