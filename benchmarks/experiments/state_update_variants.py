# ruff: noqa: B023  (each lambda is called inside its own loop iteration)
"""Variants of the decoding step `selective_state_update` against its HBM floor (chapter 7).

One step h <- exp(dt A) h + dt B x, out = (C h + D x) silu(z) at B=128, D=5120, N=16 (the
`selective_state_update` suite's shape, with D, z, dt_bias and softplus, B and C of shape
(B, N)); the state (B, D, N) fp32 is updated in place. The library kernel reaches ~68% of
the floor of `state_update_floor`; the variants below change one thing each:

  lib       the library kernel (mambabook.kernels.state_update_kernel), its own launch.
            Since 6aae600 that kernel is `early` below, launched at 64 x 2: lib and early
            now run the same code. The JSON in benchmarks/results/nvidia-h200 was measured
            at d416847, when lib still loaded in the old order (29.7 us)
  cols      per-channel values (x, dt, z, dt_bias, D, out) loaded and stored as (BLOCK_D, 1)
            columns, so they share the state tile's layout (no 1-D -> 2-D layout conversions)
  cols_ef   cols with eviction_policy="evict_first" on the state load and store
  cols_cs   cols with evict_first on the state load, cache_modifier=".cs" (streaming) on
            the state store (ptxas refuses both on one store)
  flat      each program's BLOCK_D x N block as one 1-D range of BLOCK_D*N values;
            per-channel values gathered per value by index (offs // N)
  early     the library kernel with every load first and the stores last: its SASS (sm_90)
            waits on memory three times per program (dt for softplus, then the state, A, B,
            then C, D and z, which it loads after the state store)
  early_bar early with a CTA barrier after the state, A, B, C loads, so that ptxas issues
            them before the per-channel loads (else it schedules softplus(dt) first and
            the state load waits for dt): all nine loads in flight at once
  early_bar32  early_bar with maxnreg=32 (early_bar needs 36 registers: 12 programs of
            4 warps per SM instead of 16)
  sweep     BLOCK_D in {16, 32, 64, 128} x num_warps in {2, 4, 8} for the library kernel
            and for the two fastest variants (rows named "lib@", "early_bar@", ...)
  copy      torch: dst.copy_(src) of a (B, D, N) fp32 tensor, the bandwidth ceiling
  mul       torch: state.mul_(-1) in place (read and write of the same tensor)

Every Triton variant is checked against mambabook.selective.selective_state_update_ref, at
the shape timed and at a small odd one (ODD_SHAPE).
Times: a CUDA graph of CALLS steps replayed (median per step), the calls rotating over
SETS copies of the inputs so that the state is not in L2 when a step reads it (as in a
model, where the other layers' states pass through L2 in between); next to it the suite's
way, mambabook.bench.time_fn of one graphed step (do_bench, L2 flushed, graph launch
included). Needs a CUDA GPU except with --quick (tiny shape, Triton's interpreter):

    python benchmarks/experiments/state_update_variants.py --out /tmp/state_update_variants.json
    TRITON_INTERPRET=1 python benchmarks/experiments/state_update_variants.py --quick --check-only
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
import triton
import triton.language as tl

from mambabook.bench import provenance, time_fn
from mambabook.kernels.state_update_kernel import (
    _selective_state_update_kernel,
    selective_state_update,
)
from mambabook.selective import selective_state_update_ref
from mambabook.suites.selective_scan import state_update_floor

SHAPE = dict(B=128, D=5120, N=16)  # the suite's shape
QUICK_SHAPE = dict(B=2, D=64, N=16)  # CPU smoke test under the interpreter
# every variant is also checked here: D not a multiple of BLOCK_D, N not a power of 2, 2 groups
ODD_SHAPE = dict(B=3, D=72, N=12, G=2)
CALLS = 20  # steps captured in one CUDA graph
SETS = 4  # input copies the steps rotate over: 4 x 42 MB of state > the H200's 50 MB of L2
REL_TOL = 1e-4  # largest max |error| / max |reference| a variant may have and be ranked
SWEEP = [(block_d, warps) for block_d in (16, 32, 64, 128) for warps in (2, 4, 8)]


# ----------------------------------------------------------------------------- kernels
# Every kernel takes the library kernel's arguments, in its order, so one launcher serves all.
@triton.jit
def _softplus(dt):
    return tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(dt)), dt)


@triton.jit
def cols_kernel(
    # pointers
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr,
    # dimensions
    dim, dstate, dpg,
    # strides
    s_h_b, s_h_d, s_h_n, s_x_b, s_x_d, s_dt_b, s_dt_d, s_A_d, s_A_n,
    s_B_b, s_B_g, s_B_n, s_C_b, s_C_g, s_C_n, s_z_b, s_z_d, s_o_b, s_o_d,
    # meta-parameters
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    LOAD_EVICT: tl.constexpr,  # eviction policy of the state load: "" or "evict_first"
    STORE_EVICT: tl.constexpr,  # eviction policy of the state store: "" or "evict_first"
    STORE_CACHE: tl.constexpr,  # cache modifier of the state store: "" or ".cs" (streaming)
):
    # every per-channel value is a (BLOCK_D, 1) column: the state tile's layout, no conversion
    pid_d = tl.program_id(0)  # block of channels
    pid_b = tl.program_id(1).to(tl.int64)  # batch row
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)[:, None]  # channel indices, (BLOCK_D, 1)
    n = tl.arange(0, BLOCK_N)[None, :]  # state indices, (1, BLOCK_N)
    mask_d = d < dim  # (BLOCK_D, 1)
    mask_dn = mask_d & (n < dstate)  # (BLOCK_D, BLOCK_N)
    grp = d // dpg  # group of each channel, (BLOCK_D, 1)

    h_ptrs = state_ptr + pid_b * s_h_b + d * s_h_d + n * s_h_n  # (BLOCK_D, BLOCK_N)
    h = tl.load(h_ptrs, mask=mask_dn, other=0.0, eviction_policy=LOAD_EVICT).to(tl.float32)
    x = tl.load(x_ptr + pid_b * s_x_b + d * s_x_d, mask=mask_d, other=0.0).to(tl.float32)  # (BLOCK_D, 1)
    dt = tl.load(dt_ptr + pid_b * s_dt_b + d * s_dt_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + d, mask=mask_d, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = _softplus(dt)
    A = tl.load(A_ptr + d * s_A_d + n * s_A_n, mask=mask_dn, other=0.0).to(tl.float32)
    Bv = tl.load(B_ptr + pid_b * s_B_b + grp * s_B_g + n * s_B_n, mask=mask_dn, other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + pid_b * s_C_b + grp * s_C_g + n * s_C_n, mask=mask_dn, other=0.0).to(tl.float32)
    h = tl.exp2(dt * A * 1.4426950408889634) * h + (dt * x) * Bv  # (BLOCK_D, BLOCK_N)
    tl.store(h_ptrs, h.to(state_ptr.dtype.element_ty), mask=mask_dn,
             cache_modifier=STORE_CACHE, eviction_policy=STORE_EVICT)
    out = tl.sum(h * Cv, axis=1, keep_dims=True)  # (BLOCK_D, 1)
    if HAS_D:
        out += x * tl.load(D_ptr + d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + pid_b * s_z_b + d * s_z_d, mask=mask_d, other=0.0).to(tl.float32)
        out *= z * tl.sigmoid(z)
    tl.store(out_ptr + pid_b * s_o_b + d * s_o_d, out.to(out_ptr.dtype.element_ty), mask=mask_d)


@triton.jit
def early_kernel(
    # pointers
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr,
    # dimensions
    dim, dstate, dpg,
    # strides
    s_h_b, s_h_d, s_h_n, s_x_b, s_x_d, s_dt_b, s_dt_d, s_A_d, s_A_n,
    s_B_b, s_B_g, s_B_n, s_C_b, s_C_g, s_C_n, s_z_b, s_z_d, s_o_b, s_o_d,
    # meta-parameters
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    SYNC_LOADS: tl.constexpr,  # a CTA barrier between the tiles' loads and the others
):
    # the library kernel with every load issued before any arithmetic on a loaded value, and
    # every store last: the library kernel loads D and z after the state store (a load may not
    # pass a store to memory it cannot prove apart), and A, B, C after softplus(dt), so a
    # program waits for memory three times in a row
    pid_d = tl.program_id(0)  # block of channels
    pid_b = tl.program_id(1).to(tl.int64)  # batch row
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # channel indices, (BLOCK_D,)
    mask_d = offs_d < dim
    offs_n = tl.arange(0, BLOCK_N)  # state indices, (BLOCK_N,)
    mask_dn = mask_d[:, None] & (offs_n < dstate)[None, :]
    grp = offs_d // dpg  # group of each channel, (BLOCK_D,)

    h_ptrs = state_ptr + pid_b * s_h_b + offs_d[:, None] * s_h_d + offs_n[None, :] * s_h_n
    h = tl.load(h_ptrs, mask=mask_dn, other=0.0).to(tl.float32)  # (BLOCK_D, BLOCK_N)
    A = tl.load(A_ptr + offs_d[:, None] * s_A_d + offs_n[None, :] * s_A_n, mask=mask_dn, other=0.0)
    Bv = tl.load(B_ptr + pid_b * s_B_b + grp[:, None] * s_B_g + offs_n[None, :] * s_B_n,
                 mask=mask_dn, other=0.0).to(tl.float32)  # (BLOCK_D, BLOCK_N)
    Cv = tl.load(C_ptr + pid_b * s_C_b + grp[:, None] * s_C_g + offs_n[None, :] * s_C_n,
                 mask=mask_dn, other=0.0).to(tl.float32)
    if SYNC_LOADS:  # ptxas moves no load across a barrier: the tiles' loads go out before
        tl.debug_barrier()  # the per-channel ones, whose softplus would otherwise wait first
    x = tl.load(x_ptr + pid_b * s_x_b + offs_d * s_x_d, mask=mask_d, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + pid_b * s_dt_b + offs_d * s_dt_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + pid_b * s_z_b + offs_d * s_z_d, mask=mask_d, other=0.0).to(tl.float32)

    if HAS_BIAS:
        dt += bias
    if SOFTPLUS:
        dt = _softplus(dt)
    h = tl.exp2(dt[:, None] * A.to(tl.float32) * 1.4426950408889634) * h + (dt * x)[:, None] * Bv
    out = tl.sum(h * Cv, axis=1)  # (BLOCK_D,)
    if HAS_D:
        out += x * Dv
    if HAS_Z:
        out *= z * tl.sigmoid(z)
    tl.store(h_ptrs, h.to(state_ptr.dtype.element_ty), mask=mask_dn)
    tl.store(out_ptr + pid_b * s_o_b + offs_d * s_o_d, out.to(out_ptr.dtype.element_ty), mask=mask_d)


@triton.jit
def flat_kernel(
    # pointers
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr,
    # dimensions
    dim, dstate, dpg,
    # strides
    s_h_b, s_h_d, s_h_n, s_x_b, s_x_d, s_dt_b, s_dt_d, s_A_d, s_A_n,
    s_B_b, s_B_g, s_B_n, s_C_b, s_C_g, s_C_n, s_z_b, s_z_d, s_o_b, s_o_d,
    # meta-parameters
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # the program's BLOCK_D x BLOCK_N values as one 1-D range; every per-channel value is
    # gathered per state value (16 lanes read the same address), softplus computed per value
    pid_d = tl.program_id(0)  # block of channels
    pid_b = tl.program_id(1).to(tl.int64)  # batch row
    i = tl.arange(0, BLOCK_D * BLOCK_N)  # flat index in the program's block, (BLOCK_D*BLOCK_N,)
    d = pid_d * BLOCK_D + i // BLOCK_N  # channel of each value
    n = i % BLOCK_N  # state index of each value
    mask_d = d < dim
    mask = mask_d & (n < dstate)
    grp = d // dpg  # group of each value's channel

    h_ptrs = state_ptr + pid_b * s_h_b + d * s_h_d + n * s_h_n
    h = tl.load(h_ptrs, mask=mask, other=0.0).to(tl.float32)  # (BLOCK_D*BLOCK_N,)
    x = tl.load(x_ptr + pid_b * s_x_b + d * s_x_d, mask=mask_d, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + pid_b * s_dt_b + d * s_dt_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + d, mask=mask_d, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = _softplus(dt)
    A = tl.load(A_ptr + d * s_A_d + n * s_A_n, mask=mask, other=0.0).to(tl.float32)
    Bv = tl.load(B_ptr + pid_b * s_B_b + grp * s_B_g + n * s_B_n, mask=mask, other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + pid_b * s_C_b + grp * s_C_g + n * s_C_n, mask=mask, other=0.0).to(tl.float32)
    h = tl.exp2(dt * A * 1.4426950408889634) * h + (dt * x) * Bv
    tl.store(h_ptrs, h.to(state_ptr.dtype.element_ty), mask=mask)
    q = h * Cv  # the terms of out, (BLOCK_D*BLOCK_N,)
    if HAS_D:  # D x rides along in the n = 0 term, so one sum gives C h + D x
        q += tl.where(n == 0, x * tl.load(D_ptr + d, mask=mask_d, other=0.0).to(tl.float32), 0.0)
    out = tl.sum(tl.reshape(q, (BLOCK_D, BLOCK_N)), axis=1)  # (BLOCK_D,)
    if HAS_Z:  # the row's copies of z are equal: their max is z, in out's layout
        z = tl.load(z_ptr + pid_b * s_z_b + d * s_z_d, mask=mask_d, other=0.0).to(tl.float32)
        z = tl.max(tl.reshape(z, (BLOCK_D, BLOCK_N)), axis=1)  # (BLOCK_D,)
        out *= z * tl.sigmoid(z)
    d_out = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # channels of out, (BLOCK_D,)
    tl.store(out_ptr + pid_b * s_o_b + d_out * s_o_d, out.to(out_ptr.dtype.element_ty),
             mask=d_out < dim)


# ----------------------------------------------------------------------------- launching
def launch(kernel, s: dict, block_d: int, warps: int, **meta) -> torch.Tensor:
    """One step of `kernel` on the input set s (state updated in place) -> out: (B, D)."""
    state, x, dt, z, Bm, Cm, out = s["state"], s["x"], s["dt"], s["z"], s["B"], s["C"], s["out"]
    A = s["A"]
    bsz, dim, dstate = state.shape
    sB = (Bm.stride(0), 0, Bm.stride(1)) if Bm.dim() == 2 else Bm.stride()  # (b, g, n)
    sC = (Cm.stride(0), 0, Cm.stride(1)) if Cm.dim() == 2 else Cm.stride()
    groups = 1 if Bm.dim() == 2 else Bm.shape[1]
    grid = (triton.cdiv(dim, block_d), bsz)  # (channel blocks, batch rows)
    kernel[grid](
        state, x, dt, A, Bm, Cm, s["D"], z, s["dt_bias"], out,
        dim, dstate, dim // groups,
        *state.stride(), *x.stride(), *dt.stride(), *A.stride(), *sB, *sC,
        *z.stride(), *out.stride(),
        HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True,
        BLOCK_D=block_d, BLOCK_N=triton.next_power_of_2(dstate), num_warps=warps, **meta)
    return out


def library_step(s: dict) -> torch.Tensor:
    """The library's wrapper, as a model calls it."""
    return selective_state_update(s["state"], s["x"], s["dt"], s["A"], s["B"], s["C"], s["D"],
                                  s["z"], s["dt_bias"], True)


