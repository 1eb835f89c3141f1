"""Device helpers shared by the selective-scan kernels (chapter 7), and the host-side rules
they share: where a kernel may run, the strides every launch takes, the checkpoint
interval, and the check that Triton laid a warp's rows one per lane (what the shuffles
assume).
"""

from __future__ import annotations

import json
import os
import re

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# Inline PTX (shuffles, ex2.approx, ...) on a GPU; the interpreter runs no assembly, so
# there the same functions take a plain-Triton path.
ASM = tl.constexpr(not INTERPRET)
LOG2E = tl.constexpr(1.4426950408889634)
MAX_DSTATE = 64  # largest N the selective-scan kernels support
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_kernel_inputs(**tensors) -> None:
    """What every kernel wrapper checks besides shapes: the first tensor on a device the
    kernels run on (a GPU, or the CPU under Triton's interpreter), and each one given (not
    None) float32, float16 or bfloat16."""
    name, first = next(iter(tensors.items()))
    if first.device.type == "cpu" and not INTERPRET:
        raise ValueError(
            f"{name} is on the CPU: Triton kernels need a CUDA device, or TRITON_INTERPRET=1 "
            "set before triton is imported (then they run, slowly, in Triton's interpreter)")
    for name, t in tensors.items():
        if t is not None and t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")


# ----------------------------------------------------------------------------- device
@triton.jit
def _softplus(x):
    # torch.nn.functional.softplus with threshold 20
    return tl.where(x <= 20.0, tl.log(1.0 + tl.exp(x)), x)


@triton.jit
def _unpack_bf16(x):
    """int32 holding two bfloat16 (the low one first in memory) as two float32: a bfloat16
    is the top half of a float32, so one shift or one AND each."""
    return (x << 16).to(tl.float32, bitcast=True), (x & -65536).to(tl.float32, bitcast=True)


@triton.jit
def _channel_block(dpg, BLOCK_D: tl.constexpr):
    """Program axis 0 is (group, block of BLOCK_D channels inside the group): the group, the
    block's channel indices (int64, (BLOCK_D,)) and their mask (channels past the group)."""
    pid_gd = tl.program_id(0)
    nblk = tl.cdiv(dpg, BLOCK_D)  # blocks of channels per group
    grp = pid_gd // nblk
    d_in_grp = (pid_gd % nblk) * BLOCK_D + tl.arange(0, BLOCK_D)
    return grp, (grp * dpg + d_in_grp).to(tl.int64), d_in_grp < dpg


@triton.jit
def _load_even(ptr, mask, EVEN: tl.constexpr):
    """tl.load(ptr), masked (0 outside) unless EVEN."""
    return tl.load(ptr, mask=None if EVEN else mask, other=None if EVEN else 0.0)


@triton.jit
def _col_load(ptr, mask):
    """A (rows, 1) float32 load: one value per row, in the rows' layout."""
    return tl.load(ptr, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _ex2_fast(x):
    """2^x by one MUFU.EX2 on a GPU (ex2.approx.ftz: results below 2^-126 flush to 0),
    tl.exp2 under the interpreter."""
    if ASM:
        y = tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=f,f", [x],
                                      dtype=tl.float32, is_pure=True, pack=1)
    else:
        y = tl.exp2(x)
    return y


@triton.jit
def _softplus_fast(x, FAST: tl.constexpr):
    """`_softplus` (threshold 20); with FAST on a GPU from ex2.approx and lg2.approx (about
    7 instructions against about 20; relative error a few ulp)."""
    if FAST and ASM:
        e = _ex2_fast(x * 1.4426950408889634)
        lg = tl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=f,f", [1.0 + e],
                                       dtype=tl.float32, is_pure=True, pack=1)
        y = tl.where(x <= 20.0, lg * 0.6931471805599453, x)
    else:
        y = _softplus(x)
    return y


@triton.jit
def _silu_fast(x):
    """x sigmoid(x) from ex2.approx and rcp.approx on a GPU (4 instructions)."""
    if ASM:
        e = _ex2_fast(x * -1.4426950408889634)
        r = tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=f,f", [1.0 + e],
                                      dtype=tl.float32, is_pure=True, pack=1)
        y = x * r
    else:
        y = x * tl.sigmoid(x)
    return y


