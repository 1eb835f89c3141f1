"""Attention and its recurrent relatives (chapters 2 and 3).

Softmax attention (Vaswani et al., 2017, eq. 1) and its KV-cache decoder; linear attention
(Katharopoulos et al., 2020, eqs. 4-6 and 16-20) in parallel and recurrent forms; the WKV
operator of RWKV-4 (Peng et al., 2023, eqs. 14-16) with per-channel decay w and bonus u, in
a parallel form and the numerically stable recurrence of its CUDA kernel. q, k, v are
(B, H, L, P); RWKV's k, v are (B, L, D) with w, u: (D,). `decode_attention_ref` is one
query against the filled part of a preallocated cache (chapter 8's Transformer).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .checks import check_positive_int, check_same_device, check_tensor


# ----------------------------------------------------------------------------- validation
def check_qkv(q, k, v, *, same_length: bool = True):
    """q: (B, H, L, P), k: (B, H, S, P), v: (B, H, S, P_v); S == L when same_length."""
    check_tensor("q", q, 4, dims="(B, H, L, P)")
    bsz, heads, length, dim = q.shape
    if length == 0:
        raise ValueError("q must have shape (B, H, L, P) with L >= 1, got L = 0")
    kv_len = length if same_length else None
    check_tensor("k", k, 4, shape=(bsz, heads, kv_len, dim), dims="(B, H, L, P)")
    check_tensor("v", v, 4, shape=(bsz, heads, k.shape[2], None), dims="(B, H, L, P)")
    check_same_device(q=q, k=k, v=v)
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k, v must have one dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    return bsz, heads, length, dim


# ----------------------------------------------------------------------------- softmax attention
def causal_mask(L: int, S: int | None = None, device=None) -> torch.Tensor:
    """(L, S) bool, True where query t may see key i (i <= t + S - L: the last L of S keys)."""
    S = L if S is None else S
    t = torch.arange(L, device=device)[:, None]
    i = torch.arange(S, device=device)[None, :]
    return i <= t + (S - L)


def attention_weights(q, k, causal: bool = True, scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(P)) with the causal mask: (B, H, L, S), each row sums to 1."""
    check_qkv(q, k, k, same_length=False)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q @ k.transpose(-1, -2)) * scale  # (B, H, L, S): the L x L matrix, materialised
    if causal:
        scores = scores.masked_fill(~causal_mask(q.shape[2], k.shape[2], q.device), float("-inf"))
    return torch.softmax(scores, dim=-1)  # (B, H, L, S)


