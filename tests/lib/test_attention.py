"""mambabook.attention: softmax == SDPA == KV cache; linear attention and RWKV parallel ==
recurrent; RWKV stable at long L; associative recall; bad inputs name the argument."""

import pytest
import torch
import torch.nn.functional as F
from helpers import tol
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mambabook import attention as A

shapes = dict(B=st.integers(1, 2), H=st.integers(1, 3), L=st.integers(1, 17),
              P=st.integers(1, 9))


def qkv(B, H, L, P, dtype=torch.float64, Pv=None):
    return (torch.randn(B, H, L, P, dtype=dtype), torch.randn(B, H, L, P, dtype=dtype),
            torch.randn(B, H, L, Pv or P, dtype=dtype))


# ----------------------------------------------------------------------------- softmax
@settings(max_examples=10, deadline=None)
@given(causal=st.booleans(), **shapes)
@example(B=1, H=1, L=1, P=1, causal=True)
def test_softmax_attention_equals_sdpa(B, H, L, P, causal):
    q, k, v = qkv(B, H, L, P)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    torch.testing.assert_close(A.softmax_attention(q, k, v, causal=causal), ref,
                               **tol(torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_softmax_attention_equals_sdpa_low_precision(dtype):
    q, k, v = qkv(2, 3, 33, 16, dtype=dtype)
    torch.testing.assert_close(A.softmax_attention(q, k, v),
                               F.scaled_dot_product_attention(q, k, v, is_causal=True), **tol(dtype))


def test_attention_weights_are_causal_and_normalised():
    q, k, _ = qkv(1, 2, 9, 4)
    w = A.attention_weights(q, k)
    torch.testing.assert_close(w.sum(-1), torch.ones(1, 2, 9, dtype=torch.float64))
    assert (w.triu(1) == 0).all()


@settings(max_examples=10, deadline=None)
@given(Pv=st.integers(1, 5), **shapes)
@example(B=1, H=1, L=1, P=3, Pv=1)
@example(B=2, H=3, L=13, P=7, Pv=5)
def test_kv_cache_equals_full_causal_attention(B, H, L, P, Pv):
    q, k, v = qkv(B, H, L, P, Pv=Pv)
    torch.testing.assert_close(A.kv_cache_decode(q, k, v), A.softmax_attention(q, k, v),
                               **tol(torch.float64))


def test_kv_cache_grows_one_pair_per_token():
    cache = A.KVCache(capacity=2)  # forces two doublings
    q, k, v = qkv(1, 2, 5, 4, dtype=torch.float32)
    for t in range(5):
        cache.step(q[:, :, t], k[:, :, t], v[:, :, t])
        assert cache.length == t + 1
        assert cache.nbytes == (t + 1) * 2 * (1 * 2 * 4) * 4


def test_kv_cache_prefill_then_step_equals_full_attention():
    q, k, v = qkv(2, 3, 10, 4)
    cache = A.KVCache(capacity=1)
    cache.prefill(k[:, :, :6], v[:, :, :6])
    outs = [cache.step(q[:, :, t], k[:, :, t], v[:, :, t]) for t in range(6, 10)]
    torch.testing.assert_close(torch.stack(outs, 2), A.softmax_attention(q, k, v)[:, :, 6:],
                               **tol(torch.float64))
    with pytest.raises(ValueError, match="prefill"):
        cache.prefill(k, v)


# ----------------------------------------------------------------------------- linear attention
@settings(max_examples=10, deadline=None)
@given(Pv=st.integers(1, 5), **shapes)
@example(B=1, H=1, L=1, P=1, Pv=1)
@example(B=2, H=3, L=13, P=7, Pv=5)
def test_linear_attention_parallel_equals_recurrent(B, H, L, P, Pv):
    q, k, v = qkv(B, H, L, P, Pv=Pv)
    torch.testing.assert_close(A.linear_attention_recurrent(q, k, v), A.linear_attention(q, k, v),
                               **tol(torch.float64))


def test_linear_attention_equals_explicit_formula():
    q, k, v = qkv(1, 1, 6, 3)
    phi = lambda x: F.elu(x) + 1
    out = torch.stack([
        sum((phi(q[0, 0, t]) @ phi(k[0, 0, i])) * v[0, 0, i] for i in range(t + 1))
        / sum(phi(q[0, 0, t]) @ phi(k[0, 0, i]) for i in range(t + 1)) for t in range(6)])
    torch.testing.assert_close(A.linear_attention(q, k, v, eps=0.0)[0, 0], out,
                               **tol(torch.float64))


def test_noncausal_linear_attention_is_last_recurrent_state():
    q, k, v = qkv(2, 2, 11, 5)
    out, S, z = A.linear_attention_recurrent(q, k, v, return_state=True)
    fq = F.elu(q) + 1
    torch.testing.assert_close(A.linear_attention(q, k, v, causal=False),
                               (fq @ S) / ((fq @ z[..., None]) + 1e-6), **tol(torch.float64))
    assert S.shape == (2, 2, 5, 5) and z.shape == (2, 2, 5)  # (B, H, F, P): no L anywhere


# ----------------------------------------------------------------------------- RWKV
def wkv_args(B, L, D, dtype=torch.float64, w_scale=1.0, k_scale=1.0):
    w = torch.rand(D, dtype=dtype) * w_scale  # decay >= 0
    u = torch.randn(D, dtype=dtype)
    k = torch.randn(B, L, D, dtype=dtype) * k_scale
    v = torch.randn(B, L, D, dtype=dtype)
    return w, u, k, v


def wkv_reference(w, u, k, v, block=256):
    """The defining formula in float64: for each row t a softmax over i <= t of the logits
    -(t-1-i) w + k_i (i < t) and u + k_t (i = t), a block of rows at a time."""
    w, u, k, v = (x.double() for x in (w, u, k, v))
    L = k.shape[1]
    out = []
    for t0 in range(0, L, block):
        t = torch.arange(t0, min(L, t0 + block), dtype=torch.float64)[:, None, None]  # (T, 1, 1)
        i = torch.arange(int(t[-1]) + 1, dtype=torch.float64)[None, :, None]  # (1, S, 1)
        past = -(t - 1 - i) * w + k[:, None, :i.shape[1]]  # (B, T, S, D)
        now = (u + k[:, t0:t0 + t.shape[0]])[:, :, None]  # (B, T, 1, D)
        logits = torch.where(i < t, past, torch.where(i == t, now, -torch.inf))
        out.append(torch.einsum("btsd,bsd->btd", torch.softmax(logits, 2), v[:, :i.shape[1]]))
    return torch.cat(out, 1)  # (B, L, D)


@settings(max_examples=10, deadline=None)
@given(B=st.integers(1, 2), L=st.integers(1, 17), D=st.integers(1, 7))
@example(B=1, L=1, D=1)
@example(B=2, L=13, D=5)
def test_wkv_parallel_equals_recurrent(B, L, D):
    args = wkv_args(B, L, D)
    par = A.wkv_parallel(*args)
    torch.testing.assert_close(A.wkv_recurrent(*args), par, **tol(torch.float64))
    torch.testing.assert_close(par, wkv_reference(*args), **tol(torch.float64))


def test_wkv_naive_agrees_when_it_does_not_overflow():
    args = wkv_args(2, 13, 3)
    torch.testing.assert_close(A.wkv_naive(*args), A.wkv_recurrent(*args), **tol(torch.float64))


def test_wkv_state_continues_a_sequence():
    # decoding: run 7 tokens, then step token by token from the returned state
    w, u, k, v = wkv_args(2, 12, 4)
    full = A.wkv_parallel(w, u, k, v)
    head, state = A.wkv_recurrent(w, u, k[:, :7], v[:, :7], return_state=True)
    assert all(s.shape == (2, 4) for s in state)
    tail = []
    for t in range(7, 12):
        y, state = A.wkv_step(state, w, u, k[:, t], v[:, t])
        tail.append(y)
    torch.testing.assert_close(torch.cat([head, torch.stack(tail, 1)], 1), full,
                               **tol(torch.float64))


def test_wkv_stable_at_long_length_with_large_decays_and_keys():
    # L = 4096, decays up to 8 per step and keys up to +-100: e^k overflows float32 (> e^88),
    # e^{-w t} underflows. The stable forms stay finite and match a float64 reference.
    L = 4096
    w, u, k, v = wkv_args(1, L, 3, dtype=torch.float32, w_scale=8.0, k_scale=40.0)
    k[0, ::97] = 100.0  # spikes far beyond float32's exp range
    rec = A.wkv_recurrent(w, u, k, v)
    assert torch.isfinite(rec).all()
    naive = A.wkv_naive(w, u, k[:, :200], v[:, :200])
    assert not torch.isfinite(naive).all()  # the reason the running max exists
    ref = wkv_reference(w, u, k, v)  # float64, softmax per row: independent of the recurrence
    torch.testing.assert_close(rec, ref.float(), **tol(torch.float32))
    window = slice(L - 512, L)
    par = A.wkv_parallel(w, u, k[:, window], v[:, window])
    torch.testing.assert_close(par, A.wkv_recurrent(w, u, k[:, window], v[:, window]),
                               **tol(torch.float32))
    assert torch.isfinite(par).all()


# ----------------------------------------------------------------------------- recall
def test_associative_recall_softmax_beats_small_linear_state():
    soft = A.associative_recall(256, 32, "softmax", trials=2)
    lin = A.associative_recall(256, 32, "linear", trials=2, feature_map="identity")
    assert soft > 0.95
    assert lin < 0.9
    few = A.associative_recall(4, 64, "linear", trials=2, feature_map="identity")
    assert few > 0.95  # a few pairs in a large state are recalled


def test_associative_recall_linear_improves_with_state_size():
    accs = [A.associative_recall(32, d, "linear", trials=4, feature_map="identity")
            for d in (8, 32, 128)]
    assert accs[0] < accs[1] < accs[2]


def test_state_floats():
    assert A.state_floats("softmax", 100, 16, 64) == 100 * 80
    assert A.state_floats("linear", 100, 16, 64) == 16 * 64 + 16


# ----------------------------------------------------------------------------- bad inputs
def test_bad_inputs_name_the_argument():
    q, k, v = qkv(1, 2, 5, 4)
    with pytest.raises(ValueError, match="q"):
        A.softmax_attention(q[0], k, v)
    with pytest.raises(ValueError, match="k"):
        A.softmax_attention(q, k[:, :1], v)
    with pytest.raises(ValueError, match="v"):
        A.linear_attention(q, k, v[:, :, :3])
    with pytest.raises(TypeError, match="q"):
        A.softmax_attention(q.long(), k, v)
    with pytest.raises(TypeError, match="q, k, v"):
        A.softmax_attention(q, k.float(), v)
    with pytest.raises(ValueError, match="k on meta"):
        A.linear_attention_recurrent(q, k.to("meta"), v)
    with pytest.raises(ValueError, match="k_t"):
        A.KVCache().step(q[:, :, 0], k[:, :, 0, :3], v[:, :, 0])
    w, u, kk, vv = wkv_args(1, 5, 3)
    with pytest.raises(ValueError, match="w"):
        A.wkv_recurrent(w[:2], u, kk, vv)
    with pytest.raises(ValueError, match="u"):
        A.wkv_parallel(w, u[None], kk, vv)
    with pytest.raises(ValueError, match="v"):
        A.wkv_recurrent(w, u, kk, vv[:, :4])
    with pytest.raises(TypeError, match="k"):
        A.wkv_recurrent(w, u, kk.int(), vv)
    with pytest.raises(ValueError, match="method"):
        A.associative_recall(4, 4, "lstm")


@settings(max_examples=15, deadline=None)
@given(bsz=st.integers(1, 3), heads=st.integers(1, 3), max_len=st.integers(1, 12),
       dim=st.integers(1, 9), per_row=st.booleans())
def test_decode_attention_ref_is_the_last_row_of_attention(bsz, heads, max_len, dim, per_row):
    """decode_attention_ref over the first n cached positions == softmax attention of that
    query over those n keys (float64); what lies past n is never looked at."""
    g = torch.Generator().manual_seed(bsz * 1000 + max_len * 10 + dim)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    q, k, v = r(bsz, heads, dim), r(bsz, heads, max_len, dim), r(bsz, heads, max_len, dim)
    lengths = torch.randint(1, max_len + 1, (bsz,) if per_row else (), generator=g)
    out = A.decode_attention_ref(q, k, v, lengths)
    for b, n in enumerate(lengths.expand(bsz).tolist()):
        w = A.attention_weights(q[b:b + 1, :, None], k[b:b + 1, :, :n], causal=False)
        want = (w @ v[b:b + 1, :, :n])[:, :, 0]  # (1, H, P)
        torch.testing.assert_close(out[b:b + 1], want, **tol(torch.float64))
