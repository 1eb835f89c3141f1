"""mambabook.kernels.selective_state_update against selective_state_update_ref: the output
and the state updated in place; and a run of steps equals the selective scan."""

import os
import subprocess
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# the device of the non-gpu tests: CUDA when present (compiled kernels), else the interpreter
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

import pytest  # noqa: E402
from helpers import compile_for_sm90, tol  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import mambabook.kernels  # noqa: E402
from mambabook.kernels.state_update import selective_state_update  # noqa: E402
from mambabook.selective import selective_scan_ref, selective_state_update_ref  # noqa: E402


def make_step(bsz, dim, dstate, groups=None, has_D=True, has_z=True, has_bias=True,
              dtype=torch.float32, state_dtype=torch.float32, device=DEVICE):
    state = torch.randn(bsz, dim, dstate, device=device).to(state_dtype)
    x = torch.randn(bsz, dim, device=device).to(dtype)
    dt = (0.5 * torch.rand(bsz, dim, device=device) - 0.2).to(dtype)
    A = -(0.5 + torch.rand(dim, dstate, device=device))
    shape = (bsz, dstate) if groups is None else (bsz, groups, dstate)
    B = torch.randn(shape, device=device).to(dtype)
    C = torch.randn(shape, device=device).to(dtype)
    D = torch.randn(dim, device=device) if has_D else None
    z = torch.randn(bsz, dim, device=device).to(dtype) if has_z else None
    dt_bias = 0.3 * torch.randn(dim, device=device) if has_bias else None
    return dict(state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)


def check_step(inputs, softplus, dtype):
    ours = {**inputs, "state": inputs["state"].clone()}
    ref = {**inputs, "state": inputs["state"].clone()}
    out = selective_state_update(**ours, dt_softplus=softplus)
    out_ref = selective_state_update_ref(**ref, dt_softplus=softplus)
    assert out.dtype == out_ref.dtype == inputs["x"].dtype
    torch.testing.assert_close(out, out_ref, **tol(dtype))
    torch.testing.assert_close(ours["state"], ref["state"], **tol(dtype))



@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_update_from_A_log(dtype):
    """A_is_log: the kernel takes A = -exp(A_log) itself; the same step as A given."""
    inputs = make_step(3, 24, 16, groups=2, dtype=dtype)
    A_log = torch.log(-inputs["A"]).to(dtype)
    given_A = {**inputs, "A": -torch.exp(A_log.float()), "state": inputs["state"].clone()}
    ours = {**inputs, "A": A_log, "state": inputs["state"].clone()}
    ref = {**inputs, "A": A_log, "state": inputs["state"].clone()}
    out = selective_state_update(**ours, dt_softplus=True, A_is_log=True)
    out_ref = selective_state_update_ref(**ref, dt_softplus=True, A_is_log=True)
    out_given = selective_state_update_ref(**given_A, dt_softplus=True)
    torch.testing.assert_close(out, out_ref, **tol(dtype))
    torch.testing.assert_close(ours["state"], ref["state"], **tol(dtype))
    torch.testing.assert_close(out_ref, out_given, rtol=0, atol=0)
    torch.testing.assert_close(ref["state"], given_A["state"], rtol=0, atol=0)

