"""mambabook.selective: selective_scan_ref against an independent loop, decoding == scan, S6."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import needs_kernels, tol
from hypothesis import given, settings
from hypothesis import strategies as st

from mambabook.selective import (
    S6,
    check_selective_scan_args,
    dt_bias_init,
    dt_rank_rule,
    scan_functions,
    selective_scan_ref,
    selective_state_update_ref,
    time_contiguous,
)


def scan_by_hand(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Scalar loops, float64, written from the equations (not from the library):
    h[n] <- exp(dt A[d, n]) h[n] + dt B_t[n] u,  y = sum_n C_t[n] h[n] + D[d] u,  y *= silu(z).
    Returns out (B, D, L) and the last state (B, D, N)."""
    bsz, dim, L = u.shape
    N = A.shape[1]
    out = torch.zeros(bsz, dim, L, dtype=torch.float64)
    last = torch.zeros(bsz, dim, N, dtype=torch.float64)

    def coef(M, b, d, t):  # B_t or C_t for channel d: (N,)
        if M.dim() == 2:
            return M[d].double()
        if M.dim() == 3:
            return M[b, :, t].double()
        g = d // (dim // M.shape[1])
        return M[b, g, :, t].double()

    for b in range(bsz):
        for d in range(dim):
            h = torch.zeros(N, dtype=torch.float64)
            for t in range(L):
                dt = delta[b, d, t].double() + (0 if delta_bias is None else delta_bias[d].double())
                if delta_softplus:
                    dt = math.log1p(math.exp(dt)) if dt < 20 else dt
                x = u[b, d, t].double()
                h = torch.exp(dt * A[d].double()) * h + dt * coef(B, b, d, t) * x
                y = (coef(C, b, d, t) * h).sum() + (0 if D is None else D[d].double() * x)
                if z is not None:
                    zz = z[b, d, t].double()
                    y = y * zz / (1 + math.exp(-zz))
                out[b, d, t] = y
            last[b, d] = h
    return out, last


def make_inputs(bsz, dim, L, N, form, G=2, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)
    u, delta, z = r(bsz, dim, L), torch.rand(bsz, dim, L, generator=g) * 0.5, r(bsz, dim, L)
    A = -torch.rand(dim, N, generator=g) * 2 - 0.1
    shapes = {"BNL": (bsz, N, L), "BGNL": (bsz, G, N, L), "DN": (dim, N)}[form]
    return dict(u=u.to(dtype), delta=delta.to(dtype), A=A, B=r(*shapes).to(dtype),
                C=r(*shapes).to(dtype), D=r(dim), z=z.to(dtype), delta_bias=r(dim) * 0.3)


@pytest.mark.parametrize("form", ["BNL", "BGNL", "DN"])
@pytest.mark.parametrize("extras", [(), ("D",), ("D", "z", "delta_bias")])
@pytest.mark.parametrize("softplus", [False, True])
def test_scan_equals_hand_loop(form, extras, softplus):
    x = make_inputs(2, 4, 7, 3, form)
    kw = {k: x[k] for k in extras}
    out, last = selective_scan_ref(x["u"], x["delta"], x["A"], x["B"], x["C"], **kw,
                                   delta_softplus=softplus, return_last_state=True)
    out_h, last_h = scan_by_hand(x["u"], x["delta"], x["A"], x["B"], x["C"], **kw,
                                 delta_softplus=softplus)
    torch.testing.assert_close(out.double(), out_h, **tol(torch.float32))
    torch.testing.assert_close(last.double(), last_h, **tol(torch.float32))
    assert out.dtype == torch.float32 and last.dtype == torch.float32 and last.shape == (2, 4, 3)


def test_mixed_B_and_C_forms():
    """B shared by all channels (B, N, L), C grouped (B, G, N, L)."""
    x = make_inputs(2, 4, 5, 3, "BNL")
    C = torch.randn(2, 4, 3, 5)
    out = selective_scan_ref(x["u"], x["delta"], x["A"], x["B"], C, D=x["D"])
    torch.testing.assert_close(out.double(), scan_by_hand(x["u"], x["delta"], x["A"], x["B"], C,
                                                          D=x["D"])[0], **tol(torch.float32))


