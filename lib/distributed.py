"""Beyond one device: the selective scan split along L over the ranks of a process group.

Every rank holds a contiguous slice of the sequence. A slice acts on the state as one affine
map per (channel, state) pair, h -> a h + b; the ranks all-gather these pairs, compose the
ones before them with chapter 6's associative operator (`mambabook.scan.combine`) and scan
their slice from the state that enters it. Each rank sends O(B D N) bytes whatever L is;
ring attention sends O(L). Used in chapter 10; LASP-2 (Sun et al., 2025) does the same
for linear attention's state.
"""

from __future__ import annotations

import datetime
import functools
import pickle
import queue
import socket
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from .checks import check_positive_int, check_selective_scan_args
from .scan import combine
from .selective import scan_functions, selective_scan_ref, step_sizes

__all__ = [
    "context_parallel_selective_scan", "slice_scan", "split_lengths",
    "scan_bytes_per_rank", "ring_attention_bytes_per_rank", "all_to_all_bytes_per_rank",
    "run_on_ranks", "ScanCase", "scan_case_inputs", "scan_case_on_rank", "scan_case_reference",
    "join_slices", "time_scan_case_on_rank",
]


# ----------------------------------------------------------------------------- the scan
def slice_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
               initial_state=None, return_last_state=False, path="auto"):
    """One rank's scan of its slice, from `initial_state` (B, D, N) or zeros.

    The one place where the context-parallel scan chooses its per-device scan, by
    `selective.scan_functions`: `mambabook.kernels.selective_scan` on CUDA tensors (its
    initial state and last state carry gradients), `selective_scan_ref` elsewhere; path
    "kernel" or "ref" asks for one. Arguments and results as in selective_scan_ref.
    """
    scan = scan_functions(u, path)[0]
    return scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                return_last_state=return_last_state, initial_state=initial_state)


class _AllGather(torch.autograd.Function):
    """x (...) on every rank -> (R, ...), rank order; the gradient flows back to each rank.

    Backward: rank r's loss depends on every rank's x, so the gradient of x_s is the sum
    over ranks of their gradients for slot s: an all-reduce, then each rank keeps its slot.
    Both directions are collectives: every rank of the group must run them.
    """

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.stack(parts)  # (R, ...)

    @staticmethod
    def backward(ctx, grad):  # grad: (R, ...)
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad[dist.get_rank(ctx.group)], None


def _group_rank(group) -> tuple[int, int]:
    """(this rank, number of ranks) in `group` (None: the default group), checked."""
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("group: torch.distributed must be initialised "
                         "(torch.distributed.init_process_group) before a context-parallel scan")
    rank = dist.get_rank(group)
    if rank < 0:
        raise ValueError("group must contain this process, got a group it is not a member of")
    return rank, dist.get_world_size(group)


def _check_across_ranks(group, *args) -> None:
    """Validate the scan inputs on every rank, then check that the ranks agree.

    Every rank raises together (none is left waiting in a collective): a rank with a bad
    input raises its own error, the others a ValueError naming it. Ranks must agree on
    B, D and N; their slice lengths L may differ.
    """
    error, shape = None, (0, 0, 0)
    try:
        bsz, dim, _, dstate, _ = check_selective_scan_args(*args)
        shape = (bsz, dim, dstate)
    except (TypeError, ValueError) as err:
        error = err
    cuda = "nccl" in str(dist.get_backend(group))
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    mine = torch.tensor([error is None, *shape], device=device)  # (4,) int64
    table = _AllGather.apply(mine, group).tolist()  # R x [ok, B, D, N]
    if error is not None:
        raise error
    bad = [r for r, row in enumerate(table) if not row[0]]
    if bad:
        raise ValueError(f"every rank's inputs must be valid; rank(s) {bad} raised an error")
    if len({tuple(row[1:]) for row in table}) > 1:
        listing = ", ".join(f"rank {r}: {tuple(row[1:])}" for r, row in enumerate(table))
        raise ValueError("u (B, D, L) and A (D, N) must have the same B, D and N on every rank "
                         f"(only L may differ), got (B, D, N) = {listing}")


