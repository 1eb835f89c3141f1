"""The first-order linear recurrence h_t = a_t h_{t-1} + b_t, computed five ways (chapter 6).

Every way rests on one associative operator on pairs, `combine((a, b), (a', b')) =
(a a', a' b + b')` (Blelloch, "Prefix sums and their applications", 1990, sec. 1.4):
a plain loop (`scan_sequential_ref`), Hillis-Steele, Blelloch (work-efficient), chunked,
and a log-space cumsum form. Each combine-based scan can report its work and depth.

Conventions, shared by every function here:
- a, b: tensors whose LAST dimension is time L, broadcastable to one shape (..., L), e.g.
  (B, D, L) for a scalar state per channel or (B, D, N, L) for Mamba's (D, N) state.
- h0 (optional): the state before step 0, broadcastable to (...) (the shape without L);
  None means zeros, so h_0 = b_0.
- The result h has the broadcast shape (..., L) and the dtype of a and b (which must agree).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .checks import check_positive_int, check_same_device, check_tensor

__all__ = [
    "ScanStats", "ScanStep", "combine", "check_scan_args",
    "scan_sequential_ref", "scan_hillis_steele", "scan_blelloch", "scan_chunked", "scan_logspace",
    "sequential_stats", "hillis_steele_stats", "blelloch_stats", "chunked_stats",
    "default_chunk", "count_combines", "logspace_max_decay", "SCANS",
    "scan_schedule", "run_schedule", "combine_segments",
]


# ----------------------------------------------------------------------------- the operator
def combine(left, right):
    """(a, b) o (a', b') = (a a', a' b + b'): first apply (a, b), then (a', b').

    Works elementwise on tensors (or on Python numbers). `left` is the earlier stretch of
    time. Associative, not commutative: composing h -> a h + b and then h -> a' h + b'.
    """
    a, b = left
    a2, b2 = right
    return a * a2, a2 * b + b2


@dataclass(frozen=True)
class ScanStats:
    """How much a scan of length L costs, counted in combines of (a, b) pairs."""

    algorithm: str  # "sequential", "hillis_steele", "blelloch" or "chunked"
    L: int  # sequence length asked for
    work: int  # combines in total, per scalar recurrence (padding included)
    depth: int  # sequential steps: combines on the longest dependency chain; here also
    #             the number of vectorised tensor steps the Python code issues


def _log2_ceil(n: int) -> int:
    return max(0, (n - 1).bit_length())


def sequential_stats(L: int) -> ScanStats:
    """The loop: one combine per step after the first; work = depth = L - 1."""
    return ScanStats("sequential", L, L - 1, L - 1)


def hillis_steele_stats(L: int) -> ScanStats:
    """Hillis-Steele: step s = 1, 2, 4, ... < L combines L - s pairs.

    work = sum_s (L - s) = L log2 L - L + 1 when L is a power of two; depth = ceil(log2 L).
    """
    steps = [1 << k for k in range(_log2_ceil(L))]
    return ScanStats("hillis_steele", L, sum(L - s for s in steps), len(steps))


def blelloch_stats(L: int) -> ScanStats:
    """Blelloch on L padded to n = 2^ceil(log2 L): up-sweep n - 1, down-sweep n - 1 combines.

    work = 2 (n - 1) (< 4 L); depth = 2 log2 n.
    """
    n = 1 << _log2_ceil(L)
    return ScanStats("blelloch", L, 2 * (n - 1), 2 * _log2_ceil(L))


def default_chunk(L: int) -> int:
    """The default chunk length T: 4 (or L if shorter).

    Each step inside the chunks reads every T-th element, so the cost per step is about
    that of a pass over all of a and b whatever T is, and 2 T such steps are taken per
    level: a small T keeps the passes few. Measured on a 2-core CPU at D = 256: T = 4 was
    fastest from L = 1K to 16K, 8 within 15%, 16 or 32 up to 2x slower.
    """
    return min(4, L)


def chunked_stats(L: int, chunk: int | None = None) -> ScanStats:
    """Chunked scan: C = ceil(L / T) chunks of T (L padded to C T with the identity).

    1. inside each chunk, the end state from zero: (T - 1) C combines, depth T - 1;
    2. the carries: the same chunked scan on the C chunk ends (recursively);
    3. the fix-up, each chunk re-run from its true start: T C combines, depth T.
    With a single chunk (L <= T) only the fix-up runs: work = depth = L.
    work ~ (2 T - 1) / (T - 1) L (7/3 L for T = 4); depth ~ (2 T - 1) log_T L.
    """
    T = min(chunk or default_chunk(L), L)
    C = -(-L // T)
    if C == 1:
        return ScanStats("chunked", L, T, T)
    if T < 2:
        raise ValueError(f"chunk must be >= 2, got {chunk}")
    carries = chunked_stats(C, chunk or default_chunk(L))
    return ScanStats("chunked", L, (T - 1) * C + carries.work + T * C,
                     (T - 1) + carries.depth + T)


class _CombineCounter(TorchDispatchMode):
    """Counts the b-updates a' b + b' (aten add / addcmul, out of place) run inside it."""

    COUNTED = ("aten.add.Tensor", "aten.addcmul.default", "aten.addcmul.out")

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if str(func) in self.COUNTED:
            self.calls += 1
            self.elements += out.numel()
        return out


def count_combines(scan: Callable[..., torch.Tensor], a, b, **kwargs) -> ScanStats:
    """Run scan(a, b, **kwargs) and count its combines as it runs (no h0: folding it is extra).

    Every combine updates b with one add (a' * b + b') or one addcmul, so counting those
    tensor ops gives the depth (how many vectorised steps) and, divided by the number of
    independent recurrences, the work. The formulas of `*_stats` are checked against this.
    """
    with _CombineCounter() as counter:
        h = scan(a, b, **kwargs)
    lanes = h.numel() // h.shape[-1]  # independent recurrences: the size of (...)
    return ScanStats(getattr(scan, "__name__", "scan"), h.shape[-1],
                     counter.elements // lanes, counter.calls)


# ----------------------------------------------------------------------------- validation
def check_scan_args(a, b, h0=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Validate a, b (..., L) and h0 (...); return a, b broadcast to one shape, and h0."""
    check_tensor("a", a, dims="(..., L)")
    check_tensor("b", b, dims="(..., L)")
    if a.dim() == 0 or b.dim() == 0:
        name = "a" if a.dim() == 0 else "b"
        raise ValueError(f"{name} must have shape (..., L) with a time dimension last, got shape ()")
    if a.dtype != b.dtype:
        raise TypeError(f"b must have the dtype of a ({a.dtype}), got {b.dtype}")
    try:
        shape = torch.broadcast_shapes(a.shape, b.shape)
    except RuntimeError:
        raise ValueError(
            f"a and b must be broadcastable to one shape (..., L), got a {tuple(a.shape)} and "
            f"b {tuple(b.shape)}") from None
    if shape[-1] == 0:
        raise ValueError(f"a and b must have L >= 1 along the last dimension, got shape {tuple(shape)}")
    if h0 is not None:
        check_tensor("h0", h0, dims="(...) without L")
        if h0.dtype != a.dtype:
            raise TypeError(f"h0 must have the dtype of a ({a.dtype}), got {h0.dtype}")
        try:
            ok = torch.broadcast_shapes(h0.shape, shape[:-1]) == shape[:-1]
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"h0 must broadcast to (...) = {tuple(shape[:-1])} (a and b without "
                             f"L), got shape {tuple(h0.shape)}")
    check_same_device(a=a, b=b, h0=h0)
    a, b = torch.broadcast_tensors(a, b)
    return a, b, h0