@settings(max_examples=20, deadline=None)
@given(bsz=st.integers(1, 2), groups=st.integers(1, 3), per_group=st.integers(1, 3),
       L=st.integers(1, 9), N=st.integers(1, 4), form=st.sampled_from(["BNL", "BGNL", "DN"]))
def test_scan_equals_hand_loop_over_shapes(bsz, groups, per_group, L, N, form):
    dim = groups * per_group
    x = make_inputs(bsz, dim, L, N, form, G=groups, seed=L + 10 * N)
    out = selective_scan_ref(**x, delta_softplus=True)
    torch.testing.assert_close(out.double(), scan_by_hand(**x, delta_softplus=True)[0],
                               **tol(torch.float32))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_in_float32_inside(dtype):
    x = make_inputs(1, 4, 6, 3, "BNL", dtype=dtype)
    out, last = selective_scan_ref(**x, return_last_state=True)
    assert out.dtype == dtype and last.dtype == torch.float32
    torch.testing.assert_close(out.double(), scan_by_hand(**x)[0], **tol(dtype))


@pytest.mark.parametrize("form", ["BNL", "BGNL"])
def test_state_update_stepping_equals_scan(form):
    """L decoding steps of selective_state_update_ref == one selective_scan_ref call."""
    x = make_inputs(2, 4, 9, 3, form)
    out, last = selective_scan_ref(**x, delta_softplus=True, return_last_state=True)
    state = torch.zeros(2, 4, 3)
    steps = []
    for t in range(9):
        steps.append(selective_state_update_ref(
            state, x["u"][..., t], x["delta"][..., t], x["A"], x["B"][..., t], x["C"][..., t],
            D=x["D"], z=x["z"][..., t], dt_bias=x["delta_bias"], dt_softplus=True))
    torch.testing.assert_close(torch.stack(steps, -1), out, **tol(torch.float32))
    torch.testing.assert_close(state, last, **tol(torch.float32))