@triton.jit
def _delta_of(raw, bias, mask, SOFTPLUS: tl.constexpr, EVEN: tl.constexpr,
              FAST: tl.constexpr = False):
    """delta in float32 from its stored values with its bias (None: no bias) and softplus,
    0 where mask is False unless EVEN (padded steps: a = 1, b = 0, so the state and its
    gradient pass through); and delta before the softplus (its derivative is the sigmoid)."""
    raw = raw.to(tl.float32)
    if bias is not None:
        raw += bias
    dt = raw
    if SOFTPLUS:
        dt = _softplus_fast(raw, FAST)
    if not EVEN:
        dt = tl.where(mask, dt, 0.0)
    return dt, raw


@triton.jit
def _shfl_xor(x, m: tl.constexpr, PTX: tl.constexpr):
    """x of row r ^ m, for rows along lanes (m < 32): with PTX one butterfly shuffle per
    value (rows must be one per lane), else the same permutation through a reshape."""
    if PTX:
        y = tl.inline_asm_elementwise("shfl.sync.bfly.b32 $0, $1, $2, 0x1f, -1;", "=r,r,r",
                                      [x.to(tl.int32, bitcast=True), tl.full(x.shape, m, tl.int32)],
                                      dtype=tl.int32, is_pure=True, pack=1)
        y = y.to(tl.float32, bitcast=True)
    else:
        R: tl.constexpr = x.shape[0]
        K: tl.constexpr = x.shape[1]
        y = tl.flip(x.reshape(R // (2 * m), 2, m, K), 1).reshape(R, K)
    return y


@triton.jit
def _columns(x, W: tl.constexpr):
    """The W columns of x ((32, W), W a power of 2 held in each thread) as a tuple of (32, 1)
    columns in order, by halving (reshape and split move no data)."""
    cols = (x,)
    for lev in tl.static_range(5):
        if (W >> lev) > 1:
            nxt = ()
            for q in tl.static_range(1 << lev):
                lo, hi = tl.split(cols[q].reshape(32, 2, W >> (lev + 1)).permute(0, 2, 1))
                nxt = nxt + (lo, hi)
            cols = nxt
    return cols


@triton.jit
def _join_columns(cols, K: tl.constexpr):
    """K (32, 1) columns (K a power of 2) as one (32, K) tile: the inverse of `_columns`."""
    for lev in tl.static_range(5):
        if (K >> lev) > 1:
            nxt = ()
            for q in tl.static_range(K >> (lev + 1)):
                x = tl.join(cols[2 * q], cols[2 * q + 1]).permute(0, 2, 1)
                nxt = nxt + (x.reshape(32, 2 << lev),)
            cols = nxt
    return cols[0]


# ----------------------------------------------------------------------------- host
def row_strides(*tensors) -> tuple[int, ...]:
    """(batch, channel) strides of each (B, D, L) tensor, in order."""
    return tuple(st for t in tensors for st in (t.stride(0), t.stride(1)))


def bc_strides(M: torch.Tensor, grouped: bool | None = None) -> tuple[int, int, int]:
    """(batch, group, state) strides of a time-varying B or C, whose axes are batch, then
    group if `grouped` (default: M has 4 dims, the scan's (B, G, N, L)), then state; without
    a group axis ((B, N, L), or a step's (B, N)) it is one group."""
    if not (M.dim() == 4 if grouped is None else grouped):
        return M.stride(0), 0, M.stride(1)
    return M.stride(0), M.stride(1), M.stride(2)


def bc_operands(B: torch.Tensor, C: torch.Tensor):
    """B, C and their (batch, group, state) strides: time-varying ones as given, (D, N)
    ones contiguous (strides unused)."""
    if B.dim() > 2:
        return B, C, bc_strides(B), bc_strides(C)
    return B.contiguous(), C.contiguous(), (0, 0, 0), (0, 0, 0)


def bf16_pairs_ok(x: torch.Tensor) -> bool:
    """Whether x's rows can be read as int32 pairs of bfloat16: even strides (but the last),
    4-byte aligned."""
    return (x.dtype == torch.bfloat16 and x.data_ptr() % 4 == 0
            and all(s % 2 == 0 for s in x.stride()[:-1]))


def scan_dims(u: torch.Tensor, A: torch.Tensor, B: torch.Tensor):
    """(batch, D, L, N, groups, channels per group) of checked selective-scan inputs."""
    bsz, dim, length = u.shape
    groups = B.shape[1] if B.dim() == 4 else 1
    return bsz, dim, length, A.shape[1], groups, dim // groups


def ckpt_chunk(dstate: int, element_size: int) -> int:
    """Steps between the forward's checkpoints for the backward: 16 for 2-byte inputs on a
    GPU (measured on the H200: the backward's chunk is then one tile, no sweep), else
    max(16, 512 / N) (32 at N = 16). The interpreter keeps the second rule for every type."""
    if not INTERPRET and element_size == 2:
        return 16
    return max(16, 512 // triton.next_power_of_2(dstate))


def cut(length: int, want: int, chunk: int) -> tuple[int, int]:
    """(seg_len, n_seg): about `want` segments of whole chunks covering L."""
    seg_len = triton.cdiv(triton.cdiv(length, want), chunk) * chunk
    return seg_len, triton.cdiv(length, seg_len)


_BLOCKED = re.compile(r"^(#blocked\d*) = #ttg\.blocked<\{sizePerThread = \[([\d, ]+)\], "
                      r"threadsPerWarp = \[([\d, ]+)\], warpsPerCTA = \[([\d, ]+)\]", re.M)
_SHUFFLED = re.compile(r'elementwise_inline_asm "shfl[^\n]*-> tensor<[\dx]+xi32, (#[\w]+)>')
_LINEAR = re.compile(r"^(#linear\d*) = #ttg\.linear<\{register = (\[[\d, \[\]]*\]), "
                     r"lane = (\[[\d, \[\]]*\]), warp = (\[[\d, \[\]]*\]), "
                     r"block = (\[[\d, \[\]]*\])\}>", re.M)
_LAYOUT_OK: dict[int, bool] = {}  # per compiled kernel


def rows_one_per_lane(compiled) -> bool:
    """Whether every shuffle of a compiled kernel acts on rows laid one per lane (row r on
    lane r % 32, no warp split along it), as the shuffles assume; read from its TTGIR."""
    key = id(compiled)
    if key not in _LAYOUT_OK:
        _LAYOUT_OK[key] = rows_layout_in(compiled.asm["ttgir"])
    return _LAYOUT_OK[key]


def rows_layout_in(ttgir: str) -> bool:
    """`rows_one_per_lane` on TTGIR text: blocked layouts, and linear ones (bases of each
    register, lane and warp bit) that are the same thing."""
    layouts = {name: [[int(x) for x in part.split(",")] for part in parts]
               for name, *parts in _BLOCKED.findall(ttgir)}
    linear = {name: [json.loads(part) for part in parts] for name, *parts in _LINEAR.findall(ttgir)}
    used = _SHUFFLED.findall(ttgir)
    if not used:
        return False
    for name in used:
        if name in linear:  # lane bit i moves row 2^i; registers and warps move no row in 0..31
            reg, lane, warp, block = linear[name]
            rank = len(lane[0]) if lane else 0
            rows = [[1 << i] + [0] * (rank - 1) for i in range(5)]
            if lane != rows or block or any(b[0] for b in reg) \
                    or any(b[0] < 32 or any(b[1:]) for b in warp):
                return False
            continue
        if name not in layouts:  # a slice or other layout: not checked, not trusted
            return False
        per_thread, per_warp, warps = layouts[name]
        if per_thread[0] != 1 or per_warp[0] != 32 or any(x != 1 for x in per_warp[1:] + warps[1:]):
            return False
    return True


def forward_buffers(u: torch.Tensor, A: torch.Tensor, D, delta_bias, chunk: int | None):
    """What every forward launch takes besides the inputs: A, D and delta_bias as float32
    (None where absent), out (u's shape and dtype), the last state (B, D, N) and, with a
    checkpoint interval `chunk`, the checkpoints (B, D, ceil(L / chunk), N), float32."""
    bsz, dim, length = u.shape
    dstate = A.shape[1]
    Af = A.float().contiguous()
    Df = D.float().contiguous() if D is not None else None
    bias = delta_bias.float().contiguous() if delta_bias is not None else None
    out = torch.empty_like(u)
    last = u.new_empty(bsz, dim, dstate, dtype=torch.float32)
    ckpt = (u.new_empty(bsz, dim, triton.cdiv(length, chunk), dstate, dtype=torch.float32)
            if chunk is not None else None)
    return Af, Df, bias, out, last, ckpt
