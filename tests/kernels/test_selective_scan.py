"""mambabook.kernels.selective_scan against selective_scan_ref: outputs, last state,
checkpoints and gradients, for each shipped forward (loop, lanes, states) and the backward.

On a CPU the kernels run under TRITON_INTERPRET=1 at small sizes; the tests call each
forward and the backward with explicit parameters (a short checkpoint interval, a number
of segments) so that the carried state and the carried gradient cross several chunks and
segments. The `gpu` tests repeat the checks at real sizes, with the shipped launches, and
run L = 1,000,000.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# the device of the non-gpu tests: CUDA when present (compiled kernels), else the interpreter
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

import pytest  # noqa: E402
from helpers import compile_for_sm90, tol  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mambabook.kernels import selective_scan  # noqa: E402
from mambabook.kernels.common import rows_layout_in  # noqa: E402
from mambabook.kernels.scan_backward import scan_backward  # noqa: E402
from mambabook.kernels.scan_states import scan_forward_states  # noqa: E402
from mambabook.kernels.selective_scan import FORWARDS, forward_for  # noqa: E402
from mambabook.selective import selective_scan_ref  # noqa: E402

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def make_inputs(bsz, dim, length, dstate, layout="BNL", groups=1, has_D=True, has_z=True,
                has_bias=True, dtype=torch.float32, device=DEVICE):
    """Random inputs in the ranges Mamba uses: delta > 0 small, A < 0."""
    u = torch.randn(bsz, dim, length, device=device).to(dtype)
    delta = (0.5 * torch.rand(bsz, dim, length, device=device) - 0.2).to(dtype)
    A = -(0.5 + torch.rand(dim, dstate, device=device))
    if layout == "DN":
        B, C = torch.randn(dim, dstate, device=device), torch.randn(dim, dstate, device=device)
    elif layout == "BNL":
        B = torch.randn(bsz, dstate, length, device=device).to(dtype)
        C = torch.randn(bsz, dstate, length, device=device).to(dtype)
    else:
        B = torch.randn(bsz, groups, dstate, length, device=device).to(dtype)
        C = torch.randn(bsz, groups, dstate, length, device=device).to(dtype)
    D = torch.randn(dim, device=device) if has_D else None
    z = torch.randn(bsz, dim, length, device=device).to(dtype) if has_z else None
    bias = 0.3 * torch.randn(dim, device=device) if has_bias else None
    return dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=bias)


def ref_with_grads(inputs, softplus, dout=None):
    """selective_scan_ref's out and last state (float32 inputs), and with dout the gradient
    of every input given (in the input's dtype)."""
    leaves = {k: (v.detach().float().requires_grad_() if v is not None else None)
              for k, v in inputs.items()}
    out, last = selective_scan_ref(**leaves, delta_softplus=softplus, return_last_state=True)
    if dout is None:
        return out, last, None
    names = [k for k in NAMES if leaves[k] is not None]
    grads = torch.autograd.grad(out, [leaves[k] for k in names], dout.float())
    return out, last, {k: g.to(inputs[k].dtype) for k, g in zip(names, grads)}


def states_every(inputs, softplus, chunk):
    """The reference's state before every `chunk` steps: (B, D, ceil(L / chunk), N)."""
    length = inputs["u"].shape[-1]
    cut = {k: v for k, v in inputs.items() if k not in ("D", "z")}
    rows = [torch.zeros_like(ref_with_grads(dict(cut, D=None, z=None), softplus)[1])]
    for t in range(chunk, length, chunk):
        part = {k: (v[..., :t].contiguous() if v is not None and v.dim() >= 3 else v)
                for k, v in cut.items()}
        rows.append(ref_with_grads(dict(part, D=None, z=None), softplus)[1])
    return torch.stack(rows, dim=2)


def groups_for(dim, layout):
    return next(g for g in (3, 2, 1) if dim % g == 0) if layout == "BGNL" else 1


# The shapes and options hypothesis draws: L = 1 and odd L, D not a multiple of the block,
# all three B/C layouts, each optional input on and off.
CASES = dict(
    bsz=st.integers(1, 2),
    dim=st.integers(1, 9),
    length=st.one_of(st.just(1), st.integers(2, 40)),
    dstate=st.integers(1, 6),
    layout=st.sampled_from(["BNL", "BGNL", "DN"]),
    has_D=st.booleans(), has_z=st.booleans(), has_bias=st.booleans(), softplus=st.booleans(),
)
# checkpoint intervals each forward accepts under the interpreter (states: chunks of 8)
CHUNKS = {"loop": [4, 8, 16], "lanes": [4, 8, 16], "states": [8, 16]}


@pytest.mark.parametrize("forward", sorted(FORWARDS))
@settings(max_examples=12, deadline=None)
@given(**CASES, data=st.data())
def test_forward_matches_ref(forward, bsz, dim, length, dstate, layout, has_D, has_z,
                             has_bias, softplus, data):
    """Each shipped forward: out, last state and the checkpoints equal the reference's."""
    chunk = data.draw(st.sampled_from(CHUNKS[forward]), label="chunk")
    inputs = make_inputs(bsz, dim, length, dstate, layout, groups_for(dim, layout), has_D,
                         has_z, has_bias)
    out, last, ckpt = FORWARDS[forward](*inputs.values(), softplus, chunk)
    out_ref, last_ref, _ = ref_with_grads(inputs, softplus)
    torch.testing.assert_close(out, out_ref, **tol(torch.float32))
    torch.testing.assert_close(last, last_ref, **tol(torch.float32))
    torch.testing.assert_close(ckpt, states_every(inputs, softplus, chunk),
                               **tol(torch.float32))


@settings(max_examples=16, deadline=None)
@given(**CASES, chunk=st.sampled_from([4, 8, 16]), n_seg=st.integers(1, 4),
       split=st.integers(1, 4))
def test_backward_matches_ref(bsz, dim, length, dstate, layout, has_D, has_z, has_bias,
                              softplus, chunk, n_seg, split):
    """The backward from the forward's checkpoints: every input's gradient equals autograd
    through the reference, with several chunks, segments and PASS 1 sub-segments."""
    inputs = make_inputs(bsz, dim, length, dstate, layout, groups_for(dim, layout), has_D,
                         has_z, has_bias)
    _, _, ckpt = FORWARDS["loop"](*inputs.values(), softplus, chunk)
    dout = torch.randn_like(inputs["u"])
    _, _, want = ref_with_grads(inputs, softplus, dout)
    got = scan_backward(dout, *inputs.values(), softplus, ckpt, chunk, n_seg=n_seg,
                        split=split)
    for name, g in zip(NAMES, got):
        if inputs[name] is None:
            assert g is None, name
            continue
        assert g.shape == inputs[name].shape and g.dtype == inputs[name].dtype, name
        torch.testing.assert_close(g, want[name], **tol(torch.float32),
                                   msg=lambda m, n=name: f"d{n}: {m}")


def check_public(inputs, softplus, dtype, forward=None):
    """selective_scan (autograd, the default checkpoint interval) against the reference:
    out, last state, and the gradient of every input given."""
    leaves = {k: (v.detach().clone().requires_grad_() if v is not None else None)
              for k, v in inputs.items()}
    out, last = selective_scan(**leaves, delta_softplus=softplus, return_last_state=True,
                               forward=forward)
    assert out.dtype == inputs["u"].dtype and last.dtype == torch.float32
    dout = torch.randn_like(out)
    out_ref, last_ref, want = ref_with_grads(inputs, softplus, dout)
    torch.testing.assert_close(out, out_ref.to(dtype), **tol(dtype))
    torch.testing.assert_close(last, last_ref, **tol(dtype))
    names = [k for k in NAMES if leaves[k] is not None]
    got = torch.autograd.grad(out, [leaves[k] for k in names], dout)
    for name, g in zip(names, got):
        assert g.shape == inputs[name].shape and g.dtype == inputs[name].dtype, name
        torch.testing.assert_close(g, want[name], **tol(dtype),
                                   msg=lambda m, n=name: f"d{n}: {m}")


@pytest.mark.parametrize("forward", [None, *sorted(FORWARDS)])
@pytest.mark.parametrize("layout", ["BNL", "BGNL", "DN"])
def test_selective_scan_matches_ref(forward, layout):
    """The public function end to end: forward (the rule's or a named one), checkpoints at
    the default interval, backward; L spans several chunks and D is not a multiple of 8."""
    check_public(make_inputs(2, 12, 45, 5, layout, groups=3), True, torch.float32, forward)


@pytest.mark.parametrize("forward", sorted(FORWARDS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_selective_scan_half_inputs(forward, dtype):
    """2-byte u, delta, z, B, C (float32 A, D, delta_bias): computed in float32, out and
    gradients in the inputs' dtypes; bfloat16 read as int32 pairs where aligned."""
    check_public(make_inputs(1, 16, 64, 8, dtype=dtype), True, dtype, forward)


@pytest.mark.parametrize("forward", sorted(FORWARDS))
def test_forward_without_checkpoints(forward):
    """Inference (no input needs a gradient): no checkpoints are saved, out and the last
    state still match the reference, in the public function and each forward."""
    inputs = make_inputs(2, 6, 21, 5)
    out_ref, last_ref, _ = ref_with_grads(inputs, True)
    out, last, ckpt = FORWARDS[forward](*inputs.values(), True, None)
    assert ckpt is None
    torch.testing.assert_close(out, out_ref, **tol(torch.float32))
    torch.testing.assert_close(last, last_ref, **tol(torch.float32))
    out, last = selective_scan(**inputs, delta_softplus=True, return_last_state=True,
                               forward=forward)
    torch.testing.assert_close(out, out_ref, **tol(torch.float32))


def test_states_forward_at_an_odd_address():
    """A bfloat16 view that starts at an odd element cannot be read as int32 pairs: the
    states forward reads it element by element and still matches the reference."""
    inputs = make_inputs(1, 8, 33, 4, dtype=torch.bfloat16)
    wide = torch.randn(1, 8, 34, device=DEVICE).to(torch.bfloat16)
    wide[..., 1:] = inputs["u"][..., :33]
    inputs = dict(inputs, u=wide[..., 1:])
    out, last, _ = scan_forward_states(*inputs.values(), True, None)
    out_ref, last_ref, _ = ref_with_grads(inputs, True)
    torch.testing.assert_close(out, out_ref.to(torch.bfloat16), **tol(torch.bfloat16))
    torch.testing.assert_close(last, last_ref, **tol(torch.bfloat16))


def test_states_forward_refuses_bad_chunks():
    """Chunks of the states forward must be whole loads, whole rows and divide the
    checkpoint interval: anything else is refused, not computed wrongly."""
    inputs = make_inputs(1, 8, 32, 4)
    with pytest.raises(ValueError, match="checkpoint interval"):
        scan_forward_states(*inputs.values(), True, 12, t=8)
    with pytest.raises(ValueError, match="rows per channel"):
        scan_forward_states(*inputs.values(), True, None, t=6)


def test_forward_rule():
    """The fixed rule: states for 2-byte inputs and lanes for float32 on a GPU with N <= 32,
    the loop for larger N, on other devices and under the interpreter."""
    assert forward_for("cuda", 2, 16, interpret=False) == "states"
    assert forward_for("cuda", 4, 16, interpret=False) == "lanes"
    assert forward_for("cuda", 4, 32, interpret=False) == "lanes"
    assert forward_for("cuda", 2, 33, interpret=False) == "loop"
    assert forward_for("cuda", 2, 16, interpret=True) == "loop"
    assert forward_for("cpu", 4, 16, interpret=False) == "loop"
    with pytest.raises(ValueError, match="forward"):
        selective_scan(**make_inputs(1, 2, 3, 2), forward="fast")


def test_selective_scan_bad_inputs():
    good = make_inputs(1, 4, 6, 3, device="cpu")  # validation runs before any kernel
    with pytest.raises(ValueError, match="u"):  # not contiguous along L
        selective_scan(**{**good, "u": torch.randn(1, 6, 4).transpose(1, 2)})
    with pytest.raises(ValueError, match="B"):  # not contiguous along L
        selective_scan(**{**good, "B": torch.randn(1, 6, 3).transpose(1, 2)})
    with pytest.raises(ValueError, match="N <= 64"):
        selective_scan(**{**good, "A": -torch.rand(4, 65), "B": torch.randn(1, 65, 6),
                          "C": torch.randn(1, 65, 6)})
    with pytest.raises(ValueError, match="delta"):  # L mismatch
        selective_scan(**{**good, "delta": torch.rand(1, 4, 7)})
    with pytest.raises(ValueError, match="C"):  # N mismatch
        selective_scan(**{**good, "C": torch.randn(1, 2, 6)})
    with pytest.raises(ValueError, match="A"):  # D mismatch
        selective_scan(**{**good, "A": -torch.rand(5, 3)})
    with pytest.raises(ValueError, match="u"):  # wrong rank
        selective_scan(**{**good, "u": torch.randn(4, 6)})
    with pytest.raises(TypeError, match="u"):  # float64 is not a kernel dtype
        selective_scan(**{**good, "u": good["u"].double()})
    with pytest.raises(ValueError, match="device"):
        selective_scan(**{**good, "D": torch.randn(4, device="meta")})


# ----------------------------------------------------------------------------- layouts
ROWS = ("#blocked1 = #ttg.blocked<{sizePerThread = [1, 4], threadsPerWarp = [32, 1], "
        "warpsPerCTA = [1, 1], order = [1, 0]}>")
SPREAD = ("#blocked1 = #ttg.blocked<{sizePerThread = [1, 1], threadsPerWarp = [8, 4], "
          "warpsPerCTA = [1, 1], order = [1, 0]}>")
SHUFFLE = ('%y = tt.elementwise_inline_asm "shfl.sync.bfly.b32 $0, $1, $2, 0x1f, -1;" '
           '{constraints = "=r,r,r", packed_element = 1 : i32, pure = true} %x, %m : '
           'tensor<32x4xi32, #blocked1>, tensor<32x4xi32, #blocked1> -> '
           'tensor<32x4xi32, #blocked1>')


def test_shuffles_need_rows_along_lanes():
    """Shuffles are trusted only where the TTGIR puts one row per lane (a blocked layout,
    or a linear one that is the same): a warp spread over steps, an unknown layout or no
    shuffle at all is refused (the wrappers then take the path without shuffles)."""
    assert rows_layout_in(ROWS + "\n" + SHUFFLE)
    assert not rows_layout_in(SPREAD + "\n" + SHUFFLE)
    assert not rows_layout_in(ROWS + "\n" + SHUFFLE.replace("#blocked1>", "#linear>"))
    assert not rows_layout_in(ROWS)
    split = ROWS.replace("warpsPerCTA = [1, 1]", "warpsPerCTA = [1, 2]")
    assert not rows_layout_in(split + "\n" + SHUFFLE)
    linear = ("#linear = #ttg.linear<{register = [[0, 1]], lane = [[1, 0], [2, 0], [4, 0], "
              "[8, 0], [16, 0]], warp = [], block = []}>")
    on_linear = SHUFFLE.replace("tensor<32x4xi32, #blocked1> -> tensor<32x4xi32, #blocked1>",
                                "tensor<32x2xi32, #linear> -> tensor<32x2xi32, #linear>")
    assert rows_layout_in(ROWS + "\n" + linear + "\n" + SHUFFLE + "\n" + on_linear)
    spread = linear.replace("[[0, 1]], lane = [[1, 0], [2, 0]", "[[1, 0]], lane = [[0, 1], [2, 0]")
    assert not rows_layout_in(ROWS + "\n" + spread + "\n" + SHUFFLE + "\n" + on_linear)


# ----------------------------------------------------------------------------- sm_90
HALF = ["u_ptr", "delta_ptr", "B_ptr", "C_ptr", "z_ptr", "out_ptr", "dout_ptr", "du_ptr",
        "ddelta_ptr", "dz_ptr"]


def test_shipped_launches_compile_for_sm90():
    """The shipped GPU launches compile for an H100/H200 (sm_90) on this machine, GPU or
    not (in a process without the interpreter, which does not see what only the compiler
    rejects): the states forward in bfloat16 (pairs, checkpoints) and masked with absent
    D, z, bias; the lanes forward in float32 with checkpoints and an initial state, and
    masked without either; the loop forward at N = 64; the backward's two passes in
    float32 and its bfloat16 pass 2 (packed B, C)."""
    kern = "mambabook.kernels."
    states = dict(_module=kern + "scan_states", _kernel="_scan_fwd_states_kernel",
                  SOFTPLUS=True, VARYING_BC=True, NL=4, T=16, PTX=True)
    lanes = dict(_module=kern + "scan_lanes", _kernel="_scan_fwd_lanes_kernel", SOFTPLUS=True,
                 VARYING_BC=True, N=16, CPW=8, T=16, V=4, PAIRS=False, _maxnreg=128)
    bwd = dict(_module=kern + "scan_backward", _kernel="_scan_bwd_kernel", SOFTPLUS=True,
               VARYING_BC=True, BLOCK_D=32, R=2, BFLY=32, _maxnreg=168)
    specs = [
        dict(states, N=16, CHUNK=16, EVEN=True, PAIRS=True, _bf16=HALF),
        dict(states, N=5, CHUNK=16, EVEN=False, PAIRS=False, D_ptr=None, z_ptr=None,
             bias_ptr=None, ckpt_ptr=None),
        dict(lanes, CHUNK=32, EVEN=True),
        dict(lanes, CHUNK=16, EVEN=False, ckpt_ptr=None, z_ptr=None, h0_ptr=None),
        dict(_module=kern + "scan_loop", _kernel="_scan_fwd_loop_kernel", SOFTPLUS=True,
             VARYING_BC=True, CHUNK=16, PASS=2, BLOCK_D=2, BLOCK_N=64, ckpt_ptr=None,
             h0_ptr=None),
        dict(bwd, T=4, CHUNK=32, PASS=1, EVEN=True, BCL=0),
        dict(bwd, T=4, CHUNK=32, PASS=2, EVEN=False, BCL=1),
        dict(bwd, T=8, CHUNK=16, PASS=2, EVEN=True, BCL=2, _bf16=HALF),
    ]
    compile_for_sm90(specs)


# ----------------------------------------------------------------------------- GPU, real sizes
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["BNL", "BGNL", "DN"])
def test_selective_scan_gpu(dtype, layout):
    """The rule's forward and the backward at Mamba's sizes (the shipped launches)."""
    check_public(make_inputs(2, 768, 2048, 16, layout, groups=4, dtype=dtype, device="cuda"),
                 True, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("forward", sorted(FORWARDS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_selective_scan_gpu_each_forward_odd_sizes(forward, dtype):
    """Every forward on a GPU at sizes that need masks: D and L not multiples of any block,
    no D, z or bias."""
    inputs = make_inputs(3, 131, 1001, 16, has_D=False, has_z=False, has_bias=False,
                         dtype=dtype, device="cuda")
    check_public(inputs, False, dtype, forward)


@pytest.mark.gpu
def test_selective_scan_gpu_large_state():
    """N = 64 runs the loop forward (its rule) and the backward, against the reference."""
    check_public(make_inputs(2, 64, 512, 64, device="cuda"), True, torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_selective_scan_gpu_one_million_steps(dtype):
    """L = 1,000,000: finite outputs, state and gradients; the first 4096 outputs equal those
    of the kernel run on the first 4096 steps alone (causality)."""
    inputs = make_inputs(1, 128, 1_000_000, 16, dtype=dtype, device="cuda")
    leaves = {k: v.requires_grad_() if v is not None else None for k, v in inputs.items()}
    out, last = selective_scan(**leaves, delta_softplus=True, return_last_state=True)
    assert torch.isfinite(out).all() and torch.isfinite(last).all()
    grads = torch.autograd.grad(out.float().square().mean(), list(leaves.values()))
    for name, g in zip(leaves, grads):
        assert torch.isfinite(g).all(), name
    with torch.no_grad():
        prefix = {k: (v[..., :4096].contiguous() if v.dim() >= 3 else v).detach()
                  for k, v in leaves.items()}
        head = selective_scan(**prefix, delta_softplus=True)
    torch.testing.assert_close(out[..., :4096].detach(), head, **tol(dtype))


@pytest.mark.parametrize("forward", sorted(FORWARDS))
@settings(max_examples=4, deadline=None)
@given(layout=st.sampled_from(["BNL", "BGNL", "DN"]), length=st.integers(2, 40),
       data=st.data())
def test_sequence_in_two_pieces(forward, layout, length, data):
    """Scanning [0, t) and then [t, L) from the first piece's last state equals scanning the
    whole: outputs, last state, and every input's gradient through the initial state and
    the last state (a loss on both)."""
    t = data.draw(st.integers(1, length - 1), label="t")
    inputs = make_inputs(2, 6, length, 5, layout, groups=2)
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}

    def piece(a, b):
        return {k: (v[..., a:b] if k in ("u", "delta", "z") or (k in "BC" and v.dim() > 2)
                    else v) for k, v in leaves.items()}

    out1, h1 = selective_scan(**piece(0, t), delta_softplus=True, return_last_state=True,
                              forward=forward)
    out2, h2 = selective_scan(**piece(t, length), delta_softplus=True,
                              return_last_state=True, initial_state=h1, forward=forward)
    out = torch.cat([out1, out2], dim=-1)
    ref = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
    out_ref, last_ref = selective_scan_ref(**ref, delta_softplus=True, return_last_state=True)
    torch.testing.assert_close(out, out_ref, **tol(torch.float32))
    torch.testing.assert_close(h2, last_ref, **tol(torch.float32))
    dout, dlast = torch.randn_like(out_ref), torch.randn_like(last_ref)
    got = torch.autograd.grad((out * dout).sum() + (h2 * dlast).sum(), list(leaves.values()))
    want = torch.autograd.grad((out_ref * dout).sum() + (last_ref * dlast).sum(),
                               list(ref.values()))
    for name, g, w in zip(NAMES, got, want):
        torch.testing.assert_close(g, w, **tol(torch.float32),
                                   msg=lambda m, n=name: f"d{n}: {m}")


def test_initial_state_is_checked():
    good = make_inputs(1, 4, 6, 3, device="cpu")
    with pytest.raises(ValueError, match="initial_state"):
        selective_scan(**good, initial_state=torch.zeros(1, 4, 2))
