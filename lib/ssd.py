"""State space duality (Mamba-2; Dao & Gu, 2024, sections 3-6): one SSM, four computations.

With a scalar decay per head, h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T, y_t = h_t C_t + D x_t
is y = M (dt x) + D x with M = L o (C B^T) lower-triangular semiseparable: `ssd_ref` builds
M, `ssd_chunked` computes it by blocks (the paper's listing 1), `ssd_recurrent` and
`ssd_step` run the recurrence. The plain-PyTorch twins of `mambabook.kernels.ssd_chunk_scan`
(chapter 9). Shapes: x (B, L, H, P), dt (B, L, H), A (H,), B and C (B, L, G, N).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .checks import check_positive_int, check_same_device, check_tensor


def check_ssd_args(x, dt, A, B, C, D=None):
    """Validate SSD inputs; returns (batch, L, H, P, G, N).

    x: (B, L, H, P); dt: (B, L, H); A: (H,); B, C: (B, L, G, N) with G dividing H;
    D: (H,) or (H, P).
    """
    check_tensor("x", x, 4, dims="(B, L, H, P)")
    bsz, length, heads, hdim = x.shape
    check_tensor("dt", dt, 3, shape=(bsz, length, heads), dims="(B, L, H)")
    check_tensor("A", A, 1, shape=(heads,), dims="(H,)")
    check_tensor("B", B, 4, dims="(B, L, G, N)")
    groups, dstate = B.shape[2], B.shape[3]
    if B.shape[:2] != (bsz, length) or groups == 0 or heads % groups:
        raise ValueError(f"B must have shape (B, L, G, N) = ({bsz}, {length}, G, N) with G "
                         f"dividing H = {heads}, got shape {tuple(B.shape)}")
    check_tensor("C", C, 4, shape=tuple(B.shape), dims="(B, L, G, N)")
    if D is not None:
        check_tensor("D", D, (1, 2), dims="(H,) or (H, P)")
        if tuple(D.shape) not in ((heads,), (heads, hdim)):
            raise ValueError(f"D must have shape (H,) = ({heads},) or (H, P) = "
                             f"({heads}, {hdim}), got shape {tuple(D.shape)}")
    check_same_device(x=x, dt=dt, A=A, B=B, C=C, D=D)
    if length == 0:
        raise ValueError("x must have shape (B, L, H, P) with L >= 1, got L = 0")
    return bsz, length, heads, hdim, groups, dstate


def check_state(name, state, bsz, heads, hdim, dstate, x):
    """A state (B, H, P, N) on x's device."""
    check_tensor(name, state, 4, shape=(bsz, heads, hdim, dstate), dims="(B, H, P, N)")
    check_same_device(x=x, **{name: state})


def _work_dtype(x):
    """float64 stays float64 (exact tests); everything else is computed in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _heads(M, heads):
    """(B, L, G, N) -> (B, L, H, N): head h reads group h // (H / G)."""
    return M.repeat_interleave(heads // M.shape[2], dim=2)


def _skip(y, x, D):
    """y + D x for D (H,) or (H, P); y, x: (B, L, H, P)."""
    if D is None:
        return y
    return y + x * (D[:, None] if D.dim() == 1 else D).to(y.dtype)


def segsum(a):
    """a (..., T) -> (..., T, T): out[i, j] = a_{j+1} + ... + a_i for j <= i, -inf above.

    Summed from a masked copy, never as cumsum[i] - cumsum[j] (which loses all precision
    once the cumulative sum is large), so exp(segsum) is the decay mask, exactly 0 above."""
    T = a.shape[-1]
    a = a[..., None].expand(*a.shape, T)  # (..., T, T): a_i in row i
    strict = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device), -1)
    s = torch.cumsum(a.masked_fill(~strict, 0), dim=-2)
    lower = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device))
    return s.masked_fill(~lower, -torch.inf)


def ssd_matrix(dt, A, B, C):
    """M = L o (C B^T) per (batch, head): (B, H, L, L), float32 (float64 for float64 dt).

    L[t, s] = exp(dt_{s+1} A + ... + dt_t A) for s <= t, else 0 (the decay mask);
    y = M (dt x) + D x."""
    wd = _work_dtype(dt)
    heads = A.shape[0]
    decay = torch.exp(segsum((dt.to(wd) * A.to(wd)).transpose(1, 2)))  # (B, H, L, L)
    Bh, Ch = _heads(B.to(wd), heads), _heads(C.to(wd), heads)  # (B, L, H, N)
    return decay * torch.einsum("bthn,bshn->bhts", Ch, Bh)


