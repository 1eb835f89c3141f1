"""mambabook.scan: every scan equals the loop (values and gradients), work and depth
formulas match counts taken while the scans run, schedules are correct scans, bad inputs
raise errors that name the argument."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import tol
from hypothesis import given, settings
from hypothesis import strategies as st

from mambabook import scan as S

FAST = {name: fn for name, fn in S.SCANS.items() if name != "sequential"}
STATS = {
    "sequential": (S.scan_sequential_ref, S.sequential_stats),
    "hillis_steele": (S.scan_hillis_steele, S.hillis_steele_stats),
    "blelloch": (S.scan_blelloch, S.blelloch_stats),
    "chunked": (S.scan_chunked, S.chunked_stats),
}


def _inputs(batch, L, dtype, *, positive=False, h0=False):
    lo = 0.05 if positive else -1.0
    a = torch.empty(*batch, L, dtype=dtype).uniform_(lo, 1.0)  # (..., L), |a| <= 1
    b = torch.randn(*batch, L, dtype=dtype)  # (..., L)
    return a, b, (torch.randn(batch, dtype=dtype) if h0 else None)


# ----------------------------------------------------------------------------- values
@settings(max_examples=60, deadline=None)
@given(
    L=st.one_of(st.just(1), st.integers(1, 70), st.sampled_from([127, 129, 255, 300])),
    batch=st.sampled_from([(), (3,), (2, 3), (1, 2, 2)]),
    with_h0=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    name=st.sampled_from(sorted(FAST)),
)
def test_every_scan_equals_the_loop(L, batch, with_h0, dtype, name):
    a, b, h0 = _inputs(batch, L, dtype, positive=name == "logspace", h0=with_h0)
    out = FAST[name](a, b, h0)
    assert out.shape == (*batch, L) and out.dtype == dtype
    torch.testing.assert_close(out, S.scan_sequential_ref(a, b, h0), **tol(dtype))


def test_the_loop_is_the_recurrence():
    a, b, h0 = _inputs((2, 3), 6, torch.float64, h0=True)
    h, expected = h0, []
    for t in range(6):
        h = a[..., t] * h + b[..., t]
        expected.append(h)
    torch.testing.assert_close(S.scan_sequential_ref(a, b, h0), torch.stack(expected, -1))
    # no h0 means a zero state: h_0 = b_0 whatever a_0 is
    torch.testing.assert_close(S.scan_sequential_ref(a, b)[..., 0], b[..., 0])


@pytest.mark.parametrize("L", [1, 5, 16, 37, 100])
@pytest.mark.parametrize("chunk", [2, 3, 4, 8, 16, 64])
def test_chunked_and_logspace_any_chunk(L, chunk):
    a, b, h0 = _inputs((2, 4), L, torch.float64, positive=True, h0=True)
    ref = S.scan_sequential_ref(a, b, h0)
    torch.testing.assert_close(S.scan_chunked(a, b, h0, chunk=chunk), ref, **tol(torch.float64))
    torch.testing.assert_close(S.scan_logspace(a, b, h0, chunk=chunk), ref, **tol(torch.float64))
    torch.testing.assert_close(S.scan_logspace(a, b, h0, chunk=1), ref, **tol(torch.float64))


@pytest.mark.parametrize("name", sorted(S.SCANS))
def test_broadcasting(name):
    """a shared over the batch (D, L), b (B, D, L), h0 (D,): as in a time-invariant SSM."""
    a = torch.rand(4, 9, dtype=torch.float64) * 0.9 + 0.05  # (D, L)
    b = torch.randn(3, 4, 9, dtype=torch.float64)  # (B, D, L)
    h0 = torch.randn(4, dtype=torch.float64)  # (D,)
    expected = S.scan_sequential_ref(a.expand(3, 4, 9), b, h0.expand(3, 4))
    torch.testing.assert_close(S.SCANS[name](a, b, h0), expected)


def test_mamba_shaped_state():
    """(B, D, N, L): a = exp(delta A) in (0, 1), the selective scan's recurrence."""
    delta = torch.rand(2, 6, 1, 50) * 0.5  # (B, D, 1, L)
    A = -torch.rand(6, 4, 1) * 4  # (D, N, 1)
    a = torch.exp(delta * A)  # (B, D, N, L)
    b = torch.randn(2, 6, 4, 50)  # (B, D, N, L)
    ref = S.scan_sequential_ref(a, b)
    for name, fn in FAST.items():
        torch.testing.assert_close(fn(a, b), ref, **tol(torch.float32), msg=name)