def context_parallel_selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                                    delta_softplus=False, group=None, path="auto"):
    """selective_scan_ref on a sequence split along L over the ranks of `group`.

    Rank r holds a contiguous slice of u, delta, z (B, D, L_r) and of time-varying B, C
    ((B, N, L_r) or (B, G, N, L_r)), rank order = time order; the slices may differ in
    length. A (D, N), D, delta_bias (D,) and B, C given as (D, N) are the same on every
    rank. Returns this rank's slice of the output, (B, D, L_r) in u's dtype. `path` picks
    the per-rank scan (`slice_scan`): "auto" (the Triton kernel on CUDA), "kernel", "ref".

    1. each rank's slice, as a map of the state: a = exp(A sum_t delta_t), b = the slice's
       end state from zero (a scan with return_last_state): one (B, D, N) pair;
    2. the pairs are all-gathered: (R - 1) pairs sent per rank, independent of L;
    3. rank r composes the pairs of ranks 0..r-1 with `combine`: the state entering it;
    4. rank r scans its slice again from that state (`slice_scan` with initial_state).
    Rank 0 has nothing entering: its first scan is its output. The last rank's pair is
    needed by no one: it skips the first scan. Every other rank scans its slice twice.

    Cost: a call takes two slice scans from start to end: ranks 0..R-2 scan their slices
    from zero at once, then ranks 1..R-1 scan theirs from the state entering them. If one
    device scans the whole sequence in T, R ranks take about 2 T / R (2 ranks are no faster
    than one, 4 twice as fast) while the memory per rank falls as 1 / R. The collectives
    are two small all-gathers (the validation, the pairs), and they keep the ranks in step.

    Why rescan rather than correct: the first scan's outputs could be kept and fixed up by
    adding C_t exp(A sum_{s<=t} delta_s) h_in. That term costs as many exponentials as a
    scan (one per step, channel and state: what bounds the kernel, chapter 7) and, unless
    a kernel of its own fuses it, materialises a (B, D, N, L_r) tensor: N times the
    activations, where long sequences are what the ranks are for. Rescanning reuses the
    fused scan and keeps each rank's memory at the scan's own.

    Gradients: every input's, through differentiable collectives; backward is collective
    too, so every rank must call it. Inputs that are the same on every rank (A, D,
    delta_bias, B and C as (D, N)) get this rank's share of their gradient: the sum over
    ranks equals the reference's (all-reduce them, as for every parameter of a model whose
    sequence is split across ranks).
    """
    rank, ranks = _group_rank(group)
    _check_across_ranks(group, u, delta, A, B, C, D, z, delta_bias)
    first, last = rank == 0, rank == ranks - 1
    dt = step_sizes(delta, delta_bias, delta_softplus)  # (B, D, L_r) float32
    decay = torch.exp(dt.sum(-1)[..., None] * A.float())  # (B, D, N): a of the slice
    if last and not first:  # no rank after it: its end state is never used
        end = torch.zeros_like(decay)
    else:  # the output is rank 0's only: the others skip D and z
        out, end = slice_scan(u, delta, A, B, C, D if first else None,
                              z if first else None, delta_bias, delta_softplus,
                              return_last_state=True, path=path)  # (B, D, L_r), (B, D, N)
    pairs = _AllGather.apply(torch.stack([decay, end]), group)  # (R, 2, B, D, N)
    if first:  # plus an exact zero made from the pairs (an empty sum), so that rank 0's
        # backward reaches the all-gather's backward too: every rank must join it
        return out + pairs[..., :0].sum()
    before = [(pairs[s, 0], pairs[s, 1]) for s in range(rank)]  # ranks 0..r-1
    _, h_in = functools.reduce(combine, before)  # (B, D, N): the state entering
    return slice_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                      initial_state=h_in, path=path)  # (B, D, L_r)