def reference_step(s: dict) -> torch.Tensor:
    return selective_state_update_ref(s["state"], s["x"], s["dt"], s["A"], s["B"], s["C"],
                                      s["D"], s["z"], s["dt_bias"], True)


def make_inputs(B: int, D: int, N: int, device, sets: int = 1, G: int = 0) -> list[dict]:
    """`sets` input sets drawn as the suite draws them (A < 0, so the state stays finite);
    A, D and dt_bias (the weights) are shared, the rest is per set. B and C: (B, N), or
    (B, G, N) when G > 0."""
    g = lambda *shape: torch.randn(*shape, device=device)
    bc = (B, G, N) if G else (B, N)
    A, Dv, bias = -torch.rand(D, N, device=device), g(D), g(D)
    return [dict(state=g(B, D, N), x=g(B, D), dt=0.5 * g(B, D) - 4, z=g(B, D), B=g(*bc),
                 C=g(*bc), A=A, D=Dv, dt_bias=bias, out=torch.empty(B, D, device=device))
            for _ in range(sets)]


# (name, what it changes, kernel or None for the library wrapper, launch meta-parameters)
VARIANTS = [
    ("lib", "library kernel and wrapper (its launch: BLOCK_D 32, 4 warps)", None, {}),
    ("cols", "per-channel values as (BLOCK_D, 1) columns", cols_kernel,
     dict(LOAD_EVICT="", STORE_EVICT="", STORE_CACHE="")),
    ("cols_ef", "cols + evict_first on the state load and store", cols_kernel,
     dict(LOAD_EVICT="evict_first", STORE_EVICT="evict_first", STORE_CACHE="")),
    # ptxas refuses .cs with .evict_first on one store
    ("cols_cs", "cols + evict_first state load, .cs (streaming) state store", cols_kernel,
     dict(LOAD_EVICT="evict_first", STORE_EVICT="", STORE_CACHE=".cs")),
    ("flat", "BLOCK_D*N values as one 1-D range, per-channel values gathered", flat_kernel, {}),
    ("early", "library kernel, every load before any arithmetic, stores last", early_kernel,
     dict(SYNC_LOADS=False)),
    ("early_bar", "early + a CTA barrier after the state, A, B, C loads", early_kernel,
     dict(SYNC_LOADS=True)),
    # early_bar needs 36 registers: 12 programs of 4 warps per SM instead of 16 at <= 32
    ("early_bar32", "early_bar capped at 32 registers (maxnreg)", early_kernel,
     dict(SYNC_LOADS=True, maxnreg=32)),
]
DEFAULT_LAUNCH = (32, 4)  # (BLOCK_D, num_warps): the library's for N = 16


