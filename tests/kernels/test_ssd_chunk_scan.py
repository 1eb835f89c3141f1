"""mambabook.kernels.ssd_chunk_scan against mambabook.ssd: outputs, final states, gradients.

On a CPU the kernels run under TRITON_INTERPRET=1 at small sizes (several chunks, a
ragged last chunk, several row blocks per chunk); the `gpu` tests repeat the checks at
real sizes (B=8, L=2048, H=24, P=64, N=64 and 128, chunk 256) in float32 and bfloat16, and
the gradients at B=2, L=4096, H=8 in bfloat16. Float32 dot products run in full float32
on both (input_precision="ieee").
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

import pytest  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from helpers import TOL, compile_for_sm90, tol  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mambabook.kernels import ssd_chunk_scan  # noqa: E402
from mambabook.ssd import ssd_chunked, ssd_combined_ref, ssd_recurrent, ssd_ref  # noqa: E402
from mambabook.suites.ssd import mamba_chunk_scan_combined  # noqa: E402


def make_inputs(bsz, L, H, P, G, N, dtype=torch.float32, device=DEVICE, D_shape="H",
                seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)
    ins = dict(x=r(bsz, L, H, P), dt=r(bsz, L, H) * 0.5 - 1.0,  # raw: softplus'd
               A=-(torch.rand(H, generator=g) * 2 + 0.1), B=r(bsz, L, G, N),
               C=r(bsz, L, G, N), D={"H": r(H), "HP": r(H, P)}[D_shape],
               z=r(bsz, L, H, P), dt_bias=r(H) * 0.3)
    low = ("x", "dt", "B", "C", "z")  # the kernel's streamed inputs take the low dtype
    return {k: (v.to(dtype) if k in low else v).to(device) for k, v in ins.items()}


def reference(ins, chunk, h0=None):
    """ssd_ref (the quadratic form) with the kernel's epilogue, and the final state from
    the recurrence; float64."""
    d = {k: v.double().cpu() for k, v in ins.items()}
    dt = F.softplus(d["dt"] + d["dt_bias"])
    h0 = h0.double().cpu() if h0 is not None else None
    y, last = ssd_recurrent(d["x"], dt, d["A"], d["B"], d["C"], d["D"], initial_states=h0,
                            return_final_states=True)
    if h0 is None:
        torch.testing.assert_close(ssd_ref(d["x"], dt, d["A"], d["B"], d["C"], d["D"]), y)
    return y * F.silu(d["z"]), last


def run(ins, chunk, h0=None):
    return ssd_chunk_scan(ins["x"], ins["dt"], ins["A"], ins["B"], ins["C"], chunk,
                          D=ins["D"], z=ins["z"], dt_bias=ins["dt_bias"], dt_softplus=True,
                          initial_states=h0, return_final_states=True)


@pytest.mark.parametrize("L,chunk,P,N", [(1, 16, 4, 3), (37, 16, 6, 5), (70, 32, 17, 20)])
@pytest.mark.parametrize("init", [False, True])
def test_forward_equals_reference(L, chunk, P, N, init):
    """L = 1, several chunks, a ragged last one, P and N not powers of two, P > 16 (two
    blocks of head dims), with and without an initial state."""
    ins = make_inputs(2, L, 4, P, 2, N)
    h0 = torch.randn(2, 4, P, N, device=DEVICE) if init else None
    out, last = run(ins, chunk, h0)
    out_r, last_r = reference(ins, chunk, h0)
    torch.testing.assert_close(out.double().cpu(), out_r, **tol(torch.float32))
    torch.testing.assert_close(last.double().cpu(), last_r, **tol(torch.float32))


def test_chunk_of_several_row_blocks_and_D_per_channel():
    """chunk 128 > the 64-row block: the diagonal block's inner loop runs several times."""
    ins = make_inputs(1, 150, 2, 16, 1, 16, D_shape="HP")
    out, last = run(ins, 128)
    out_r, last_r = reference(ins, 128)
    torch.testing.assert_close(out.double().cpu(), out_r, **tol(torch.float32))
    torch.testing.assert_close(last.double().cpu(), last_r, **tol(torch.float32))


@settings(max_examples=6, deadline=None)
@given(L=st.integers(1, 40), chunk=st.sampled_from([8, 16]), G=st.sampled_from([1, 2]),
       P=st.integers(1, 9), N=st.integers(1, 9))