def softmax_attention(q, k, v, causal: bool = True, scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(P) + mask) v, by two matmuls: the naive form that stores L x L.

    q: (B, H, L, P), k, v: (B, H, L, P) -> (B, H, L, P). Equal to
    F.scaled_dot_product_attention(q, k, v, is_causal=causal).
    """
    check_qkv(q, k, v)
    return attention_weights(q, k, causal, scale) @ v  # (B, H, L, P)


class KVCache:
    """Incremental decoding: keep every key and value seen so far, attend with the new query.

    step(q_t, k_t, v_t), each (B, H, P), returns (B, H, P), the same as row t of causal
    softmax_attention over the whole sequence. The cache grows by one (k, v) pair per token:
    memory and time per step grow linearly with the context length.
    """

    def __init__(self, capacity: int = 64):
        self.capacity = check_positive_int("capacity", capacity)
        self.k = self.v = None  # (B, H, capacity, P) buffers, doubled when full
        self.length = 0  # tokens stored

    def prefill(self, k, v) -> None:
        """Store a whole prompt's keys and values at once: k, v (B, H, L, P), into an empty cache."""
        check_tensor("k", k, 4, dims="(B, H, L, P)")
        check_tensor("v", v, 4, shape=(*k.shape[:3], None), dims="(B, H, L, P)")
        check_same_device(k=k, v=v)
        if self.length:
            raise ValueError(f"prefill needs an empty cache, this one holds {self.length} tokens")
        length = k.shape[2]
        self.capacity = max(self.capacity, 2 * length)
        self.k = k.new_empty(*k.shape[:2], self.capacity, k.shape[-1])
        self.v = v.new_empty(*v.shape[:2], self.capacity, v.shape[-1])
        self.k[:, :, :length], self.v[:, :, :length] = k, v
        self.length = length

    def step(self, q_t, k_t, v_t, scale: float | None = None) -> torch.Tensor:
        check_tensor("q_t", q_t, 3, dims="(B, H, P)")
        check_tensor("k_t", k_t, 3, shape=q_t.shape, dims="(B, H, P)")
        check_tensor("v_t", v_t, 3, shape=(*q_t.shape[:2], None), dims="(B, H, P)")
        check_same_device(q_t=q_t, k_t=k_t, v_t=v_t)
        if self.k is None:
            self.k = k_t.new_empty(*k_t.shape[:2], self.capacity, k_t.shape[-1])
            self.v = v_t.new_empty(*v_t.shape[:2], self.capacity, v_t.shape[-1])
        elif k_t.shape[:2] != self.k.shape[:2] or k_t.shape[-1] != self.k.shape[-1]:
            raise ValueError(f"k_t must have shape (B, H, P) = {tuple(self.k.shape[:2]) + (self.k.shape[-1],)} "
                             f"(as the cached keys), got shape {tuple(k_t.shape)}")
        if self.length == self.k.shape[2]:  # full: double the buffers (amortised O(1) per token)
            self.k = torch.cat([self.k, torch.empty_like(self.k)], dim=2)
            self.v = torch.cat([self.v, torch.empty_like(self.v)], dim=2)
        self.k[:, :, self.length] = k_t
        self.v[:, :, self.length] = v_t
        self.length += 1
        K, V = self.k[:, :, :self.length], self.v[:, :, :self.length]  # (B, H, t+1, P)
        scale = q_t.shape[-1] ** -0.5 if scale is None else scale
        w = torch.softmax((K @ q_t[..., None]).squeeze(-1) * scale, dim=-1)  # (B, H, t+1)
        return (w[:, :, None, :] @ V).squeeze(2)  # (B, H, P)

    @property
    def nbytes(self) -> int:
        """Bytes of the keys and values stored (not the spare capacity)."""
        if self.k is None:
            return 0
        per_token = (self.k[:, :, 0].numel() + self.v[:, :, 0].numel()) * self.k.element_size()
        return per_token * self.length


def check_decode_attention_args(q, k_cache, v_cache, length):
    """q: (B, H, P); k_cache, v_cache: (B, H, max_len, P) of q's dtype; length: () or (B,)
    integer tensor, all on one device. Returns (B, H, max_len, P)."""
    check_tensor("q", q, 3, dims="(B, H, P)")
    bsz, heads, dim = q.shape
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        check_tensor(name, t, 4, shape=(bsz, heads, None, dim), dims="(B, H, max_len, P)")
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"v_cache must have shape (B, H, max_len, P) = {tuple(k_cache.shape)} "
                         f"(as k_cache), got shape {tuple(v_cache.shape)}")
    if k_cache.shape[2] == 0:
        raise ValueError("k_cache must have shape (B, H, max_len, P) with max_len >= 1, got 0")
    if k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise TypeError(f"q, k_cache, v_cache must have one dtype, got q {q.dtype}, k_cache "
                        f"{k_cache.dtype}, v_cache {v_cache.dtype}")
    check_tensor("length", length, (0, 1), dtypes=None, dims=f"() or (B,) = ({bsz},)")
    if length.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"length must hold integers (int64 or int32), got {length.dtype}")
    if length.dim() == 1 and length.shape[0] != bsz:
        raise ValueError(f"length must have shape () or (B,) = ({bsz},), got shape "
                         f"{tuple(length.shape)}")
    check_same_device(q=q, k_cache=k_cache, v_cache=v_cache, length=length)
    return bsz, heads, k_cache.shape[2], dim