def step_fn(kernel, meta: dict, launch_cfg):
    """A function of an input set that runs one step of the variant."""
    if kernel is None:
        return library_step
    return lambda s: launch(kernel, s, *launch_cfg, **meta)


def sweep_kernel(name: str):
    """(kernel, meta-parameters) of a variant, the library's kernel for "lib"."""
    if name == "lib":
        return _selective_state_update_kernel, {}
    return next((k, m) for n, _, k, m in VARIANTS if n == name)


# ----------------------------------------------------------------------------- checking
def max_error(step, shape: dict, device) -> tuple[float, float]:
    """(max |error|, max |error| / max |reference|) of one step, out and new state together,
    against selective_state_update_ref on the same inputs."""
    torch.manual_seed(0)
    (s,) = make_inputs(**shape, device=device)
    want = dict(s, state=s["state"].clone())
    got = dict(s, state=s["state"].clone(), out=torch.empty_like(s["out"]))
    want_out, got_out = reference_step(want), step(got)
    err = max(float((got_out - want_out).abs().max()),
              float((got["state"] - want["state"]).abs().max()))
    scale = max(float(want_out.abs().max()), float(want["state"].abs().max()))
    return err, err / scale


# ----------------------------------------------------------------------------- timing
def graph_time_us(step, sets: list[dict], reps: int = 30) -> float:
    """Median time of one step in microseconds: CALLS steps (rotating over the input sets)
    captured in one CUDA graph, replayed `reps` times, each replay timed with CUDA events."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for s in sets:
            step(s)  # compile and warm up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for k in range(CALLS):
            step(sets[k % len(sets)])
    graph.replay()  # first replay uploads the graph
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / CALLS)
    return statistics.median(times)


def suite_time_us(step, s: dict) -> float:
    """The suite's measure: one step captured in a graph, timed by mambabook.bench.time_fn
    (do_bench: L2 flushed before each replay, the graph launch inside the time)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step(s)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(s)
    return time_fn(graph.replay, s["state"].device) * 1e3