def test_forward_hypothesis_shapes(L, chunk, G, P, N):
    ins = make_inputs(1, L, 2 * G, P, G, N)
    out, last = run(ins, chunk)
    out_r, last_r = reference(ins, chunk)
    torch.testing.assert_close(out.double().cpu(), out_r, **tol(torch.float32))
    torch.testing.assert_close(last.double().cpu(), last_r, **tol(torch.float32))


def test_without_optional_inputs():
    ins = make_inputs(2, 20, 2, 4, 1, 4)
    dt = F.softplus(ins["dt"])
    out = ssd_chunk_scan(ins["x"], dt, ins["A"], ins["B"], ins["C"], 8)
    want = ssd_ref(ins["x"].cpu(), dt.cpu(), ins["A"].cpu(), ins["B"].cpu(), ins["C"].cpu())
    torch.testing.assert_close(out.cpu(), want, **tol(torch.float32))


def test_bfloat16_forward():
    ins = make_inputs(1, 40, 2, 8, 1, 8, dtype=torch.bfloat16)
    out, last = run(ins, 16)
    assert out.dtype == torch.bfloat16 and last.dtype == torch.float32
    out_r, last_r = reference(ins, 16)
    torch.testing.assert_close(out.double().cpu(), out_r.to(torch.bfloat16).double(),
                               **tol(torch.bfloat16))
    torch.testing.assert_close(last.double().cpu(), last_r, **tol(torch.bfloat16))


def chunked_reference(d, chunk, softplus, h0=None):
    """out and the final state through `ssd_chunked` (in the inputs' dtype: float64 on
    the CPU), with the kernel's dt bias, softplus and gate: the reference gradients."""
    dt = d["dt"] + d["dt_bias"] if d.get("dt_bias") is not None else d["dt"]
    dt = F.softplus(dt) if softplus else dt
    y, last = ssd_chunked(d["x"], dt, d["A"], d["B"], d["C"], chunk, d.get("D"),
                          initial_states=h0, return_final_states=True)
    return (y * F.silu(d["z"]) if d.get("z") is not None else y), last


def kernel(d, chunk, softplus, h0=None):
    return ssd_chunk_scan(d["x"], d["dt"], d["A"], d["B"], d["C"], chunk, D=d.get("D"),
                          z=d.get("z"), dt_bias=d.get("dt_bias"), dt_softplus=softplus,
                          initial_states=h0, return_final_states=True)


def grads(fn, ins, h0=None, final=True, dtype=None):
    """d/d(every input, initial_states), cast to dtype when given, of sum(out w)
    (+ sum(final state w') when final): seeded weights rounded to bfloat16, so that a
    bfloat16 output's gradient is exact."""
    cast = lambda t: t.detach().to(dtype) if dtype is not None else t.detach()
    leaves = {k: cast(v).requires_grad_() for k, v in ins.items() if v is not None}
    if h0 is not None:
        leaves["initial_states"] = cast(h0).requires_grad_()
    out, last = fn(leaves, leaves.get("initial_states"))
    g = torch.Generator().manual_seed(1)
    w = lambda t: torch.randn(t.shape, generator=g).bfloat16().double().to(t.device)
    loss = (out.double() * w(out)).sum() + ((last.double() * w(last)).sum() if final else 0)
    loss.backward()
    return {k: v.grad for k, v in leaves.items()}


def assert_grads_close(g_k, g_r, dtype=torch.float32):
    assert g_k.keys() == g_r.keys()
    for name in g_r:
        torch.testing.assert_close(g_k[name].double().cpu(), g_r[name], **tol(dtype),
                                   msg=lambda m, name=name: f"d{name}: {m}")