def _fold_h0(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None) -> torch.Tensor:
    """Fold the initial state into the first input: b_0 <- a_0 h0 + b_0. Then h0 = 0."""
    if h0 is None:
        return b
    b0 = a[..., :1] * h0[..., None] + b[..., :1]  # (..., 1)
    return torch.cat([b0, b[..., 1:]], dim=-1)  # (..., L)


def _pad_identity(a: torch.Tensor, b: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad the time axis to length n with the identity pair (1, 0)."""
    extra = n - a.shape[-1]
    if extra == 0:
        return a, b
    pad = a.shape[:-1] + (extra,)
    return (torch.cat([a, a.new_ones(pad)], dim=-1),
            torch.cat([b, b.new_zeros(pad)], dim=-1))


# ----------------------------------------------------------------------------- the scans
def scan_sequential_ref(a, b, h0=None, *, return_stats: bool = False):
    """h_t = a_t h_{t-1} + b_t by a plain Python loop over L: the reference.

    a, b: (..., L) broadcastable; h0: (...) or None -> h: (..., L). Work = depth = L - 1.
    """
    a, b, h0 = check_scan_args(a, b, h0)
    a_t, b_t = a.unbind(-1), b.unbind(-1)  # L tensors of shape (...)
    h = b_t[0] if h0 is None else a_t[0] * h0 + b_t[0]  # (...)
    hs = [h]
    for t in range(1, len(a_t)):
        h = a_t[t] * h + b_t[t]  # (...)
        hs.append(h)
    out = torch.stack(hs, dim=-1)  # (..., L)
    return (out, sequential_stats(out.shape[-1])) if return_stats else out


def scan_hillis_steele(a, b, h0=None, *, return_stats: bool = False):
    """Hillis-Steele (1986): at step s = 1, 2, 4, ..., position i takes in position i - s.

    x_i <- x_{i-s} o x_i for every i >= s at once; after ceil(log2 L) steps x_i holds the
    combination of elements 0..i. Depth log2 L, work ~ L log2 L.
    a, b: (..., L); h0: (...) or None -> h: (..., L).
    """
    a, b, h0 = check_scan_args(a, b, h0)
    A, Bv = a, _fold_h0(a, b, h0)  # (..., L) each
    L = A.shape[-1]
    s = 1
    while s < L:
        A_new, B_new = combine((A[..., :-s], Bv[..., :-s]), (A[..., s:], Bv[..., s:]))  # (..., L-s)
        Bv = torch.cat([Bv[..., :s], B_new], dim=-1)  # (..., L)
        if 2 * s < L:  # the products of a are needed by the next step only
            A = torch.cat([A[..., :s], A_new], dim=-1)  # (..., L)
        s *= 2
    return (Bv, hillis_steele_stats(L)) if return_stats else Bv


def scan_blelloch(a, b, h0=None, *, return_stats: bool = False):
    """Blelloch (1990): up-sweep a balanced tree of combines, then sweep prefixes down.

    Pads L to n = 2^k with the identity (1, 0). Up-sweep: level d+1 = combine(even, odd
    children of level d) (n - 1 combines). Down-sweep: the exclusive prefix of a left child
    is its parent's; of a right child, parent's prefix o left sibling (n - 1 combines).
    The inclusive scan is the exclusive one shifted left, ending with the root's total.
    The tree levels are kept as tensors (not overwritten in place) so autograd sees them.
    a, b: (..., L); h0: (...) or None -> h: (..., L).
    """
    a, b, h0 = check_scan_args(a, b, h0)
    L = a.shape[-1]
    A, Bv = _pad_identity(a, _fold_h0(a, b, h0), 1 << _log2_ceil(L))  # (..., n)
    levels = [(A, Bv)]
    while levels[-1][0].shape[-1] > 1:  # up-sweep: (..., m) -> (..., m/2)
        A, Bv = levels[-1]
        levels.append(combine((A[..., 0::2], Bv[..., 0::2]), (A[..., 1::2], Bv[..., 1::2])))
    total_b = levels[-1][1]  # (..., 1): the combination of all n elements
    EA, EB = torch.ones_like(total_b), torch.zeros_like(total_b)  # exclusive prefix of the root
    for A, Bv in reversed(levels[:-1]):  # down-sweep: (..., m) -> (..., 2m)
        RA, RB = combine((EA, EB), (A[..., 0::2], Bv[..., 0::2]))  # prefix of right children
        EA = torch.stack([EA, RA], dim=-1).flatten(-2)  # (..., 2m), left/right interleaved
        EB = torch.stack([EB, RB], dim=-1).flatten(-2)
    h = torch.cat([EB[..., 1:], total_b], dim=-1)[..., :L]  # inclusive = exclusive shifted
    return (h, blelloch_stats(L)) if return_stats else h


def _scan_chunked_forward(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor, T: int):
    """Reduce, scan the carries (recursively), re-scan: a, b (M, L), h0 (M,) -> h (M, L).

    No autograd. Each Python step updates one time step of every chunk at once, writing
    in place (out=): no tensor of size L is allocated but the result.
    """
    M, L = a.shape
    T = min(T, L)
    C = -(-L // T)
    if C * T != L:  # pad with the identity (1, 0) to whole chunks
        a = torch.cat([a, a.new_ones(M, C * T - L)], dim=-1)  # (M, C*T)
        b = torch.cat([b, b.new_zeros(M, C * T - L)], dim=-1)
    a3, b3 = a.view(M, C, T), b.view(M, C, T)  # chunk c, step t: time c T + t
    a_t, b_t = a3.unbind(-1), b3.unbind(-1)  # T views (M, C): step t of every chunk
    if C > 1:
        # 1. reduce: each chunk's end state from a zero start, and the product of its a's
        e = b_t[0].clone()  # (M, C)
        for t in range(1, T):
            torch.addcmul(b_t[t], a_t[t], e, out=e)  # e <- a_t e + b_t
        p = a3.prod(dim=-1)  # (M, C)
        # 2. carries: chunk ends follow end_c = p_c end_{c-1} + e_c from end_{-1} = h0,
        #    a recurrence of length C: the same scan, recursively
        ends = _scan_chunked_forward(p, e, h0, T)  # (M, C)
        start = torch.cat([h0[:, None], ends[:, :-1]], dim=-1)  # (M, C): state before chunk c
    else:
        start = h0[:, None]  # (M, 1)
    # 3. fix-up: re-run every chunk from its true start
    out = torch.empty_like(a3)  # (M, C, T)
    h_t = out.unbind(-1)  # T views (M, C) into the result
    torch.addcmul(b_t[0], a_t[0], start, out=h_t[0])
    for t in range(1, T):
        torch.addcmul(b_t[t], a_t[t], h_t[t - 1], out=h_t[t])
    return out.view(M, C * T)[:, :L]


class _ScanChunked(torch.autograd.Function):
    """h = scan(a, b, h0); its gradient is the same scan run backwards in time.

    With g_t = dLoss/dh_t (total): g_t = gout_t + a_{t+1} g_{t+1}, then
    dLoss/db_t = g_t, dLoss/da_t = g_t h_{t-1}, dLoss/dh0 = a_0 g_0.
    """

    @staticmethod
    def forward(ctx, a, b, h0, T):  # a, b: (M, L), h0: (M,)
        h = _scan_chunked_forward(a, b, h0, T)  # (M, L)
        ctx.save_for_backward(a, h0, h)
        ctx.T = T
        return h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gout):  # gout: (M, L)
        a, h0, h = ctx.saved_tensors
        a_next = torch.cat([a[:, 1:], torch.zeros_like(a[:, :1])], dim=-1)  # a_{t+1}, (M, L)
        g = _scan_chunked_forward(a_next.flip(-1), gout.flip(-1).contiguous(),
                                  torch.zeros_like(h0), ctx.T).flip(-1)  # (M, L)
        h_prev = torch.cat([h0[:, None], h[:, :-1]], dim=-1)  # h_{t-1}, (M, L)
        return g * h_prev, g, a[:, 0] * g[:, 0], None


def scan_chunked(a, b, h0=None, *, chunk: int | None = None, return_stats: bool = False):
    """Chunked ("reduce, then scan"): loops over T, log_T(L) times, never over L.

    The C = ceil(L / T) chunks of T steps are processed all at once, step by step:
    1. reduce: each chunk's end state from a zero start (a loop over T);
    2. the C chunk carries form a recurrence of length C: the same scan, recursively;
    3. fix-up: every chunk re-run from its true starting state (a loop over T).
    Gradients: a reverse-time scan of the same kind (see `_ScanChunked`).
    a, b: (..., L); h0: (...) or None; chunk: T (default `default_chunk(L)`) -> h: (..., L).
    """
    a, b, h0 = check_scan_args(a, b, h0)
    L = a.shape[-1]
    if chunk is not None and (check_positive_int("chunk", chunk) < 2):
        raise ValueError(f"chunk must be >= 2 (chunks of 1 step leave the whole scan to the "
                         f"carries), got {chunk}")
    T = default_chunk(L) if chunk is None else chunk
    batch = a.shape[:-1]  # (...)
    h0 = a.new_zeros(batch) if h0 is None else h0.expand(batch)
    h = _ScanChunked.apply(a.reshape(-1, L).contiguous(), b.reshape(-1, L).contiguous(),
                           h0.reshape(-1).contiguous(), T)  # (M, L)
    h = h.reshape(*batch, L)  # (..., L)
    return (h, chunked_stats(L, T)) if return_stats else h


def logspace_max_decay(dtype: torch.dtype) -> float:
    """The largest span of log-products |sum log a| within one chunk the log-space scan takes.

    Its factors exp(+-(S - m)) stay below finfo.max when the span is < 2 log(finfo.max);
    a margin of 8 (e^8 ~ 3000x headroom for the cumsum) is kept.
    """
    return 2.0 * (math.log(torch.finfo(dtype).max) - 8.0)


def scan_logspace(a, b, h0=None, *, chunk: int = 32):
    """h via cumulative sums in log space, chunk by chunk; needs a > 0.

    Inside a chunk, with S_t = sum_{r<=t} log a_r and any offset m:
        h_t = exp(S_t - m) * cumsum_s(b_s exp(m - S_s))  (+ exp(S_t) times the carry in),
    two vectorised cumsums and no loop over T. m is the middle of S's range in the chunk,
    so both exponents stay within half the span. Where it breaks: a <= 0 (no logarithm;
    ValueError), and a chunk whose decay span max S - min S exceeds
    `logspace_max_decay(dtype)` (~161 in float32: e.g. a < 0.007 at every step of a chunk
    of 32) would overflow: ValueError rather than inf or nan. Precision: the cumsum adds
    terms of very different sizes, so small ones are rounded away (a relative error of
    about eps times the chunk length). The carries across chunks use a loop over L / T.
    a, b: (..., L); h0: (...) or None; chunk: T -> h: (..., L).
    """
    a, b, h0 = check_scan_args(a, b, h0)
    check_positive_int("chunk", chunk)
    if not bool((a > 0).all()):
        raise ValueError("a must be > 0 everywhere for scan_logspace (it takes log a); "
                         "use scan_chunked for a <= 0")
    L = a.shape[-1]
    T = min(chunk, L)
    C = -(-L // T)
    A, Bv = _pad_identity(a, _fold_h0(a, b, h0), C * T)  # (..., C*T)
    S = torch.log(A).unflatten(-1, (C, T)).cumsum(-1)  # (..., C, T): log prod of a in chunk
    hi, lo = S.amax(-1, keepdim=True), S.amin(-1, keepdim=True)  # (..., C, 1)
    lo = torch.minimum(lo, torch.zeros_like(lo))  # the carry in enters at S = 0
    hi = torch.maximum(hi, torch.zeros_like(hi))
    span = float((hi - lo).max().detach())
    if span > logspace_max_decay(a.dtype):
        raise ValueError(
            f"a decays (or grows) by e^{span:.0f} within a chunk of {T}, beyond what "
            f"{a.dtype} holds in scan_logspace (e^{logspace_max_decay(a.dtype):.0f}); use a "
            "smaller chunk or scan_chunked")
    m = (hi + lo) / 2  # (..., C, 1)
    inner = torch.cumsum(Bv.unflatten(-1, (C, T)) * torch.exp(m - S), dim=-1)  # (..., C, T)
    B_loc = torch.exp(S - m) * inner  # (..., C, T): the state from a zero state at chunk start
    if C > 1:
        A_end = torch.exp(S[..., :, -1])  # (..., C): prod of a over each chunk
        carry = [B_loc[..., 0, -1]]  # (...)
        for k in range(1, C - 1):
            carry.append(A_end[..., k] * carry[-1] + B_loc[..., k, -1])
        carry_in = torch.stack(carry, dim=-1)  # (..., C-1)
        # exp(S) = exp(S - m) exp(m): each factor within e^(span / 2)
        carry_m = carry_in * torch.exp(m[..., 1:, 0])  # (..., C-1)
        fixed = torch.exp(S[..., 1:, :] - m[..., 1:, :]) * carry_m[..., None] + B_loc[..., 1:, :]
        B_loc = torch.cat([B_loc[..., :1, :], fixed], dim=-2)  # (..., C, T)
    return B_loc.flatten(-2)[..., :L]


SCANS: dict[str, Callable[..., torch.Tensor]] = {
    "sequential": scan_sequential_ref,
    "hillis_steele": scan_hillis_steele,
    "blelloch": scan_blelloch,
    "chunked": scan_chunked,
    "logspace": scan_logspace,
}
"""Every scan by name; all compute the same h (scan_logspace only for a > 0)."""


# ----------------------------------------------------------------------------- schedules
@dataclass(frozen=True)
class ScanStep:
    """One parallel step of an in-place scan over an array x of n cells (for pictures)."""

    phase: str  # "hillis_steele", "up-sweep", "clear", "down-sweep" or "shift"
    pairs: tuple[tuple[int, int], ...]  # (i, j), i < j: for "combine" x_j <- x_i o x_j;
    #   in the down-sweep (t = x_i; x_i <- x_j; x_j <- x_j o t)


def scan_schedule(n: int, algorithm: str) -> list[ScanStep]:
    """The steps of Hillis-Steele or Blelloch (in-place, textbook form) on n cells.

    Blelloch needs n a power of two; its steps are the up-sweep, "clear" (save the root
    as the total, set it to the identity), the down-sweep (an exclusive scan) and "shift"
    (inclusive = exclusive shifted left, total last). Execute with `run_schedule`.
    """
    check_positive_int("n", n)
    if algorithm == "hillis_steele":
        steps, s = [], 1
        while s < n:
            steps.append(ScanStep("hillis_steele", tuple((j - s, j) for j in range(n - 1, s - 1, -1))))
            s *= 2
        return steps
    if algorithm != "blelloch":
        raise ValueError(f"algorithm must be 'hillis_steele' or 'blelloch', got {algorithm!r}")
    if n & (n - 1):
        raise ValueError(f"n must be a power of two for the Blelloch schedule, got {n}")
    k = _log2_ceil(n)
    up = [ScanStep("up-sweep", tuple((j - (1 << d), j) for j in range((2 << d) - 1, n, 2 << d)))
          for d in range(k)]
    down = [ScanStep("down-sweep", tuple((j - (1 << d), j) for j in range((2 << d) - 1, n, 2 << d)))
            for d in reversed(range(k))]
    return up + [ScanStep("clear", ((n - 1, n - 1),))] + down + [ScanStep("shift", ())]


def run_schedule(values: Sequence, steps: Sequence[ScanStep], op: Callable = combine,
                 identity=(1.0, 0.0)) -> list[list]:
    """Execute scan steps on a list of cells with a plain loop; returns the state after each.

    states[0] is the input, states[k] the cells after steps[k-1]. op(left, right) combines
    two cells (default: the (a, b) operator on numbers).
    """
    x = list(values)
    states, total = [list(x)], None
    for step in steps:
        if step.phase in ("hillis_steele", "up-sweep"):
            new = list(x)
            for i, j in step.pairs:
                new[j] = op(x[i], x[j])
            x = new
        elif step.phase == "clear":
            total, x[-1] = x[-1], identity
        elif step.phase == "down-sweep":
            for i, j in step.pairs:
                x[i], x[j] = x[j], op(x[j], x[i])
        elif step.phase == "shift":
            x = x[1:] + [total]
        else:
            raise ValueError(f"unknown step phase {step.phase!r}")
        states.append(list(x))
    return states


def combine_segments(left, right):
    """The operator on index ranges: (i, j) o (j+1, k) = (i, k); None is the identity.

    Running a schedule on [(0, 0), (1, 1), ...] shows which inputs each cell combines;
    combining ranges that are not adjacent in time is an error (it would be a wrong scan).
    """
    if left is None:
        return right
    if right is None:
        return left
    if left[1] + 1 != right[0]:
        raise ValueError(f"cannot combine non-adjacent ranges {left} and {right}")
    return (left[0], right[1])