def cpu_time_us(step, s: dict) -> float:
    """On the CPU (--quick, interpreter): mambabook.bench.time_fn's median, for a smoke test."""
    return time_fn(lambda: step(s), "cpu", min_run_time=0.01) * 1e3


# ----------------------------------------------------------------------------- the run
def measure(name, what, step, launch_cfg, shape, sets, device, gpu: bool, floor: dict) -> dict:
    """Check one variant on the shape and on ODD_SHAPE, then time it on `sets` when it is
    right; a row of the table."""
    err, rel = max_error(step, shape, device)
    err_odd, rel_odd = max_error(step, ODD_SHAPE, device)
    row = dict(name=name, what=what, launch=launch_cfg, max_abs_err=err, rel_err=rel,
               max_abs_err_odd=err_odd, rel_err_odd=rel_odd, ok=max(rel, rel_odd) <= REL_TOL)
    if row["ok"] and sets is not None:
        if gpu:
            row["us"] = graph_time_us(step, sets)
            row["suite_us"] = suite_time_us(step, sets[0])
        else:
            row["us"] = cpu_time_us(step, sets[0])
        row["fraction_of_floor"] = floor["floor_ms"] * 1e3 / row["us"]
    return row


def torch_rows(shape: dict, sets: list[dict], gpu: bool, floor: dict) -> list[dict]:
    """The bandwidth ceiling: copy a (B, D, N) fp32 tensor, and scale one in place."""
    sets = [dict(s, dst=torch.empty_like(s["state"])) for s in sets]  # a copy's destinations
    steps = {"copy": ("dst.copy_(src), (B, D, N) fp32", lambda s: s["dst"].copy_(s["state"])),
             # -1, not 0.5: the values keep their size over thousands of replays
             "mul": ("state.mul_(-1) in place", lambda s: s["state"].mul_(-1.0))}
    rows = []
    for name, (what, step) in steps.items():
        us = graph_time_us(step, sets) if gpu else cpu_time_us(step, sets[0])
        row = dict(name=name, what=what, launch=None, us=us, ok=True,
                   fraction_of_floor=floor["floor_ms"] * 1e3 / us,
                   fraction_of_state_floor=floor["state_floor_ms"] * 1e3 / us)
        if gpu:
            row["suite_us"] = suite_time_us(step, sets[0])
        rows.append(row)
    return rows