def decode_attention_ref(q, k_cache, v_cache, length, scale: float | None = None):
    """One query per (row, head) against the first `length` keys and values of its cache:
    softmax(q K[:n]^T * scale) V[:n] with n = length (or length[b] for row b), in float32.

    q: (B, H, P); k_cache, v_cache: (B, H, max_len, P); length: () or (B,) integer tensor
    with 1 <= n <= max_len -> (B, H, P) in q's dtype. The cache is sliced to its filled part
    (a host read of length: not for a CUDA graph); float64 inputs stay float64. The twin of
    `mambabook.kernels.decode_attention`; chapter 8's Transformer decodes with it.
    """
    bsz, _, max_len, dim = check_decode_attention_args(q, k_cache, v_cache, length)
    lengths = length.expand(bsz).tolist()
    if any(not 1 <= n <= max_len for n in lengths):
        raise ValueError(f"length must lie in [1, max_len = {max_len}], got {lengths}")
    scale = dim ** -0.5 if scale is None else scale
    ct = torch.promote_types(q.dtype, torch.float32)  # float32, or float64 for float64
    outs = []
    for b, n in enumerate(lengths):
        K, V = k_cache[b, :, :n].to(ct), v_cache[b, :, :n].to(ct)  # (H, n, P): filled part
        w = torch.softmax((K @ q[b].to(ct)[:, :, None])[..., 0] * scale, dim=-1)  # (H, n)
        outs.append((w[:, None, :] @ V)[:, 0])  # (H, P)
    return torch.stack(outs).to(q.dtype)  # (B, H, P)


def kv_cache_decode(q, k, v, scale: float | None = None) -> torch.Tensor:
    """Causal attention one token at a time through a KVCache: (B, H, L, P) -> (B, H, L, P)."""
    check_qkv(q, k, v)
    cache = KVCache()
    outs = [cache.step(q[:, :, t], k[:, :, t], v[:, :, t], scale) for t in range(q.shape[2])]
    return torch.stack(outs, dim=2)  # (B, H, L, P)


# ----------------------------------------------------------------------------- linear attention
def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """phi(x) = elu(x) + 1 > 0 (Katharopoulos et al., 2020, eq. 7)."""
    return F.elu(x) + 1


def linear_attention(q, k, v, causal: bool = True, feature_map=elu_feature_map,
                     eps: float = 1e-6) -> torch.Tensor:
    """Parallel (training) form: out_t = sum_{i<=t} (phi(q_t).phi(k_i)) v_i / sum_{i<=t} phi(q_t).phi(k_i).

    The softmax's exp(q.k) replaced by a kernel phi(q).phi(k); computed as masked matmuls
    (L x L, like attention, but no softmax). q, k: (B, H, L, P), v: (B, H, L, P_v) ->
    (B, H, L, P_v). Without causal, associativity gives phi(q) (phi(k)^T v): linear in L.
    """
    check_qkv(q, k, v)
    fq, fk = feature_map(q), feature_map(k)  # (B, H, L, F)
    if not causal:
        S = fk.transpose(-1, -2) @ v  # (B, H, F, P_v): the state, all of the past at once
        z = fk.sum(dim=2)  # (B, H, F)
        return (fq @ S) / ((fq @ z[..., None]) + eps)  # (B, H, L, P_v)
    A = (fq @ fk.transpose(-1, -2)).tril()  # (B, H, L, L): similarities, causal
    return (A @ v) / (A.sum(-1, keepdim=True) + eps)  # (B, H, L, P_v)


def linear_attention_step(S, z, q_t, k_t, v_t, feature_map=elu_feature_map, eps: float = 1e-6):
    """One recurrent step: S += phi(k_t) v_t^T, z += phi(k_t); out = phi(q_t)^T S / phi(q_t)^T z.

    S: (B, H, F, P_v), z: (B, H, F), q_t, k_t: (B, H, P), v_t: (B, H, P_v).
    Returns (out (B, H, P_v), S, z): a fixed-size state, whatever the length of the past.
    """
    fq, fk = feature_map(q_t), feature_map(k_t)  # (B, H, F)
    S = S + fk[..., :, None] * v_t[..., None, :]  # (B, H, F, P_v)
    z = z + fk  # (B, H, F)
    num = (fq[..., None, :] @ S).squeeze(-2)  # (B, H, P_v)
    den = (fq * z).sum(-1, keepdim=True)  # (B, H, 1)
    return num / (den + eps), S, z


def linear_attention_recurrent(q, k, v, feature_map=elu_feature_map, eps: float = 1e-6,
                               return_state: bool = False):
    """Recurrent (inference) form of causal linear attention: a loop over L with state (S, z).

    q, k: (B, H, L, P), v: (B, H, L, P_v) -> (B, H, L, P_v); with return_state also
    S: (B, H, F, P_v) and z: (B, H, F). Equal to linear_attention(q, k, v, causal=True).
    """
    check_qkv(q, k, v)
    bsz, heads, length, _ = q.shape
    feat = feature_map(q[:, :, :1]).shape[-1]  # F: the feature dimension
    S = q.new_zeros(bsz, heads, feat, v.shape[-1])  # (B, H, F, P_v)
    z = q.new_zeros(bsz, heads, feat)  # (B, H, F)
    outs = []
    for t in range(length):
        o, S, z = linear_attention_step(S, z, q[:, :, t], k[:, :, t], v[:, :, t], feature_map, eps)
        outs.append(o)
    out = torch.stack(outs, dim=2)  # (B, H, L, P_v)
    return (out, S, z) if return_state else out