def split_lengths(L: int, ranks: int) -> list[int]:
    """Contiguous slice lengths of L over `ranks`, as even as possible (longer ones first)."""
    check_positive_int("L", L)
    check_positive_int("ranks", ranks)
    if L < ranks:
        raise ValueError(f"L must be at least ranks = {ranks} (one step per rank), got {L}")
    return [L // ranks + (r < L % ranks) for r in range(ranks)]


# ----------------------------------------------------------------------------- bytes sent
def scan_bytes_per_rank(ranks: int, batch: int, dim: int, d_state: int,
                        elem_bytes: int = 4) -> float:
    """Bytes each rank sends in the forward of the context-parallel scan, one layer.

    A ring all-gather of one (decay, state) pair (2 B D N numbers, float32) per rank:
    each rank forwards R - 1 of them. No L in it. The backward's all-reduce sends twice that.
    """
    return (ranks - 1) * 2 * batch * dim * d_state * elem_bytes


def ring_attention_bytes_per_rank(L: int, ranks: int, batch: int, heads: int, head_dim: int,
                                  elem_bytes: int = 2) -> float:
    """Bytes each rank sends in the forward of ring attention, one layer.

    The K and V of each slice (B, L / R, H, P each, bf16 by default) travel around the
    ring: R - 1 hops per rank. The backward sends K, V and their gradients: about twice.
    """
    return (ranks - 1) * 2 * batch * (L / ranks) * heads * head_dim * elem_bytes


def all_to_all_bytes_per_rank(L: int, ranks: int, batch: int, dim: int, d_state: int,
                              elem_bytes: int = 2) -> float:
    """Bytes each rank sends in the forward of a sequence-to-channels all-to-all scan.

    (Megatron-LM's context parallelism for Mamba.) Each rank trades its slice's u, delta, z
    (B, L / R, D) for the whole sequence of D / R channels, keeping 1 / R of them, and sends
    the output back the same way; B and C (B, L / R, N) go to every rank (all-gather).
    """
    slice_ = batch * (L / ranks)
    return ((ranks - 1) / ranks * slice_ * 4 * dim
            + (ranks - 1) * slice_ * 2 * d_state) * elem_bytes


# ----------------------------------------------------------------------------- processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, fn, ranks, port, results, args, timeout_s):
    """One spawned process: a gloo group on 127.0.0.1, fn(rank, ranks, *args), its result."""
    torch.set_num_threads(1)  # R processes share the cores: one thread each
    options = dist.ProcessGroupGloo._Options()
    options._devices = [dist.ProcessGroupGloo.create_device(hostname="127.0.0.1")]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=ranks, pg_options=options,
                            timeout=datetime.timedelta(seconds=timeout_s))
    try:
        # plain pickle: a tensor sent as is would be shared memory, gone when the rank exits
        results.put((rank, pickle.dumps(fn(rank, ranks, *args))))
    finally:
        dist.destroy_process_group()


def run_on_ranks(fn, ranks: int, *args, timeout_s: float = 120.0) -> list:
    """Run fn(rank, ranks, *args) in `ranks` new processes joined in a gloo group on this
    machine (127.0.0.1 only); returns their results in rank order.

    fn must be importable by name (a module-level function: a notebook cell's function
    cannot be sent to a new process). A rank that raises stops them all, and the error is
    raised here with the rank's traceback; a collective left waiting fails after timeout_s.
    """
    check_positive_int("ranks", ranks)
    ctx = torch.multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = torch.multiprocessing.start_processes(
        _rank_main, args=(fn, ranks, _free_port(), results, args, timeout_s), nprocs=ranks,
        join=False, start_method="spawn")
    out = {}
    while len(out) < ranks:  # read while they run: a large result must not block its sender
        try:
            rank, value = results.get(timeout=0.05)
            out[rank] = pickle.loads(value)
        except queue.Empty:
            procs.join(timeout=0)  # raises if a rank failed
    while not procs.join():
        pass
    return [out[r] for r in range(ranks)]


# ----------------------------------------------------------------------------- a worked case
@dataclass
class ScanCase:
    """One context-parallel scan to run on every rank (the chapter's and the tests' case)."""

    batch: int = 1  # B
    dim: int = 4  # D
    d_state: int = 4  # N
    lengths: list[int] = field(default_factory=lambda: [8, 8])  # L_r of each rank
    bc: str = "BNL"  # B and C as "BNL" (B, N, L), "BGNL" (B, 2, N, L) or "DN" (D, N)
    extras: tuple[str, ...] = ("D", "z", "delta_bias")  # optional inputs passed
    softplus: bool = True  # delta_softplus
    seed: int = 0  # the inputs' seed: every rank draws the same whole sequence
    path: str = "auto"  # the per-rank scan: "auto", "kernel" (Triton) or "ref"


def scan_case_inputs(case: ScanCase) -> dict[str, torch.Tensor]:
    """The case's inputs for the whole sequence (L = sum of lengths), float32, seeded."""
    g = torch.Generator().manual_seed(case.seed)
    bsz, dim, n, L = case.batch, case.dim, case.d_state, sum(case.lengths)
    r = lambda *s: torch.randn(*s, generator=g)
    bc = {"BNL": (bsz, n, L), "BGNL": (bsz, 2, n, L), "DN": (dim, n)}[case.bc]
    x = dict(u=r(bsz, dim, L), delta=torch.rand(bsz, dim, L, generator=g) * 0.5,
             A=-torch.rand(dim, n, generator=g) - 0.5, B=r(*bc), C=r(*bc), D=r(dim),
             z=r(bsz, dim, L), delta_bias=r(dim) * 0.3)
    return {k: v for k, v in x.items() if k in ("u", "delta", "A", "B", "C") + case.extras}


