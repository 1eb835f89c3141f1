"""mambabook.kernels.ssd_chunk_scan against mambabook.ssd: outputs, final states, gradients.

On a CPU the kernels run under TRITON_INTERPRET=1 at small sizes (several chunks, a
ragged last chunk, several row blocks per chunk); the `gpu` tests repeat the checks at
real sizes (B=8, L=2048, H=24, P=64, N=64 and 128, chunk 256) in float32 and bfloat16.
Float32 dot products run in full float32 on both (input_precision="ieee").
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

import pytest  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from conftest import compile_for_sm90, tol  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mambabook.kernels import ssd_chunk_scan  # noqa: E402
from mambabook.kernels.ssd import ssd_combined_ref  # noqa: E402
from mambabook.ssd import ssd_recurrent, ssd_ref  # noqa: E402


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


def test_gradients_of_every_input():
    """d/d(x, dt, A, B, C, D, z, dt_bias, initial_states) of a loss on out and the final
    state, against the same loss through the recurrence."""
    ins = make_inputs(2, 21, 4, 3, 2, 5)
    h0 = torch.randn(2, 4, 3, 5, device=DEVICE)
    w_o = torch.randn(2, 21, 4, 3, device=DEVICE)
    w_h = torch.randn_like(h0)

    def grads(fn):
        leaves = {k: v.detach().clone().requires_grad_() for k, v in ins.items()}
        h = h0.clone().requires_grad_()
        out, last = fn(leaves, h)
        ((out * w_o).sum() + (last * w_h).sum()).backward()
        return {**{k: v.grad for k, v in leaves.items()}, "initial_states": h.grad}

    def by_recurrence(d, h):
        dt = F.softplus(d["dt"] + d["dt_bias"])
        y, last = ssd_recurrent(d["x"], dt, d["A"], d["B"], d["C"], d["D"],
                                initial_states=h, return_final_states=True)
        return y * F.silu(d["z"]), last

    g_k, g_r = grads(lambda d, h: run(d, 8, h)), grads(by_recurrence)
    for name in g_r:
        torch.testing.assert_close(g_k[name], g_r[name], **tol(torch.float32), msg=name)


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


@pytest.mark.gpu
@pytest.mark.parametrize("N", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ssd_chunk_scan_gpu(N, dtype):
    """Real sizes: B=8, L=2048, H=24, P=64, G=1, chunk 256; against ssd_chunked in float32
    (the float64 recurrence at this size takes minutes)."""
    ins = make_inputs(8, 2048, 24, 64, 1, N, dtype=dtype, device="cuda")
    h0 = torch.randn(8, 24, 64, N, device="cuda")
    out, last = run(ins, 256, h0)
    f = {k: v.float() for k, v in ins.items()}
    out_r, last_r = ssd_combined_ref(f["x"], f["dt"], f["A"], f["B"], f["C"], 256, f["D"],
                                     f["z"], f["dt_bias"], True, h0)
    torch.testing.assert_close(out.float(), out_r.to(dtype).float(), **tol(dtype))
    torch.testing.assert_close(last, last_r, **tol(dtype))


def test_ssd_kernels_compile_for_sm90():
    """The four launches compile for an H100/H200 (sm_90) on this machine, GPU or not (the
    interpreter does not see what only the compiler rejects): float32 (ieee dots) and
    bfloat16 (tensor cores), chunks of 256, N = 64 and 128."""
    half = ["x_ptr", "B_ptr", "C_ptr", "z_ptr", "out_ptr"]
    ssd = dict(_module="mambabook.kernels.ssd", _num_warps=4)
    state = dict(ssd, _kernel="_chunk_state_kernel", BLOCK_P=64, BLOCK_N=64, BLOCK_K=64)
    scan = dict(ssd, _kernel="_chunk_scan_kernel", HAS_D=True, HAS_Z=True, BLOCK_M=64,
                BLOCK_P=64)
    compile_for_sm90([
        dict(ssd, _kernel="_dt_cumsum_kernel", HAS_BIAS=True, SOFTPLUS=True, BLOCK_T=256),
        dict(state, PRECISION="ieee"),
        dict(state, PRECISION="tf32", _bf16=half),
        dict(ssd, _kernel="_state_passing_kernel", HAS_H0=True, BLOCK=1024),
        dict(scan, BLOCK_N=128, PRECISION="ieee"),
        dict(scan, BLOCK_N=64, PRECISION="tf32", _bf16=half),
    ])