# ----------------------------------------------------------------------------- RWKV-4 WKV
def check_wkv_args(w, u, k, v):
    """k, v: (B, L, D); w, u: (D,)."""
    check_tensor("k", k, 3, dims="(B, L, D)")
    bsz, length, dim = k.shape
    if length == 0:
        raise ValueError("k must have shape (B, L, D) with L >= 1, got L = 0")
    check_tensor("v", v, 3, shape=(bsz, length, dim), dims="(B, L, D)")
    check_tensor("w", w, 1, shape=(dim,), dims="(D,)")
    check_tensor("u", u, 1, shape=(dim,), dims="(D,)")
    check_same_device(w=w, u=u, k=k, v=v)
    return bsz, length, dim


def wkv_parallel(w, u, k, v) -> torch.Tensor:
    """wkv_t = (sum_{i<t} e^{-(t-1-i) w + k_i} v_i + e^{u + k_t} v_t) / (same without v).

    A softmax over the past with logits -(t-1-i) w + k_i (i < t) and u + k_t (i = t): the
    L x L matrix is materialised, torch.softmax subtracts each row's max (stable).
    w (decay >= 0), u (bonus): (D,); k, v: (B, L, D) -> (B, L, D), computed in float32 or
    float64 (the inputs' dtype if wider) and returned in v's dtype.
    """
    check_wkv_args(w, u, k, v)
    ct = torch.promote_types(k.dtype, torch.float32)
    w, u, k, v_ = w.to(ct), u.to(ct), k.to(ct), v.to(ct)
    length = k.shape[1]
    t = torch.arange(length, device=k.device)
    dist = (t[:, None] - 1 - t[None, :]).to(ct)  # (L, L): t - 1 - i
    logits = -dist[None, :, :, None] * w + k[:, None, :, :]  # (B, L, L, D): [b, t, i, d]
    future = (t[:, None] <= t[None, :])[None, :, :, None]  # (1, L, L, 1): i >= t
    logits = logits.masked_fill(future, float("-inf"))  # only i < t decays
    logits[:, t, t] = u + k  # (B, L, D) on the diagonal: the current token gets the bonus u
    weights = torch.softmax(logits, dim=2)  # (B, L, L, D): row t sums to 1 over i <= t
    return torch.einsum("btid,bid->btd", weights, v_).to(v.dtype)  # (B, L, D)


def wkv_step(state, w, u, k_t, v_t):
    """One WKV step from state (a, b, p), each (B, D), with k_t, v_t: (B, D), w, u: (D,).

    y_t = (e^{p-q} a + e^{u+k_t-q} v_t) / (e^{p-q} b + e^{u+k_t-q}) with q = max(p, u + k_t);
    then a, b decay by e^{-w} and take k_t, v_t in the same way. Returns (y_t, new state).
    """
    a, b, p = state
    cur = u + k_t  # (B, D): exponent of the current token (with the bonus)
    q = torch.maximum(p, cur)
    e1, e2 = torch.exp(p - q), torch.exp(cur - q)  # both exponents <= 0: no overflow
    y = (e1 * a + e2 * v_t) / (e1 * b + e2)  # (B, D)
    decayed = p - w  # every past exponent loses w per step
    q = torch.maximum(decayed, k_t)
    e1, e2 = torch.exp(decayed - q), torch.exp(k_t - q)
    return y, (e1 * a + e2 * v_t, e1 * b + e2, q)