SCAN_INPUTS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def scan_outputs_and_grads(x, scan, seed=1):
    """out, last state and the gradients of every input of <out, w> + <last, w_last>."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in x.items()}
    out, last = scan(leaves)
    g = torch.Generator().manual_seed(seed)
    loss = (out * torch.randn(out.shape, generator=g)).sum() + \
        (last * torch.randn(last.shape, generator=g)).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return out, last, dict(zip(leaves, grads))


@settings(max_examples=20, deadline=None)
@given(bsz=st.integers(1, 2), groups=st.integers(1, 2), per_group=st.integers(1, 3),
       L=st.integers(2, 10), N=st.integers(1, 4), form=st.sampled_from(["BNL", "BGNL", "DN"]),
       cut=st.floats(0, 1), softplus=st.booleans())
def test_initial_state_equals_running_the_prefix(bsz, groups, per_group, L, N, form, cut,
                                                 softplus):
    """Scanning [0, s) and then [s, L) from the first part's last state == scanning [0, L):
    outputs, last state, and the gradients of every input through both."""
    s = 1 + int(cut * (L - 2))  # the split point, 1 <= s <= L - 1
    x = make_inputs(bsz, groups * per_group, L, N, form, G=groups, seed=L + 10 * N)
    timed = ("u", "delta", "z") + (("B", "C") if form != "DN" else ())

    def whole(v):
        return selective_scan_ref(**v, delta_softplus=softplus, return_last_state=True)

    def split(v):
        first = {k: v[k][..., :s] if k in timed else v[k] for k in v}
        second = {k: v[k][..., s:] if k in timed else v[k] for k in v}
        out1, h1 = selective_scan_ref(**first, delta_softplus=softplus, return_last_state=True)
        out2, h2 = selective_scan_ref(**second, delta_softplus=softplus, return_last_state=True,
                                      initial_state=h1)
        return torch.cat([out1, out2], dim=-1), h2

    want, got = scan_outputs_and_grads(x, whole), scan_outputs_and_grads(x, split)
    torch.testing.assert_close(got[0], want[0], **tol(torch.float32))
    torch.testing.assert_close(got[1], want[1], **tol(torch.float32))
    for name in SCAN_INPUTS:
        torch.testing.assert_close(got[2][name], want[2][name], **tol(torch.float32), msg=name)


def test_initial_state_zeros_is_the_default_and_its_gradient_is_exact():
    """initial_state=0 changes nothing; the output is linear in h_0, so a central
    difference of <out, w> in one entry of h_0 equals the gradient up to rounding."""
    x = make_inputs(2, 4, 6, 3, "BGNL")
    h0 = torch.randn(2, 4, 3, requires_grad=True)
    w = torch.randn(2, 4, 6)
    torch.testing.assert_close(selective_scan_ref(**x, initial_state=torch.zeros(2, 4, 3)),
                               selective_scan_ref(**x), rtol=0, atol=0)
    f = lambda h: (selective_scan_ref(**x, delta_softplus=True, initial_state=h) * w).sum()
    (grad,) = torch.autograd.grad(f(h0), h0)
    for idx in [(0, 0, 0), (1, 3, 2), (0, 2, 1)]:
        e = torch.zeros_like(h0)
        e[idx] = 1.0
        fd = (f(h0.detach() + e) - f(h0.detach() - e)) / 2
        torch.testing.assert_close(grad[idx], fd.detach(), **tol(torch.float32))
    assert grad.abs().min() > 0  # every entry of h_0 reaches the output


def test_bad_initial_state_raises():
    x = make_inputs(2, 4, 5, 3, "BNL")
    with pytest.raises(ValueError, match=r"initial_state must have shape \(B, D, N\) = \(2, 4, 3\)"):
        selective_scan_ref(**x, initial_state=torch.zeros(2, 4, 5))
    with pytest.raises(TypeError, match="initial_state must have a floating dtype"):
        selective_scan_ref(**x, initial_state=torch.zeros(2, 4, 3, dtype=torch.long))


def test_scan_gradients_match_hand_loop():
    x = make_inputs(1, 2, 5, 2, "BNL")
    leaves = {k: x[k].double().requires_grad_() for k in ("u", "delta", "B", "C")}
    out = selective_scan_ref(leaves["u"], leaves["delta"], x["A"].double(), leaves["B"], leaves["C"])
    g1 = torch.autograd.grad(out.sum(), list(leaves.values()))
    # finite differences of the hand loop on one entry per input
    for name, g in zip(leaves, g1):
        eps = 1e-6
        bumped = {k: v.detach().clone() for k, v in leaves.items()}
        bumped[name].view(-1)[0] += eps
        f1 = scan_by_hand(bumped["u"], bumped["delta"], x["A"], bumped["B"], bumped["C"])[0].sum()
        f0 = scan_by_hand(*(leaves[k].detach() for k in ("u", "delta")), x["A"],
                          leaves["B"].detach(), leaves["C"].detach())[0].sum()
        fd, ad = (f1 - f0).item() / eps, g.reshape(-1)[0].item()
        assert abs(fd - ad) < 1e-3 * (1 + abs(fd)), (name, fd, ad)


@pytest.mark.parametrize("change, match", [
    (dict(delta=torch.rand(2, 4, 6)), "delta must have shape"),
    (dict(A=-torch.rand(3, 3)), "A must have shape"),
    (dict(B=torch.randn(2, 3, 6)), "B must have shape"),
    (dict(B=torch.randn(2, 3, 3, 7)), "B must have shape"),  # G = 3 does not divide D = 4
    (dict(C=torch.randn(4, 3)), "B and C must both"),
    (dict(D=torch.randn(5)), "D must have shape"),
    (dict(z=torch.randn(2, 4)), "z must have shape"),
    (dict(delta_bias=torch.randn(4, 1)), "delta_bias must have shape"),
    (dict(u=torch.randn(4, 7)), "u must have shape"),
])
def test_bad_inputs_raise(change, match):
    x = make_inputs(2, 4, 7, 3, "BNL")
    x.update(change)
    with pytest.raises(ValueError, match=match):
        selective_scan_ref(**x)


def test_empty_sequence_and_int_dtype_raise():
    x = make_inputs(1, 2, 1, 2, "DN")
    with pytest.raises(ValueError, match="L >= 1"):
        check_selective_scan_args(torch.zeros(1, 2, 0), torch.zeros(1, 2, 0), x["A"], x["B"], x["C"])
    with pytest.raises(TypeError, match="u must have a floating dtype"):
        selective_scan_ref(x["u"].long(), x["delta"], x["A"], x["B"], x["C"])


# ----------------------------------------------------------------------------- S6 layer
def test_dt_bias_init_in_range():
    dt = F.softplus(dt_bias_init(1000, dt_min=1e-3, dt_max=0.1))
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
    assert dt.log().std() > 0.5  # log-uniform, not constant


def test_s6_init_and_shapes():
    layer = S6(8, 4, dt_rank=1)
    torch.testing.assert_close(layer.A, -torch.arange(1.0, 5.0).expand(8, 4))  # S4D-Real
    assert layer.x_proj.out_features == 1 + 2 * 4
    assert layer(torch.randn(3, 8, 11)).shape == (3, 8, 11)
    assert [dt_rank_rule(d) for d in (8, 16, 17, 768)] == [1, 1, 2, 48]  # ceil(d_model / 16)


def test_s6_equals_scan_of_its_parameters():
    """forward (bias and softplus inside the scan) == scan of delta, B, C from ssm_params."""
    layer = S6(8, 4, dt_rank=2)
    x, z = torch.randn(2, 8, 10), torch.randn(2, 8, 10)
    delta, Bt, Ct = layer.ssm_params(x)
    expect = selective_scan_ref(x, delta, layer.A, Bt, Ct, D=layer.D, z=z)
    torch.testing.assert_close(layer(x, z=z), expect, **tol(torch.float32))


@pytest.mark.parametrize("gated", [False, True])
def test_s6_step_equals_forward(gated):
    """S6.step token by token (the decoding path) == forward, outputs and the last state."""
    layer = S6(6, 3, dt_rank=1)
    x = torch.randn(2, 6, 8)
    z = torch.randn(2, 6, 8) if gated else None
    y, last = layer(x, z, return_last_state=True)
    state = torch.zeros(2, 6, 3)
    steps = [layer.step(state, x[..., t], None if z is None else z[..., t]) for t in range(8)]
    torch.testing.assert_close(torch.stack(steps, -1), y, **tol(torch.float32))
    torch.testing.assert_close(state, last, **tol(torch.float32))


def test_s6_input_dependent_delta_and_gradients():
    layer = S6(8, 4, dt_rank=1)
    x = torch.randn(1, 8, 6)
    delta, _, _ = layer.ssm_params(x)
    assert delta.std(dim=-1).min() > 0  # delta changes from token to token
    layer(x).square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_scan_functions_pick_by_path_and_device():
    ref = (selective_scan_ref, selective_state_update_ref)
    assert scan_functions(torch.zeros(1), "ref") == ref
    assert scan_functions(torch.zeros(1), "auto") == ref  # a CPU tensor
    with pytest.raises(ValueError, match="path"):
        S6(4, 2, 1, path="triton")
    x = torch.randn(2, 5, 8).transpose(1, 2)  # (B, D, L) with time stride 8
    assert time_contiguous(x).stride(-1) == 1 and time_contiguous(x.contiguous()) is not x
    assert time_contiguous(None) is None


@needs_kernels
def test_s6_kernel_path_takes_transposed_views(device):
    """S6 with path="kernel" calls the Triton kernels (on a CPU in Triton's interpreter),
    which refuse inputs whose time axis is not stride 1; a Mamba block hands S6 its gate as
    a transposed view of the input projection (stride 2D along time). The kernel path's
    outputs, gradients and decoding steps equal the reference path's."""
    torch.manual_seed(0)
    layer = S6(8, 4, dt_rank=1).to(device)
    xz = torch.randn(2, 9, 16, device=device, requires_grad=True)  # (B, L, 2D), as in_proj leaves it
    x, z = xz.transpose(1, 2).chunk(2, dim=1)  # (B, D, L) views, time stride 16
    assert z.stride(-1) == 16 and x.stride(-1) == 16
    outs = {}
    for path in ("ref", "kernel"):
        layer.path = path
        y, last = layer(x, z=z, return_last_state=True)
        grads = torch.autograd.grad(y.square().sum(), [xz, *layer.parameters()])
        state = torch.zeros(2, 8, 4, device=device)
        with torch.no_grad():
            step = layer.step(state, x[..., 0].detach(), z[..., 0].detach())
        outs[path] = (y, last, *grads, step, state)
    for got, want in zip(outs["kernel"], outs["ref"]):
        torch.testing.assert_close(got, want, **tol(torch.float32))


def test_s6_bad_input():
    with pytest.raises(ValueError, match="x must have shape"):
        S6(8, 4, 1)(torch.randn(2, 7, 5))
