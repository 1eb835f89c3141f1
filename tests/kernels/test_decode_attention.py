"""mambabook.kernels.decode_attention against decode_attention_ref: outputs only (decoding is
inference: the kernel has no backward), at many shapes and filled lengths, one length for
the batch or one per row, split into parts or not; bad inputs; the sm_90 compile."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

import pytest  # noqa: E402
from helpers import compile_for_sm90, tol  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mambabook.attention import decode_attention_ref  # noqa: E402
from mambabook.kernels import decode_attention  # noqa: E402
from mambabook.kernels.decode_attention import MIN_SPLIT, TARGET_PROGRAMS, split_rule  # noqa: E402


def make_cache(bsz, heads, max_len, dim, dtype=torch.float32, device=DEVICE, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(device=device, dtype=dtype)
    return r(bsz, heads, dim), r(bsz, heads, max_len, dim), r(bsz, heads, max_len, dim)


def check(q, k, v, length, dtype):
    out = decode_attention(q, k, v, length)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out, decode_attention_ref(q, k, v, length), **tol(dtype))


@settings(max_examples=25, deadline=None)
@given(bsz=st.integers(1, 3), heads=st.integers(1, 3), dim=st.integers(1, 40),
       max_len=st.integers(1, 300), data=st.data())
def test_decode_attention_matches_ref(bsz, heads, dim, max_len, data):
    """n from 1 to max_len (1 and max_len drawn often), one for all rows or one per row."""
    n = data.draw(st.one_of(st.just(1), st.just(max_len), st.integers(1, max_len)))
    per_row = data.draw(st.booleans())
    q, k, v = make_cache(bsz, heads, max_len, dim, seed=n)
    length = (torch.randint(1, max_len + 1, (bsz,)) if per_row else torch.tensor(n))
    check(q, k, v, length.to(DEVICE), torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_decode_attention_half(dtype):
    q, k, v = make_cache(2, 3, 700, 64, dtype)  # several parts: the combine runs
    for n in (1, 63, 129, 700):
        check(q, k, v, torch.tensor(n, device=DEVICE), dtype)


def test_decode_attention_reads_only_the_filled_part():
    """Keys and values past n (here NaN) change nothing, in the parts that hold n and in
    those past it. Per-row lengths: one row at max_len (several parts), one at 1."""
    q, k, v = make_cache(2, 2, 3 * MIN_SPLIT + 5, 16)
    length = torch.tensor([3 * MIN_SPLIT + 5, 1], device=DEVICE)
    want = decode_attention_ref(q, k, v, length)
    k[1, :, 1:], v[1, :, 1:] = float("nan"), float("nan")
    torch.testing.assert_close(decode_attention(q, k, v, length), want, **tol(torch.float32))


def test_decode_attention_strided_views_and_scale():
    """q a slice of a (B, 3, H, P) tensor and the caches slices of wider buffers, as the
    model hands them over; a scale other than 1 / sqrt(P); int32 lengths, one per row."""
    q3 = torch.randn(2, 3, 4, 8, device=DEVICE).transpose(1, 2)  # (B, H, 3, P)
    q = q3[:, :, 1]
    kb, vb = torch.randn(2, 4, 50, 12, device=DEVICE), torch.randn(2, 4, 50, 12, device=DEVICE)
    k, v = kb[..., 2:10], vb[..., 4:]
    assert not (q.is_contiguous() or k.is_contiguous() or v.is_contiguous())
    length = torch.tensor([37, 12], device=DEVICE, dtype=torch.int32)  # int32 works too
    torch.testing.assert_close(decode_attention(q, k, v, length, scale=0.3),
                               decode_attention_ref(q, k, v, length, scale=0.3),
                               **tol(torch.float32))


def test_split_rule():
    """Parts cover max_len exactly once, hold a multiple of the key block and at least
    MIN_SPLIT keys (unless one part holds the whole cache), and B H parts reach the target
    when the cache is long enough."""
    for bsz, heads, max_len in [(1, 32, 2176), (1, 32, 16512), (64, 32, 2176), (1, 1, 5),
                                (4, 8, 100_000)]:
        split_len, n_splits = split_rule(bsz, heads, max_len, 64)
        assert split_len % 64 == 0 and (n_splits - 1) * split_len < max_len <= n_splits * split_len
        assert n_splits == 1 or split_len >= MIN_SPLIT
    assert split_rule(64, 32, 2176, 64)[1] == 1  # 2048 (row, head) pairs: no split
    n_splits = split_rule(1, 32, 16512, 64)[1]  # 32 wanted, fewer after rounding parts up
    assert 0.8 * TARGET_PROGRAMS <= 32 * n_splits <= TARGET_PROGRAMS


def test_decode_attention_bad_inputs():
    q, k, v = make_cache(2, 3, 10, 4, device="cpu")  # validation runs before any kernel
    n = torch.tensor(5)
    with pytest.raises(ValueError, match=r"q must have shape \(B, H, P\)"):
        decode_attention(q[:, :, None], k, v, n)
    with pytest.raises(ValueError, match=r"k_cache must have shape \(B, H, max_len, P\)"):
        decode_attention(q, k[:, :2], v, n)
    with pytest.raises(ValueError, match="v_cache must have shape"):
        decode_attention(q, k, v[:, :, :9], n)
    with pytest.raises(TypeError, match="one dtype"):
        decode_attention(q, k, v.double(), n)
    with pytest.raises(ValueError, match=r"length must have shape \(\) or \(B,\) = \(2,\)"):
        decode_attention(q, k, v, torch.tensor([5, 5, 5]))
    with pytest.raises(TypeError, match="length must hold integers"):
        decode_attention(q, k, v, torch.tensor(5.0))
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        decode_attention(q.double(), k.double(), v.double(), n)
    with pytest.raises(ValueError, match="P <= 256"):
        decode_attention(*make_cache(1, 1, 2, 257, device="cpu"), n)
    with pytest.raises(ValueError, match="device"):
        decode_attention(q, k, v, torch.tensor(5, device="meta"))
    with pytest.raises(ValueError, match=r"length must lie in \[1, max_len = 10\]"):
        decode_attention_ref(q, k, v, torch.tensor([0, 11]))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_attention_gpu_sizes(dtype):
    """The 1.3B Transformer's heads (H = 32, P = 64) at batch 1 (split 32 ways), 64 (one
    part each) and per-row lengths; P = 128; and inside a CUDA graph replayed while the
    length grows."""
    q, k, v = make_cache(1, 32, 16384 + 128, 64, dtype)
    for n in (1, 2048, 16384 + 128):
        check(q, k, v, torch.tensor(n, device=DEVICE), dtype)
    q, k, v = make_cache(64, 32, 2048 + 128, 64, dtype)
    check(q, k, v, torch.tensor(2049, device=DEVICE), dtype)
    check(q, k, v, torch.randint(1, 2048 + 129, (64,), device=DEVICE), dtype)
    q, k, v = make_cache(4, 16, 4000, 128, dtype)
    check(q, k, v, torch.tensor(3999, device=DEVICE), dtype)
    length = torch.tensor(100, device=DEVICE)
    out = decode_attention(q, k, v, length)  # compiled before the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = decode_attention(q, k, v, length)
    for n in (100, 101, 2500):
        length.fill_(n)
        graph.replay()
        torch.testing.assert_close(out, decode_attention_ref(q, k, v, length), **tol(dtype))


def test_decode_attention_compiles_for_sm90():
    """Both kernels compile for an H100/H200 (sm_90) on this machine, GPU or not: float32
    and bfloat16, one part (the output stored directly) and several, P = 64 and 128."""
    mod = dict(_module="mambabook.kernels.decode_attention", _num_warps=4)
    split = dict(mod, _kernel="_decode_attention_split_kernel",
                 _types={"len_ptr": "*i64", "scale_log2": "fp32"})
    half = ["q_ptr", "k_ptr", "v_ptr", "out_ptr"]
    combine = dict(mod, _kernel="_decode_attention_combine_kernel", _num_warps=2,
                   _types={"len_ptr": "*i64"})
    compile_for_sm90([
        dict(split, ONE_SPLIT=False, BLOCK_N=64, BLOCK_P=64),
        dict(split, ONE_SPLIT=True, BLOCK_N=64, BLOCK_P=64, _bf16=half),
        dict(split, ONE_SPLIT=False, BLOCK_N=32, BLOCK_P=128, _bf16=half),
        dict(combine, BLOCK_S=32, BLOCK_P=64),
        dict(combine, BLOCK_S=256, BLOCK_P=128, _bf16=["out_ptr"]),
    ])