def relative_error(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("L,chunk,H,G,P,N,D_shape,softplus", [
    (1, 16, 2, 1, 4, 3, "H", True),  # one step
    (37, 16, 6, 2, 5, 7, "HP", True),  # ragged last chunk; 3 heads a group: a ragged split
    (70, 64, 3, 3, 17, 20, "H", False),  # two row blocks a chunk, P > 16, dt as given + bias
    (100, 32, 4, 1, 16, 16, "HP", True),  # four chunks, 4 heads a group: two splits
])
def test_gradients_of_every_input(L, chunk, H, G, P, N, D_shape, softplus):
    """d/d(x, dt, A, B, C, D, z, dt_bias, initial_states) of a loss on out and the final
    state, against autograd through ssd_chunked in float64."""
    ins = make_inputs(2, L, H, P, G, N, D_shape=D_shape)
    if not softplus:
        ins["dt"] = F.softplus(ins["dt"])
    h0 = torch.randn(2, H, P, N, device=DEVICE)
    g_k = grads(lambda d, h: kernel(d, chunk, softplus, h), ins, h0)
    g_r = grads(lambda d, h: chunked_reference(d, chunk, softplus, h), ins, h0, dtype=torch.float64)
    assert_grads_close(g_k, g_r)


@settings(max_examples=6, deadline=None)
@given(L=st.integers(1, 40), chunk=st.sampled_from([8, 16]), G=st.sampled_from([1, 2]),
       hpg=st.integers(1, 3), P=st.integers(1, 9), N=st.integers(1, 9),
       softplus=st.booleans(), D_shape=st.sampled_from(["H", "HP"]))
def test_gradients_hypothesis_shapes(L, chunk, G, hpg, P, N, softplus, D_shape):
    ins = make_inputs(1, L, G * hpg, P, G, N, D_shape=D_shape)
    if not softplus:  # dt as given must be positive (raw dt < 0 makes the state grow)
        ins["dt"] = F.softplus(ins["dt"])
    h0 = torch.randn(1, G * hpg, P, N, device=DEVICE)
    g_k = grads(lambda d, h: kernel(d, chunk, softplus, h), ins, h0)
    g_r = grads(lambda d, h: chunked_reference(d, chunk, softplus, h), ins, h0, dtype=torch.float64)
    assert_grads_close(g_k, g_r)



def test_gradients_of_strided_views():
    """x, dt, B, C and z as column slices of one wide projection (as a Mamba-2 block passes
    them): the same gradients as contiguous copies."""
    bsz, L, H, P, G, N, chunk = 2, 10, 4, 3, 2, 5, 4
    ins = make_inputs(bsz, L, H, P, G, N)
    widths = [H * P, H * P, G * N, G * N, H]  # z, x, B, C, dt
    g = torch.Generator().manual_seed(2)
    wide = torch.randn(bsz, L, sum(widths), generator=g).to(DEVICE)

    def views(t):
        z, x, B, C, dt = torch.split(t, widths, dim=-1)
        return dict(ins, z=z.view(bsz, L, H, P), x=x.view(bsz, L, H, P),
                    B=B.view(bsz, L, G, N), C=C.view(bsz, L, G, N), dt=dt)

    h0 = torch.randn(bsz, H, P, N, device=DEVICE)
    kernel_fn = lambda d, h: kernel(d, chunk, True, h)
    strided = wide.clone().requires_grad_()
    out, last = kernel_fn(views(strided), h0)
    assert not views(strided)["dt"].is_contiguous()
    dense = wide.clone().requires_grad_()
    out_d, last_d = kernel_fn({k: v.contiguous() if k in ("x", "dt", "B", "C", "z") else v
                               for k, v in views(dense).items()}, h0)
    torch.testing.assert_close(out, out_d)
    w = torch.randn(out.shape, generator=g).to(DEVICE)
    ((out * w).sum() + last.sum()).backward()
    ((out_d * w).sum() + last_d.sum()).backward()
    torch.testing.assert_close(strided.grad, dense.grad)

def test_gradients_without_optional_inputs():
    """No D, z, dt_bias, initial state, final state: against the quadratic form."""
    ins = make_inputs(2, 30, 4, 6, 2, 5)
    ins = {k: ins[k] for k in ("x", "dt", "A", "B", "C")}
    ins["dt"] = F.softplus(ins["dt"])
    only_out = lambda out: (out, out.new_zeros(()))
    g_k = grads(lambda d, h: only_out(ssd_chunk_scan(d["x"], d["dt"], d["A"], d["B"],
                                                     d["C"], 8)), ins, final=False)
    g_r = grads(lambda d, h: only_out(ssd_ref(d["x"], d["dt"], d["A"], d["B"], d["C"])),
                ins, final=False, dtype=torch.float64)
    assert_grads_close(g_k, g_r)


def test_bfloat16_gradients():
    """bfloat16 x, dt, B, C, z against the reference on the same values, within bfloat16's
    tolerance. dA and d dt_bias sum every step's term, each rounded as dy = dout silu(z)
    is (to bfloat16): their error grows with the steps, so they are held to bfloat16's
    rtol by the relative norm of the error (as the GPU test holds every gradient)."""
    ins = make_inputs(1, 40, 4, 8, 2, 8, dtype=torch.bfloat16)
    h0 = torch.randn(1, 4, 8, 8, device=DEVICE)
    g_k = grads(lambda d, h: kernel(d, 16, True, h), ins, h0)
    g_r = grads(lambda d, h: chunked_reference(d, 16, True, h), ins, h0, dtype=torch.float64)
    sums = ("A", "dt_bias")
    assert_grads_close({k: v for k, v in g_k.items() if k not in sums},
                       {k: v for k, v in g_r.items() if k not in sums}, torch.bfloat16)
    for name in sums:
        assert relative_error(g_k[name].cpu(), g_r[name]) < TOL[torch.bfloat16][0], name


def test_combined_ref_is_what_the_kernel_computes():
    ins = make_inputs(1, 19, 2, 4, 1, 3)
    out, last = run(ins, 8)
    out_r, last_r = ssd_combined_ref(ins["x"], ins["dt"], ins["A"], ins["B"], ins["C"], 8,
                                     ins["D"], ins["z"], ins["dt_bias"], True)
    torch.testing.assert_close(out, out_r, **tol(torch.float32))
    torch.testing.assert_close(last, last_r, **tol(torch.float32))


def test_bad_inputs_name_the_argument():
    ins = make_inputs(1, 8, 2, 4, 1, 4)
    x, dt, A, B, C = (ins[k] for k in ("x", "dt", "A", "B", "C"))
    with pytest.raises(ValueError, match=r"z must have shape \(B, L, H, P\)"):
        ssd_chunk_scan(x, dt, A, B, C, 4, z=x[:, :, :, :3])
    with pytest.raises(ValueError, match=r"dt_bias must have shape \(H,\)"):
        ssd_chunk_scan(x, dt, A, B, C, 4, dt_bias=torch.zeros(3, device=DEVICE))
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        ssd_chunk_scan(x, dt, A, B, C, 0)
    with pytest.raises(ValueError, match=r"initial_states must have shape \(B, H, P, N\)"):
        ssd_chunk_scan(x, dt, A, B, C, 4, initial_states=torch.zeros(1, 2, 4, 3,
                                                                     device=DEVICE))
    with pytest.raises(TypeError, match="x must be float32, float16 or bfloat16"):
        ssd_chunk_scan(x.double(), dt.double(), A, B.double(), C.double(), 4)
    with pytest.raises(ValueError, match=r"B must have shape \(B, L, G, N\)"):
        ssd_chunk_scan(x, dt, A, B[:, :5], C, 4)


def scale_errors(out, ref) -> tuple[float, float]:
    """(the error's norm over the reference's, its largest element over the reference's)."""
    err = (out.double() - ref.double()).abs()
    return relative_error(out, ref), (err.max() / ref.double().abs().max()).item()


@pytest.mark.gpu
@pytest.mark.parametrize("N", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ssd_chunk_scan_gpu(N, dtype):
    """Real sizes: B=8, L=2048, H=24, P=64, G=1, chunk 256; against ssd_chunked in float32
    (the float64 recurrence at this size takes minutes). float32: element by element.
    bfloat16: each product rounds its operands (C Bᵀ times the decay, the state) to 8 bits,
    as mamba_ssm's kernels do, so an output near zero can be off by a few hundredths of the
    output's scale: the error is judged against that scale, and, where mamba_ssm imports,
    against `mamba_chunk_scan_combined`'s error on the same inputs (at most twice it)."""
    ins = make_inputs(8, 2048, 24, 64, 1, N, dtype=dtype, device="cuda")
    h0 = torch.randn(8, 24, 64, N, device="cuda")
    out, last = run(ins, 256, h0)
    f = {k: v.float() for k, v in ins.items()}
    out_r, last_r = ssd_combined_ref(f["x"], f["dt"], f["A"], f["B"], f["C"], 256, f["D"],
                                     f["z"], f["dt_bias"], True, h0)
    torch.testing.assert_close(last, last_r, **tol(dtype))
    if dtype == torch.float32:
        torch.testing.assert_close(out, out_r, **tol(dtype))
        return
    ours = scale_errors(out, out_r)
    assert ours[0] < TOL[dtype][0] and ours[1] < TOL[dtype][0], ours
    theirs_fn = mamba_chunk_scan_combined()
    if theirs_fn is not None:
        theirs_out = theirs_fn(ins["x"], ins["dt"], ins["A"], ins["B"], ins["C"], 256,
                               D=ins["D"], z=ins["z"], dt_bias=ins["dt_bias"],
                               dt_softplus=True, initial_states=h0)
        theirs = scale_errors(theirs_out, out_r)
        print(f"N={N}: error norm / output norm {ours[0]:.2e} (mamba_ssm {theirs[0]:.2e}), "
              f"largest error / largest output {ours[1]:.2e} (mamba_ssm {theirs[1]:.2e})")
        assert ours[0] <= 2 * theirs[0] and ours[1] <= 2 * theirs[1], (ours, theirs)


@pytest.mark.gpu
@pytest.mark.parametrize("N", [64, 128])
def test_ssd_chunk_scan_gradients_gpu(N):
    """Real sizes in bfloat16 (B=2, L=4096, H=8, P=64, G=1, chunk 256): every gradient
    against float32 autograd through ssd_chunked on the same values, by the relative norm
    of the error (within bfloat16's rtol)."""
    ins = make_inputs(2, 4096, 8, 64, 1, N, dtype=torch.bfloat16, device="cuda")
    h0 = torch.randn(2, 8, 64, N, device="cuda")
    g_k = grads(lambda d, h: kernel(d, 256, True, h), ins, h0)
    g_r = grads(lambda d, h: chunked_reference(d, 256, True, h), ins, h0, dtype=torch.float32)
    errors = {name: relative_error(g_k[name], g_r[name]) for name in g_r}
    assert max(errors.values()) < TOL[torch.bfloat16][0], errors


def test_ssd_kernels_compile_for_sm90():
    """The forward's four launches and the backward's six compile for an H100/H200 (sm_90)
    on this machine, GPU or not (the interpreter does not see what only the compiler
    rejects): float32 (ieee dots) and bfloat16 (tensor cores), chunks of 256, N = 64 and
    128, at the block sizes the wrappers launch."""
    half = ["x_ptr", "B_ptr", "C_ptr", "z_ptr", "out_ptr", "y_ptr"]
    ssd = dict(_module="mambabook.kernels.ssd", _num_warps=4)
    bwd = dict(ssd, _module="mambabook.kernels.ssd_backward")
    state = dict(ssd, _kernel="_chunk_state_kernel", BLOCK_P=64, BLOCK_N=64, BLOCK_K=64)
    scan = dict(ssd, _kernel="_chunk_scan_kernel", HAS_D=True, HAS_Z=True, BLOCK_M=64,
                BLOCK_P=64)
    dstate = dict(bwd, _kernel="_state_grad_kernel", BLOCK_P=64, BLOCK_N=64, BLOCK_K=32)
    rows = dict(bwd, BLOCK_M=32, BLOCK_P=64, _num_warps=8)
    half_bwd = ["dy_ptr", "x_ptr", "B_ptr", "C_ptr", "dx_ptr"]
    compile_for_sm90([
        dict(ssd, _kernel="_dt_cumsum_kernel", HAS_BIAS=True, SOFTPLUS=True, BLOCK_T=256),
        dict(state, PRECISION="ieee"),
        dict(state, PRECISION="tf32", _bf16=half),
        dict(ssd, _kernel="_state_passing_kernel", HAS_H0=True, BLOCK=1024),
        dict(scan, BLOCK_N=128, PRECISION="ieee", y_ptr=None),
        dict(scan, BLOCK_N=64, PRECISION="tf32", _bf16=half),
        dict(bwd, _kernel="_gate_bwd_kernel", BLOCK=1024,
             _bf16=["dout_ptr", "z_ptr", "y_ptr", "dy_ptr", "dz_ptr"]),
        dict(dstate, PRECISION="ieee"),
        dict(dstate, PRECISION="tf32", _bf16=["dy_ptr", "C_ptr"]),
        dict(bwd, _kernel="_state_passing_bwd_kernel", BLOCK=1024),
        *(dict(rows, _kernel=k, BLOCK_N=n, **p) for k in ("_chunk_scan_dC_kernel",
          "_chunk_scan_dx_kernel") for n in (64, 128)
          for p in (dict(PRECISION="ieee"), dict(PRECISION="tf32", _bf16=half_bwd))),
        dict(rows, _kernel="_chunk_scan_dx_kernel", BLOCK_N=64, PRECISION="tf32",
             D_ptr=None, dD_ptr=None, _bf16=half_bwd),
        dict(bwd, _kernel="_dt_bwd_kernel", SOFTPLUS=True, BLOCK_T=256,
             _bf16=["dt_ptr", "ddt_out_ptr"]),
        dict(bwd, _kernel="_dt_bwd_kernel", SOFTPLUS=False, BLOCK_T=256, bias_ptr=None,
             dbias_ptr=None),
    ])