def print_table(rows: list[dict], header: bool = True) -> None:
    if header:
        print(f"{'variant':12} {'launch':7} {'us':>8} {'floor':>6} {'suite us':>9} "
              f"{'rel err':>9} {'odd shape':>9}")
    for r in rows:
        launch_cfg = "x".join(map(str, r["launch"])) if r["launch"] else "-"
        us = f"{r['us']:8.2f}" if "us" in r else "       -"
        frac = f"{r['fraction_of_floor']:6.1%}" if "fraction_of_floor" in r else "     -"
        suite = f"{r['suite_us']:9.2f}" if "suite_us" in r else "        -"
        err = f"{r['rel_err']:9.1e} {r['rel_err_odd']:9.1e}" if "rel_err" in r else ""
        flag = "" if r["ok"] else "  WRONG (not ranked)"
        print(f"{r['name']:12} {launch_cfg:7} {us} {frac} {suite} {err}{flag}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="JSON file for the table and provenance")
    ap.add_argument("--quick", action="store_true", help=f"tiny shape {QUICK_SHAPE}, on the CPU")
    ap.add_argument("--check-only", action="store_true", help="only check against the reference")
    args = ap.parse_args()
    device = "cpu" if args.quick else "cuda"
    gpu = device == "cuda"
    shape = QUICK_SHAPE if args.quick else SHAPE
    floor = state_update_floor(**shape)
    print(f"shape {shape}, floor {floor['floor_ms'] * 1e3:.2f} us ({floor['bytes'] / 1e6:.1f} MB)")
    sets = None
    if not args.check_only:
        torch.manual_seed(1)
        sets = make_inputs(**shape, device=device, sets=SETS if gpu else 1)

    rows = []
    print_table([])
    for name, what, kernel, meta in VARIANTS:
        step = step_fn(kernel, meta, DEFAULT_LAUNCH)
        rows.append(measure(name, what, step, DEFAULT_LAUNCH, shape, sets, device, gpu, floor))
        print_table(rows[-1:], header=False)

    # the launch sweep: the library kernel and the two fastest right variants (not the ones
    # with a register cap, which spill at larger blocks); --check-only has no times: cols
    capped = {n for n, _, _, m in VARIANTS if "maxnreg" in m}
    timed = sorted((r for r in rows if r["ok"] and "us" in r and r["name"] not in capped),
                   key=lambda r: r["us"])
    best = [r["name"] for r in timed if r["name"] != "lib"][:2] if timed else ["cols"]
    for name in ["lib", *best]:
        kernel, meta = sweep_kernel(name)
        for launch_cfg in SWEEP:
            step = step_fn(kernel, meta, launch_cfg)
            rows.append(measure(f"{name}@", f"{name}, BLOCK_D x warps sweep", step, launch_cfg,
                                shape, sets, device, gpu, floor))
            print_table(rows[-1:], header=False)
    if not args.check_only:
        rows += torch_rows(shape, sets, gpu, floor)

    print("\nranked (right variants, fastest first):")
    print_table(sorted([r for r in rows if r["ok"] and "us" in r], key=lambda r: r["us"]))
    wrong = [r["name"] for r in rows if not r["ok"]]
    print("wrong:", wrong or "none")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(provenance=provenance(device), shape=shape, floor=floor, calls=CALLS,
                           sets=SETS if gpu else 1, rel_tol=REL_TOL, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