@settings(max_examples=20, deadline=None)
@given(
    bsz=st.integers(1, 3), dim=st.integers(1, 40), dstate=st.integers(1, 20),
    grouped=st.booleans(), has_D=st.booleans(), has_z=st.booleans(), has_bias=st.booleans(),
    softplus=st.booleans(),
)
def test_state_update_matches_ref(bsz, dim, dstate, grouped, has_D, has_z, has_bias, softplus):
    groups = next(g for g in (4, 3, 2, 1) if dim % g == 0) if grouped else None
    inputs = make_step(bsz, dim, dstate, groups, has_D, has_z, has_bias)
    check_step(inputs, softplus, torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_state_update_half_inputs(dtype):
    check_step(make_step(2, 37, 16, dtype=dtype), True, dtype)
    check_step(make_step(2, 37, 16, dtype=dtype, state_dtype=dtype), True, dtype)


def test_state_update_strided_views():
    """Every operand as a strided view (state a slice of a wider cache, x and dt columns of
    a (B, 2D) tensor, D and dt_bias every other element, A transposed): the kernel reads
    each at its strides (D and dt_bias once were read at unit stride: a wrong answer) and
    updates the view in place, leaving the rest of the cache untouched."""
    bsz, dim, dstate = 2, 6, 4
    base = make_step(bsz, dim, dstate)
    cache = torch.randn(bsz, dim, dstate + 3)
    cache[..., :dstate] = base["state"]
    xs, dts = torch.randn(bsz, 2 * dim), torch.randn(bsz, 2 * dim)
    xs[:, ::2], dts[:, ::2] = base["x"], base["dt"]
    Ds, biases = torch.randn(2 * dim), torch.randn(2 * dim)
    Ds[::2], biases[::2] = base["D"], base["dt_bias"]
    views = dict(base, x=xs[:, ::2], dt=dts[:, ::2], A=base["A"].t().contiguous().t(),
                 D=Ds[::2], dt_bias=biases[::2])
    assert not views["A"].is_contiguous() and views["D"].stride(0) == 2
    rest = cache[..., dstate:].clone()
    ref = dict(base, state=base["state"].clone())
    out = selective_state_update(**dict(views, state=cache[..., :dstate]), dt_softplus=True)
    out_ref = selective_state_update_ref(**ref, dt_softplus=True)
    torch.testing.assert_close(out, out_ref, **tol(torch.float32))
    torch.testing.assert_close(cache[..., :dstate], ref["state"], **tol(torch.float32))
    assert torch.equal(cache[..., dstate:], rest)


def test_state_update_steps_equal_the_scan():
    """L steps from a zero state give selective_scan_ref's outputs and last state."""
    bsz, dim, dstate, length = 2, 9, 5, 6
    r = lambda *s: torch.randn(*s, device=DEVICE)
    u, delta = r(bsz, dim, length), torch.rand(bsz, dim, length, device=DEVICE)
    A, D, bias = -torch.rand(dim, dstate, device=DEVICE) - 0.5, r(dim), r(dim)
    B, C, z = r(bsz, dstate, length), r(bsz, dstate, length), r(bsz, dim, length)
    state = torch.zeros(bsz, dim, dstate, device=DEVICE)
    outs = [mambabook.kernels.selective_state_update(
        state, u[..., t], delta[..., t], A, B[..., t], C[..., t], D, z[..., t], bias, True)
        for t in range(length)]
    out_ref, last_ref = selective_scan_ref(u, delta, A, B, C, D, z, bias, True, True)
    torch.testing.assert_close(torch.stack(outs, -1), out_ref, **tol(torch.float32))
    torch.testing.assert_close(state, last_ref, **tol(torch.float32))


def test_state_update_bad_inputs():
    good = make_step(2, 8, 4, device="cpu")  # validation runs before any kernel
    with pytest.raises(ValueError, match="x"):
        selective_state_update(**{**good, "x": torch.randn(2, 7)})
    with pytest.raises(ValueError, match="B"):
        selective_state_update(**{**good, "B": torch.randn(2, 5)})
    with pytest.raises(ValueError, match="C"):
        selective_state_update(**{**good, "C": torch.randn(2, 3, 4)})  # 3 does not divide 8
    with pytest.raises(ValueError, match="A"):
        selective_state_update(**{**good, "A": torch.randn(8, 5)})
    with pytest.raises(ValueError, match="state"):
        selective_state_update(**{**good, "state": torch.randn(2, 8)})
    with pytest.raises(ValueError, match="N <= 256"):
        big = make_step(1, 2, 257, device="cpu")
        selective_state_update(**big)
    with pytest.raises(TypeError, match="x"):
        selective_state_update(**{**good, "x": good["x"].double()})
    with pytest.raises(ValueError, match="device"):
        selective_state_update(**{**good, "z": torch.randn(2, 8, device="meta")})


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_update_gpu_decoding_size(dtype):
    check_step(make_step(128, 5120, 16, dtype=dtype, device="cuda"), True, dtype)
    check_step(make_step(16, 1536, 16, groups=4, dtype=dtype, device="cuda"), True, dtype)


_NO_INTERPRETER = """
import pytest, torch
from mambabook.kernels import selective_scan, selective_state_update
state = torch.zeros(1, 2, 3)
x = dt = torch.rand(1, 2)
A, Bv = -torch.rand(2, 3), torch.rand(1, 3)
with pytest.raises(ValueError, match="state is on the CPU.*TRITON_INTERPRET=1"):
    selective_state_update(state, x, dt, A, Bv, Bv)
u = torch.rand(1, 2, 4)
with pytest.raises(ValueError, match="u is on the CPU.*TRITON_INTERPRET=1"):
    selective_scan(u, u, A, torch.rand(1, 3, 4), torch.rand(1, 3, 4))
print("refused")
"""


def test_cpu_without_interpreter_is_a_clear_error():
    """On CPU tensors in a process without Triton's interpreter: a ValueError that says
    what to do (the interpreter is chosen when triton is imported, hence a new process)."""
    if torch.cuda.is_available():
        pytest.skip("the check is for CPU tensors")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", _NO_INTERPRETER], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.split() == ["refused"], done.stderr[-2000:]


def test_state_update_compiles_for_sm90():
    """The step's launches compile for an H100/H200 (sm_90) on this machine, GPU or not:
    float32 with every option and A given, float32 with none, bfloat16 with A_log (the Mamba block's step)."""
    kern = dict(_module="mambabook.kernels.state_update",
                _kernel="_selective_state_update_kernel", BLOCK_D=64, BLOCK_N=16, _num_warps=2)
    compile_for_sm90([
        dict(kern, SOFTPLUS=True, A_LOG=False),
        dict(kern, D_ptr=None, z_ptr=None, bias_ptr=None, SOFTPLUS=False, A_LOG=False),
        dict(kern, SOFTPLUS=True, A_LOG=True,
             _bf16=["x_ptr", "dt_ptr", "A_ptr", "B_ptr", "C_ptr", "D_ptr", "z_ptr",
                    "bias_ptr", "out_ptr"]),
    ])