def wkv_recurrent(w, u, k, v, return_state: bool = False):
    """The WKV recurrence with a running max exponent (RWKV-4's CUDA kernel), stable at any L.

    State per channel: a = sum e^{.} v, b = sum e^{.}, both scaled by e^{-p}, p the running
    max exponent (see wkv_step). w, u: (D,); k, v: (B, L, D) -> (B, L, D) in v's dtype
    (computed in float32 or wider), and with return_state the state (a, b, p), each (B, D).
    """
    bsz, length, dim = check_wkv_args(w, u, k, v)
    ct = torch.promote_types(k.dtype, torch.float32)
    w, u, k, vv = w.to(ct), u.to(ct), k.to(ct), v.to(ct)
    state = (k.new_zeros(bsz, dim), k.new_zeros(bsz, dim),  # a, b: (B, D)
             k.new_full((bsz, dim), float("-inf")))  # p: nothing seen yet
    outs = []
    for t in range(length):
        y, state = wkv_step(state, w, u, k[:, t], vv[:, t])
        outs.append(y)
    out = torch.stack(outs, dim=1).to(v.dtype)  # (B, L, D)
    return (out, state) if return_state else out


def wkv_naive(w, u, k, v) -> torch.Tensor:
    """The same recurrence without the running max: a <- e^{-w} a + e^{k} v. Overflows once
    e^{k} does (k > 88 in float32); kept to show why the stable form exists."""
    bsz, length, dim = check_wkv_args(w, u, k, v)
    a = k.new_zeros(bsz, dim)
    b = k.new_zeros(bsz, dim)
    outs = []
    for t in range(length):
        ek = torch.exp(k[:, t])  # (B, D)
        eu = torch.exp(u) * ek
        outs.append((a + eu * v[:, t]) / (b + eu))
        a = torch.exp(-w) * a + ek * v[:, t]
        b = torch.exp(-w) * b + ek
    return torch.stack(outs, dim=1)  # (B, L, D)


# ----------------------------------------------------------------------------- associative recall
def associative_recall(n_pairs: int, dim: int, method: str = "softmax", value_dim: int = 64,
                       trials: int = 8, feature_map: str = "elu+1", seed: int = 0) -> float:
    """Store n (key, value) pairs, query with each key, report the fraction retrieved.

    Keys: N(0, I) in `dim` dimensions; values: N(0, I) in value_dim. method "softmax":
    attention over the n stored pairs (a cache of n keys and values, scale 1/sqrt(dim)).
    method "linear": the whole memory is the fixed (dim x value_dim) state S = sum phi(k_i) v_i^T;
    feature_map "elu+1": phi = elu + 1 with the normaliser z = sum phi(k_i) (Katharopoulos
    et al.); "identity": phi(x) = x, no normaliser, out = q^T S (a linear associative memory).
    A query counts as retrieved when the output is closer (cosine) to its own value than to
    any other stored value. Averaged over `trials` random draws; returns accuracy in [0, 1].
    """
    if method not in ("softmax", "linear"):
        raise ValueError(f"method must be 'softmax' or 'linear', got {method!r}")
    if feature_map not in ("elu+1", "identity"):
        raise ValueError(f"feature_map must be 'elu+1' or 'identity', got {feature_map!r}")
    for name, val in (("n_pairs", n_pairs), ("dim", dim), ("value_dim", value_dim), ("trials", trials)):
        check_positive_int(name, val)
    gen = torch.Generator().manual_seed(seed)
    keys = torch.randn(trials, 1, n_pairs, dim, generator=gen, dtype=torch.float64)  # (T, 1, n, P)
    values = torch.randn(trials, 1, n_pairs, value_dim, generator=gen, dtype=torch.float64)
    if method == "softmax":
        out = softmax_attention(keys, keys, values, causal=False)  # (T, 1, n, P_v)
    elif feature_map == "elu+1":
        out = linear_attention(keys, keys, values, causal=False)  # (T, 1, n, P_v)
    else:
        S = keys.transpose(-1, -2) @ values  # (T, 1, P, P_v): the whole memory
        out = keys @ S  # (T, 1, n, P_v)
    sim = F.normalize(out, dim=-1) @ F.normalize(values, dim=-1).transpose(-1, -2)  # (T, 1, n, n)
    hit = sim.argmax(-1) == torch.arange(n_pairs)  # (T, 1, n)
    return hit.double().mean().item()


def state_floats(method: str, n_pairs: int, dim: int, value_dim: int = 64) -> int:
    """Numbers held in memory to answer queries: a KV cache n (dim + value_dim) for softmax
    attention, the fixed F x value_dim + F state for linear attention (F = dim)."""
    return n_pairs * (dim + value_dim) if method == "softmax" else dim * value_dim + dim