def ssd_ref(x, dt, A, B, C, D=None):
    """The quadratic form: y = M (dt x) + D x with M = L o (C B^T) materialised.

    x (B, L, H, P), dt (B, L, H) > 0, A (H,) < 0, B and C (B, L, G, N), D (H,) or (H, P).
    Returns y (B, L, H, P) in x's dtype. O(L^2) memory: the reference, not a fast path."""
    check_ssd_args(x, dt, A, B, C, D)
    wd = _work_dtype(x)
    M = ssd_matrix(dt, A, B, C)  # (B, H, L, L)
    y = torch.einsum("bhts,bshp->bthp", M, x.to(wd) * dt.to(wd)[..., None])
    return _skip(y, x.to(wd), D).to(x.dtype)


def ssd_step(state, x, dt, A, B, C, D=None):
    """One step of the recurrence: h <- exp(dt A) h + dt x B^T, y = h C + D x.

    state (B, H, P, N); x (B, H, P); dt (B, H); A (H,); B, C (B, G, N); D (H,) or (H, P).
    Returns (y (B, H, P) in x's dtype, the new state, float32 or float64). Not in place."""
    check_tensor("state", state, 4, dims="(B, H, P, N)")
    bsz, heads, hdim, dstate = state.shape
    check_tensor("x", x, 3, shape=(bsz, heads, hdim), dims="(B, H, P)")
    check_tensor("dt", dt, 2, shape=(bsz, heads), dims="(B, H)")
    check_tensor("A", A, 1, shape=(heads,), dims="(H,)")
    for name, M in (("B", B), ("C", C)):
        check_tensor(name, M, 3, dims="(B, G, N)")
        if (M.shape[0], M.shape[2]) != (bsz, dstate) or M.shape[1] == 0 \
                or heads % M.shape[1] or M.shape != B.shape:
            raise ValueError(f"{name} must have shape (B, G, N) = ({bsz}, G, {dstate}) with G "
                             f"dividing H = {heads}, got shape {tuple(M.shape)}")
    if D is not None and tuple(D.shape) not in ((heads,), (heads, hdim)):
        raise ValueError(f"D must have shape (H,) = ({heads},) or (H, P) = ({heads}, {hdim}), "
                         f"got shape {tuple(D.shape)}")
    check_same_device(state=state, x=x, dt=dt, A=A, B=B, C=C, D=D)
    return _step(state, x, dt, A, B, C, D)