def test_associativity_and_identity():
    x, y, z = (tuple(torch.randn(100, dtype=torch.float64) for _ in range(2)) for _ in range(3))
    left = S.combine(S.combine(x, y), z)
    right = S.combine(x, S.combine(y, z))
    torch.testing.assert_close(left, right)
    e = (torch.ones(100, dtype=torch.float64), torch.zeros(100, dtype=torch.float64))
    torch.testing.assert_close(S.combine(e, x), x)
    torch.testing.assert_close(S.combine(x, e), x)
    # not commutative: the order of time matters
    assert not torch.allclose(S.combine(x, y)[1], S.combine(y, x)[1])


def test_logspace_breaks_loudly():
    a, b, _ = _inputs((2,), 64, torch.float32, positive=True)
    with pytest.raises(ValueError, match="a must be > 0"):
        S.scan_logspace(a - 1.0, b)
    tiny = torch.full((2, 64), 1e-3)  # log a = -6.9: e^-221 over a chunk of 32
    with pytest.raises(ValueError, match="decays"):
        S.scan_logspace(tiny, b, chunk=32)
    # a smaller chunk keeps the span inside float32, and the answer is right
    torch.testing.assert_close(S.scan_logspace(tiny, b, chunk=8), S.scan_sequential_ref(tiny, b))
    assert math.isclose(S.logspace_max_decay(torch.float32), 2 * (math.log(3.4028e38) - 8),
                        rel_tol=1e-4)


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("L", [1, 7, 33])
@pytest.mark.parametrize("name", sorted(FAST))
def test_gradients_match_the_loop(L, name):
    a = (torch.rand(2, 1, L, dtype=torch.float64) * 0.9 + 0.05).requires_grad_()  # (B, 1, L)
    b = torch.randn(3, L, dtype=torch.float64, requires_grad=True)  # (D, L)
    h0 = torch.randn(1, 3, dtype=torch.float64, requires_grad=True)  # (1, D)
    w = torch.randn(2, 3, L, dtype=torch.float64)
    want = torch.autograd.grad((S.scan_sequential_ref(a, b, h0) * w).sum(), (a, b, h0))
    got = torch.autograd.grad((FAST[name](a, b, h0) * w).sum(), (a, b, h0))
    for g, r, arg in zip(got, want, ("a", "b", "h0")):
        torch.testing.assert_close(g, r, msg=f"grad of {arg}")


def test_chunked_gradcheck():
    a = (torch.rand(2, 11, dtype=torch.float64) * 0.9 + 0.05).requires_grad_()
    b = torch.randn(2, 11, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, h0: S.scan_chunked(a, b, h0, chunk=3), (a, b, h0))


# ----------------------------------------------------------------------------- work and depth
@pytest.mark.parametrize("L", [1, 2, 3, 8, 13, 64, 100, 256])
@pytest.mark.parametrize("name", sorted(STATS))
def test_stats_formulas_match_counted_runs(name, L):
    scan, stats = STATS[name]
    a, b, _ = _inputs((2, 3), L, torch.float32)
    counted = S.count_combines(scan, a, b)
    expected = stats(L)
    assert (counted.work, counted.depth) == (expected.work, expected.depth)
    _, reported = scan(a, b, return_stats=True)
    assert reported == expected
    if name == "chunked":
        for T in (2, 3, 8):
            counted = S.count_combines(scan, a, b, chunk=T)
            assert (counted.work, counted.depth) == (S.chunked_stats(L, T).work,
                                                     S.chunked_stats(L, T).depth)