def _my_slice(x: dict, case: ScanCase, rank: int) -> dict:
    start = sum(case.lengths[:rank])
    stop = start + case.lengths[rank]
    timed = ("u", "delta", "z") + (("B", "C") if case.bc != "DN" else ())
    return {k: v[..., start:stop] if k in timed else v for k, v in x.items()}


def scan_case_on_rank(rank: int, ranks: int, case: ScanCase, group=None) -> dict:
    """Run the case's scan and its backward on this rank (of `group`, default all ranks);
    returns this rank's output slice and the gradient of sum(out * w) (w seeded) in every
    input: this rank's slice of it for sliced inputs, the sum over ranks for shared ones
    (A, D, delta_bias, B and C as (D, N))."""
    x = {k: v.requires_grad_() for k, v in _my_slice(scan_case_inputs(case), case, rank).items()}
    out = context_parallel_selective_scan(**x, delta_softplus=case.softplus, group=group,
                                          path=case.path)
    g = torch.Generator().manual_seed(case.seed + 1)
    w = torch.randn(case.batch, case.dim, sum(case.lengths), generator=g)
    w = _my_slice({"u": w}, case, rank)["u"]  # (B, D, L_r)
    grads = dict(zip(x, torch.autograd.grad((out * w).sum(), list(x.values()))))
    shared = ("A", "D", "delta_bias") + (("B", "C") if case.bc == "DN" else ())
    for k in shared:
        if k in grads:
            dist.all_reduce(grads[k], group=group)
    return {"out": out.detach(), "grads": grads}


def scan_case_reference(case: ScanCase) -> dict:
    """What scan_case_on_rank's results must join to: selective_scan_ref on the whole
    sequence in one process, its output and the gradient of sum(out * w) in every input."""
    x = {k: v.requires_grad_() for k, v in scan_case_inputs(case).items()}
    out = selective_scan_ref(**x, delta_softplus=case.softplus)
    g = torch.Generator().manual_seed(case.seed + 1)
    w = torch.randn(out.shape, generator=g)  # (B, D, L): the same w as on the ranks
    grads = dict(zip(x, torch.autograd.grad((out * w).sum(), list(x.values()))))
    return {"out": out.detach(), "grads": grads}


def join_slices(case: ScanCase, per_rank: list[dict]) -> dict:
    """scan_case_on_rank's results in rank order -> one {"out", "grads"} for the whole
    sequence: slices concatenated along L, shared inputs' gradients (equal on every rank)
    taken from rank 0."""
    timed = ("u", "delta", "z") + (("B", "C") if case.bc != "DN" else ())
    grads = {k: torch.cat([r["grads"][k] for r in per_rank], -1) if k in timed
             else per_rank[0]["grads"][k] for k in per_rank[0]["grads"]}
    return {"out": torch.cat([r["out"] for r in per_rank], -1), "grads": grads}


def time_scan_case_on_rank(rank: int, ranks: int, case: ScanCase, calls: int = 5) -> dict:
    """This rank's time per call (ms) and peak tensor bytes for the case's forward, and
    on rank 0 the time of one process scanning the whole sequence, measured right after
    (the other ranks idle): a baseline taken under the same load as the ranks' times.

    Every rank must make the same number of calls (each one is a collective), so the
    ranks time a fixed block of calls with torch.utils.benchmark's `Timer.timeit` (after
    its two warm-up calls) rather than bench.time_fn, whose repetitions are adaptive.
    """
    from torch.utils import benchmark

    from . import bench

    whole = scan_case_inputs(case)
    x = _my_slice(whole, case, rank)
    fn = lambda: context_parallel_selective_scan(**x, delta_softplus=case.softplus)
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=1)
    ms = timer.timeit(calls).mean * 1e3
    peak = bench.peak_memory(fn, "cpu")
    dist.barrier()
    one = lambda: selective_scan_ref(**whole, delta_softplus=case.softplus)
    whole_ms = bench.time_fn(one, "cpu", min_run_time=0.3) if rank == 0 else None
    dist.barrier()
    return {"ms": ms, "peak_bytes": peak, "whole_ms": whole_ms}