def _step(state, x, dt, A, B, C, D):
    wd = _work_dtype(x)
    heads = A.shape[0]
    dt_ = dt.to(wd)
    Bh = B.to(wd).repeat_interleave(heads // B.shape[1], dim=1)  # (B, H, N)
    Ch = C.to(wd).repeat_interleave(heads // C.shape[1], dim=1)
    decay = torch.exp(dt_ * A.to(wd))[..., None, None]  # (B, H, 1, 1)
    h = decay * state.to(wd) + (dt_[..., None] * x.to(wd))[..., None] * Bh[:, :, None, :]
    y = torch.einsum("bhpn,bhn->bhp", h, Ch)  # (B, H, P)
    if D is not None:
        y = y + x.to(wd) * (D[:, None] if D.dim() == 1 else D).to(wd)
    return y.to(x.dtype), h


def ssd_recurrent(x, dt, A, B, C, D=None, initial_states=None, return_final_states=False):
    """The recurrence as a loop over L: `ssd_step` L times from initial_states (zeros).

    Shapes as `ssd_ref`; initial_states (B, H, P, N). Returns y (B, L, H, P), and with
    return_final_states also h_L (B, H, P, N) in float32 (float64 for float64 x)."""
    bsz, length, heads, hdim, _, dstate = check_ssd_args(x, dt, A, B, C, D)
    if initial_states is not None:
        check_state("initial_states", initial_states, bsz, heads, hdim, dstate, x)
        h = initial_states.to(_work_dtype(x))
    else:
        h = x.new_zeros(bsz, heads, hdim, dstate, dtype=_work_dtype(x))
    ys = []
    for t in range(length):
        y, h = _step(h, x[:, t], dt[:, t], A, B[:, t], C[:, t], D)
        ys.append(y)
    y = torch.stack(ys, dim=1)  # (B, L, H, P)
    return (y, h) if return_final_states else y


def ssd_chunked(x, dt, A, B, C, chunk_size, D=None, initial_states=None,
                return_final_states=False):
    """The block algorithm (the paper's listing 1) for sequences cut into chunks of T steps:

    1. inside each chunk, the quadratic form (T x T blocks on M's diagonal);
    2. each chunk's state from its inputs, as if it had started from zero;
    3. states passed between chunks (a recurrence over L / T chunks);
    4. each chunk's output from the state entering it (M's off-diagonal blocks, rank N).
    Shapes and return values as `ssd_recurrent`; L need not be a multiple of chunk_size
    (the tail is padded with dt = 0 steps, which keep the state unchanged)."""
    bsz, length, heads, hdim, _, dstate = check_ssd_args(x, dt, A, B, C, D)
    check_positive_int("chunk_size", chunk_size)
    if initial_states is not None:
        check_state("initial_states", initial_states, bsz, heads, hdim, dstate, x)
    wd = _work_dtype(x)
    T, pad = chunk_size, (-length) % chunk_size
    nc = (length + pad) // T

    def chunks(t):  # (B, L, ...) -> (B, c, T, ...), zero-padded
        t = F.pad(t.to(wd), (0, 0) * (t.dim() - 2) + (0, pad))
        return t.reshape(bsz, nc, T, *t.shape[2:])

    X = chunks(x.to(wd) * dt.to(wd)[..., None])  # (B, c, T, H, P): dt x
    Bc, Cc = chunks(_heads(B, heads)), chunks(_heads(C, heads))  # (B, c, T, H, N)
    a = chunks(dt.to(wd) * A.to(wd)).permute(0, 3, 1, 2)  # (B, H, c, T)
    a_cum = torch.cumsum(a, dim=-1)  # (B, H, c, T)
    # 1. diagonal blocks: y = (L o C B^T) X inside each chunk
    Lmask = torch.exp(segsum(a))  # (B, H, c, T, T)
    y_diag = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", Cc, Bc, Lmask, X)
    # 2. the state each chunk leaves, from zero: decay from step s to the chunk's end
    decay_to_end = torch.exp(a_cum[..., -1:] - a_cum)  # (B, H, c, T)
    states = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bc, decay_to_end, X)  # (B, c, H, P, N)
    # 3. pass states between chunks: a recurrence over chunks, as a (c+1, c+1) decay mask
    h0 = (initial_states.to(wd) if initial_states is not None
          else x.new_zeros(bsz, heads, hdim, dstate, dtype=wd))
    states = torch.cat([h0[:, None], states], dim=1)  # (B, c+1, H, P, N)
    chunk_decay = torch.exp(segsum(F.pad(a_cum[..., -1], (1, 0))))  # (B, H, c+1, c+1)
    states = torch.einsum("bhzc,bchpn->bzhpn", chunk_decay, states)
    entering, final = states[:, :-1], states[:, -1]  # (B, c, H, P, N), (B, H, P, N)
    # 4. off-diagonal blocks: y = C h_entering, decayed from the chunk's start to step t
    y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", Cc, entering, torch.exp(a_cum))
    y = (y_diag + y_off).reshape(bsz, nc * T, heads, hdim)[:, :length]
    y = _skip(y, x.to(wd), D).to(x.dtype)
    return (y, final) if return_final_states else y


def ssd_combined_ref(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None,
                     dt_softplus=False, initial_states=None):
    """`mambabook.kernels.ssd_chunk_scan`'s computation in PyTorch (its twin): dt's bias and
    softplus, `ssd_chunked`, the gate silu(z). Returns (out, final state)."""
    dtf = dt.float() + (dt_bias.float() if dt_bias is not None else 0.0)
    dtf = F.softplus(dtf) if dt_softplus else dtf
    y, final = ssd_chunked(x, dtf, A, B, C, chunk_size, D, initial_states=initial_states,
                           return_final_states=True)
    if z is not None:
        y = (y.float() * F.silu(z.float())).to(x.dtype)
    return y, final