@pytest.mark.parametrize("k", range(0, 11))
def test_work_and_depth_closed_forms(k):
    n = 2**k
    hs, bl, sq = S.hillis_steele_stats(n), S.blelloch_stats(n), S.sequential_stats(n)
    assert (sq.work, sq.depth) == (n - 1, n - 1)
    assert hs.depth == k and hs.work == n * k - n + 1 and hs.work <= n * max(k, 1)
    assert bl.depth == 2 * k and bl.work == 2 * (n - 1)
    if n >= 8:  # the work-efficient one does less than the log-depth one
        assert bl.work < hs.work


@pytest.mark.parametrize("L", [5, 100, 1000, 4096, 10_000])
def test_non_powers_of_two_and_chunked_bounds(L):
    hs, bl = S.hillis_steele_stats(L), S.blelloch_stats(L)
    k = math.ceil(math.log2(L))
    assert hs.depth == k and hs.work <= L * k
    assert bl.depth == 2 * k and 2 * (L - 1) <= bl.work < 4 * L  # padding to 2^k at most doubles
    T = S.default_chunk(L)
    ch = S.chunked_stats(L)
    levels = math.ceil(math.log(L, T) - 1e-9)  # chunk levels until one chunk is left
    assert ch.depth <= (2 * T - 1) * levels + T
    assert 2 * L - T <= ch.work <= 2 * (L + T) * T / (T - 1) + T * levels


# ----------------------------------------------------------------------------- schedules
@pytest.mark.parametrize("n", [1, 2, 4, 8, 16, 32])
@pytest.mark.parametrize("algorithm", ["hillis_steele", "blelloch"])
def test_schedules_are_scans(algorithm, n):
    steps = S.scan_schedule(n, algorithm)
    cells = S.run_schedule([(i, i) for i in range(n)], steps, S.combine_segments, None)
    assert cells[-1] == [(0, i) for i in range(n)]  # cell i holds elements 0..i
    a, b, _ = _inputs((), n, torch.float64)
    values = S.run_schedule(list(zip(a.tolist(), b.tolist())), steps)[-1]
    torch.testing.assert_close(torch.tensor([v[1] for v in values], dtype=torch.float64),
                               S.scan_sequential_ref(a, b))
    stats = S.hillis_steele_stats(n) if algorithm == "hillis_steele" else S.blelloch_stats(n)
    assert sum(len(s.pairs) for s in steps if s.phase != "clear") == stats.work
    assert sum(1 for s in steps if s.pairs and s.phase != "clear") == stats.depth


def test_combine_segments_rejects_gaps():
    with pytest.raises(ValueError, match="non-adjacent"):
        S.combine_segments((0, 1), (3, 4))
    assert S.combine_segments(None, (2, 3)) == (2, 3)


# ----------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("name", sorted(S.SCANS))
def test_bad_inputs_name_the_argument(name):
    fn = S.SCANS[name]
    a, b, _ = _inputs((2, 3), 8, torch.float32, positive=True)
    with pytest.raises(ValueError, match="a and b must be broadcastable"):
        fn(a, b[..., :5])
    with pytest.raises(TypeError, match="a must"):
        fn(torch.ones(2, 3, 8, dtype=torch.int64), b)
    with pytest.raises(TypeError, match="b must"):
        fn(a, b.double())
    with pytest.raises(TypeError, match="b must be a torch.Tensor"):
        fn(a, [1.0] * 8)
    with pytest.raises(ValueError, match="h0 must broadcast"):
        fn(a, b, torch.zeros(2, 3, 8))
    with pytest.raises(TypeError, match="h0 must"):
        fn(a, b, torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="L >= 1"):
        fn(a[..., :0], b[..., :0])
    with pytest.raises(ValueError, match="a must have shape"):
        fn(torch.tensor(0.5), b)


@pytest.mark.parametrize("fn", [S.scan_chunked, S.scan_logspace])
def test_bad_chunk(fn):
    a, b, _ = _inputs((3,), 8, torch.float32, positive=True)
    for bad in (0, -2, 2.5) + ((1,) if fn is S.scan_chunked else ()):
        with pytest.raises(ValueError, match="chunk"):
            fn(a, b, chunk=bad)


def test_bad_schedule_args():
    with pytest.raises(ValueError, match="algorithm"):
        S.scan_schedule(8, "kogge")
    with pytest.raises(ValueError, match="power of two"):
        S.scan_schedule(6, "blelloch")
