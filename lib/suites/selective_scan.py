"""Selective-scan suites (chapter 7): the Triton kernel against the PyTorch versions and attention.

selective_scan: B=8, D=1536, N=16, G=1 with D, z, delta_bias and softplus; forward and
forward+backward time against L for the Triton kernel (chunked, and the plain sequential
one), selective_scan_ref (materialises (B, D, L, N)), a naive PyTorch loop, the chunked
PyTorch scan (mambabook.scan.scan_chunked over a = exp(delta A), b = delta B u), torch SDPA
causal attention of the same width (12 heads x 64, bf16) and mamba_ssm's selective_scan_fn
when importable. Each record carries its time per token and the floor of the kernel.
selective_state_update: one decoding step at B=128, D=5120, N=16, bandwidth vs the HBM floor.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from ..bench import Record, save, suite, sweep
from ..kernels.selective_scan import forward_for
from ..selective import selective_scan_ref, selective_state_update_ref, skip_and_gate, step_sizes

HBM_BYTES_PER_S = 4.2e12  # H200 HBM3e, what a large device-to-device copy reaches (~4.2-4.3 TB/s)
EXP_PER_S = 3.9e12  # H200 special-function unit: 132 SMs x 16 ex2 per clock x ~1.9 GHz
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SHAPE = dict(B=8, D=1536, N=16)  # the suite's model: Mamba-130M-like width (d_inner 1536)
ATTN_SHAPE = dict(H=12, P=64)  # SDPA of the same model width: d_model 768 = 12 heads x 64


def scan_floor(B: int, D: int, L: int, N: int, itemsize: int, backward: bool = False) -> dict:
    """The fewest bytes and exponentials a selective scan needs, and the times they take.

    Forward: read u, delta, z, write out (4 B D L values), read B and C (2 B N L); one
    exp(delta A) per (b, d, t, n). Backward adds: read u, delta, z, dout, B, C, write du,
    ddelta, dz, dB, dC (7 B D L + 4 B N L), and recomputes every exponential.
    Returns bytes, exps, hbm_ms, exp_ms and floor_ms = max of the two.
    """
    vals = 4 * B * D * L + 2 * B * N * L
    exps = B * D * L * N
    if backward:
        vals += 7 * B * D * L + 4 * B * N * L
        exps *= 2
    nbytes = vals * itemsize
    hbm_ms = nbytes / HBM_BYTES_PER_S * 1e3
    exp_ms = exps / EXP_PER_S * 1e3
    return dict(bytes=nbytes, exps=exps, hbm_ms=hbm_ms, exp_ms=exp_ms, floor_ms=max(hbm_ms, exp_ms))


def make_scan_inputs(B: int, D: int, L: int, N: int, dtype, device, requires_grad=False) -> dict:
    """Random inputs in Mamba's ranges: delta = softplus(. + delta_bias) small, A = -(1..N)."""
    g = lambda *s: torch.randn(*s, device=device)
    x = dict(
        u=g(B, D, L).to(dtype), delta=(0.5 * g(B, D, L) - 4).to(dtype),
        A=-torch.arange(1, N + 1, device=device, dtype=torch.float32).repeat(D, 1),
        B=g(B, N, L).to(dtype), C=g(B, N, L).to(dtype), D=g(D), z=g(B, D, L).to(dtype),
        delta_bias=0.5 * g(D),
    )
    if requires_grad:
        for v in x.values():
            v.requires_grad_(True)
    return x


def selective_scan_loop(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The naive PyTorch loop: one (B, D, N) update per step, nothing of size (B, D, L, N).
    B, C: (B, N, L)."""
    dtype_in = u.dtype
    u, A = u.float(), A.float()
    delta = step_sizes(delta, delta_bias, delta_softplus)  # (B, D, L) float32
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])  # (B, D, N)
    ys = []
    for t in range(u.shape[2]):
        d_t = delta[:, :, t, None]  # (B, D, 1)
        h = torch.exp(d_t * A) * h + d_t * B[:, None, :, t].float() * u[:, :, t, None]
        ys.append((h * C[:, None, :, t].float()).sum(-1))  # (B, D)
    return skip_and_gate(torch.stack(ys, dim=2), u, D, z).to(dtype_in)  # (B, D, L)


def selective_scan_chunked_torch(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                                 delta_softplus=False):
    """Discretise to a = exp(delta A), b = delta B u, both (B, D, N, L), run
    mambabook.scan.scan_chunked, contract with C. B, C: (B, N, L)."""
    from ..scan import scan_chunked

    dtype_in = u.dtype
    u = u.float()
    delta = step_sizes(delta, delta_bias, delta_softplus)  # (B, D, L) float32
    a = torch.exp(delta[:, :, None, :] * A.float()[None, :, :, None])  # (B, D, N, L)
    b = (delta * u)[:, :, None, :] * B.float()[:, None, :, :]  # (B, D, N, L)
    h = scan_chunked(a, b)  # (B, D, N, L)
    y = torch.einsum("bdnl,bnl->bdl", h, C.float())
    return skip_and_gate(y, u, D, z).to(dtype_in)


class _MambaCudaScan(torch.autograd.Function):
    """mamba_ssm's CUDA selective scan (its extension `selective_scan_cuda`, built from its
    csrc/selective_scan) behind autograd: fwd saves what its bwd takes."""

    @staticmethod
    def forward(ctx, ext, u, delta, A, B, C, D, z, delta_bias, softplus):
        ctx.squeeze = B.dim() == 3  # (B, N, L) is one group: (B, 1, N, L) for the extension
        if ctx.squeeze:
            B, C = B.unsqueeze(1), C.unsqueeze(1)
        out, x, *rest = ext.fwd(u, delta, A, B, C, D, z, delta_bias, softplus)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, x, out)
        ctx.ext, ctx.softplus = ext, softplus
        return rest[0] if z is not None else out

    @staticmethod
    def backward(ctx, dout):
        u, delta, A, B, C, D, z, delta_bias, x, out = ctx.saved_tensors
        grads = ctx.ext.bwd(u, delta, A, B, C, D, z, delta_bias, dout.contiguous(), x, out,
                            None, ctx.softplus, False)
        du, ddelta, dA, dB, dC, dD, dbias, *dz = grads
        if ctx.squeeze:
            dB, dC = dB.squeeze(1), dC.squeeze(1)
        return (None, du, ddelta, dA, dB, dC, dD, dz[0] if z is not None else None, dbias,
                None)


def mamba_ssm_cuda():
    """selective_scan_fn's semantics through mamba_ssm's compiled CUDA extension, or None
    where `selective_scan_cuda` cannot be imported (a source build: benchmarks/
    gpu_selective_scan.sh builds it on the GPU machine)."""
    try:
        import selective_scan_cuda
    except ImportError:
        return None

    def fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
        return _MambaCudaScan.apply(selective_scan_cuda, u, delta, A, B, C, D, z, delta_bias,
                                    delta_softplus)
    return fn


def previous_selective_scan():
    """The selective scan of an earlier mambabook, for side-by-side timing: the package
    at $MAMBABOOK_PREVIOUS (a folder holding it as `mambabook_prev`), with the forward
    that version ran for each dtype; None when unset."""
    root = os.environ.get("MAMBABOOK_PREVIOUS")
    if not root:
        return None
    import importlib
    import sys

    sys.path.insert(0, root)
    try:
        mod = importlib.import_module("mambabook_prev.kernels.selective_scan_kernel")
    finally:
        sys.path.remove(root)

    def fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
        os.environ[mod.FORWARD_ENV] = "states" if u.element_size() == 2 else "lanes"
        return mod.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return fn


def _scan_call(fn, backward: bool, B, D, N, device):
    """make(L, dtype, mode) -> zero-argument call of fn (forward, or forward + backward)."""

    def make(L, dtype, mode):
        x = make_scan_inputs(B, D, L, N, DTYPES[dtype], device, requires_grad=backward)
        if not backward:
            return lambda: fn(**x, delta_softplus=True)
        leaves = list(x.values())
        dout = torch.randn(B, D, L, device=device, dtype=DTYPES[dtype])
        return lambda: torch.autograd.grad(fn(**x, delta_softplus=True), leaves, dout)

    return make


def _sdpa_call(B, H, P, device):
    def make(L, dtype, mode):
        backward = mode == "fwd+bwd"
        q, k, v = (torch.randn(B, H, L, P, device=device, dtype=torch.bfloat16,
                               requires_grad=backward) for _ in range(3))
        if not backward:
            return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)
        dout = torch.randn_like(q)
        return lambda: torch.autograd.grad(
            F.scaled_dot_product_attention(q, k, v, is_causal=True), (q, k, v), dout)

    return make


def scan_providers(mode: str, dtype: str, L_max_loop: int, device, B: int, D: int, N: int):
    """[(name, make, largest L to run)] for one (mode, dtype)."""
    from ..kernels import selective_scan

    bwd = mode == "fwd+bwd"
    out = [("triton", _scan_call(selective_scan, bwd, B, D, N, device), None)]
    for name, fn in (("mamba_ssm_cuda", mamba_ssm_cuda()),
                     ("previous", previous_selective_scan())):
        if fn is not None and torch.device(device).type == "cuda":
            out.append((name, _scan_call(fn, bwd, B, D, N, device), None))
    if dtype == "bf16" and torch.device(device).type == "cuda":
        out.append(("sdpa_causal_bf16", _sdpa_call(B, ATTN_SHAPE["H"], ATTN_SHAPE["P"], device),
                    None))
    if dtype == "fp32":  # the plain-PyTorch versions compute in float32 anyway
        try:
            import mambabook.scan  # noqa: F401 - lib/scan.py may not exist yet
            out.append(("chunked_torch", _scan_call(selective_scan_chunked_torch, bwd, B, D, N,
                                                    device), None))
        except ImportError:
            pass
        out.append(("ref", _scan_call(selective_scan_ref, bwd, B, D, N, device), L_max_loop))
        out.append(("naive_loop", _scan_call(selective_scan_loop, bwd, B, D, N, device),
                    L_max_loop))
    return out


def _annotate(records: list[Record], device, B: int, D: int, N: int) -> None:
    for r in records:
        L, mode = r.size["L"], r.size["mode"]
        itemsize = torch.empty((), dtype=DTYPES[r.size["dtype"]]).element_size()
        r.extra.update(B=B, D=D, N=N)
        if r.provider == "triton":  # which forward ran (the kernels' fixed rule)
            r.extra["scan_forward"] = forward_for(torch.device(device).type, itemsize, N)
        r.extra.update({f"floor_{k}": v for k, v in
                        scan_floor(B, D, L, N, itemsize, mode == "fwd+bwd").items()})
        if r.status == "ok" and r.ms:
            r.extra["ns_per_token"] = r.ms * 1e6 / (B * L)


@suite("selective_scan")
def selective_scan_suite(quick: bool, device, progress: bool = False) -> list[Record]:
    gpu = torch.device(device).type == "cuda" and not quick
    if gpu:
        shape = SHAPE
        lengths = [2048, 4096, 8192, 16384, 32768, 65536]
        plan = [("fwd", "fp32", 4096), ("fwd", "bf16", 0), ("fwd+bwd", "fp32", 2048),
                ("fwd+bwd", "bf16", 0)]
    else:  # the interpreter: tiny sizes, forward only (under 30 s on a 2-core CPU)
        shape = dict(B=1, D=4, N=4)
        lengths = [8, 16, 32]
        plan = [("fwd", "fp32", 32)]
    only = os.environ.get("MAMBABOOK_SCAN_PROVIDERS")  # e.g. "triton": re-measure one provider
    modes = os.environ.get("MAMBABOOK_SCAN_MODES")  # e.g. "fwd+bwd": re-measure one mode
    dtypes = os.environ.get("MAMBABOOK_SCAN_DTYPES")  # e.g. "bf16": re-measure one dtype
    records: list[Record] = []
    for mode, dtype, L_max_loop in plan:
        if (modes and mode not in modes.split(",")) or (dtypes and dtype not in dtypes.split(",")):
            continue
        for name, make, L_max in scan_providers(mode, dtype, L_max_loop, device, **shape):
            if only and name not in only.split(","):
                continue
            sizes = [dict(L=L, dtype=dtype, mode=mode) for L in lengths
                     if L_max is None or L <= L_max]
            new = sweep("selective_scan", {name: make}, sizes, device=device,
                        min_run_time=0.02 if not gpu else 0.2, progress=progress)
            _annotate(new, device, **shape)
            records += new
            if gpu:  # a partial file survives a run cut short
                print(mode, dtype, name, [(r.size["L"], r.status, r.ms) for r in new], flush=True)
                save(records, "selective_scan", notes="partial: written after each provider")
    return records


def state_update_floor(B: int, D: int, N: int, state_itemsize: int = 4, itemsize: int = 4) -> dict:
    """Bytes of one decoding step: the state read and written once (2 B D N), x, dt, z read
    and out written (4 B D), B and C (2 B N), A (D N), D and dt_bias (2 D)."""
    nbytes = 2 * B * D * N * state_itemsize + (4 * B * D + 2 * B * N) * itemsize \
        + (D * N + 2 * D) * 4
    return dict(bytes=nbytes, floor_ms=nbytes / HBM_BYTES_PER_S * 1e3,
                state_floor_ms=2 * B * D * N * state_itemsize / HBM_BYTES_PER_S * 1e3)


GRAPH_STEPS, GRAPH_SETS = 20, 4  # the state update's many-step graph: steps, input sets


@suite("selective_state_update")
def selective_state_update_suite(quick: bool, device, progress: bool = False) -> list[Record]:
    from ..kernels import selective_state_update

    gpu = torch.device(device).type == "cuda" and not quick
    B, D, N = (128, 5120, 16) if gpu else (4, 64, 16)

    def make_with(fn):
        def make(B, D, N):
            g = lambda *s: torch.randn(*s, device=device)
            state, x, dt, z = g(B, D, N), g(B, D), 0.5 * g(B, D) - 4, g(B, D)
            A, Bm, Cm, Dv, bias = -torch.rand(D, N, device=device), g(B, N), g(B, N), g(D), g(D)
            return lambda: fn(state, x, dt, A, Bm, Cm, Dv, z, bias, True)
        return make

    def graphed(make, steps: int = 1, sets: int = 1):
        """The call captured in a CUDA graph and replayed: no Python launch overhead (how a
        decoding loop runs it), so the time is the GPU's. With steps > 1 the graph holds
        that many steps rotating over `sets` input sets (the state of one set is out of
        L2 when its turn comes, as with a model's other layers in between); the record is
        per step, without the graph's own launch."""
        def make_graphed(B, D, N):
            fns = [make(B, D, N) for _ in range(sets)]  # each with its own inputs
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for fn in fns:
                    fn()  # compile and warm up outside the capture
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for k in range(steps):
                    fns[k % len(fns)]()
            return graph.replay
        return make_graphed

    providers = {"triton": make_with(selective_state_update),
                 "ref": make_with(selective_state_update_ref)}
    if gpu:
        providers["triton_cudagraph"] = graphed(providers["triton"])
        providers["ref_cudagraph"] = graphed(providers["ref"])
        providers[f"triton_graph{GRAPH_STEPS}"] = graphed(providers["triton"], GRAPH_STEPS,
                                                          GRAPH_SETS)
    records = sweep("selective_state_update", providers, [dict(B=B, D=D, N=N)], device=device,
                    min_run_time=0.02 if not gpu else 0.2, progress=progress)
    for r in records:
        if r.provider.endswith(f"_graph{GRAPH_STEPS}") and r.status == "ok" and r.ms:
            r.ms /= GRAPH_STEPS  # per step
            r.extra.update(steps_per_graph=GRAPH_STEPS, input_sets=GRAPH_SETS)
    floor = state_update_floor(B, D, N)
    for r in records:
        r.extra.update({f"floor_{k}": v for k, v in floor.items()})
        if r.status == "ok" and r.ms:
            r.extra["GB_per_s"] = floor["bytes"] / (r.ms * 1e-3) / 1e9
            r.extra["fraction_of_floor"] = floor["floor_ms"] / r.ms
    return records


def scaling_records(records, mode: str, dtype: str) -> list[Record]:
    """The records of one (mode, dtype) panel, plus SDPA causal attention (always bf16) of the
    same mode as the Transformer reference line."""
    return [r for r in records if r.size.get("mode") == mode
            and (r.size.get("dtype") == dtype or r.provider == "sdpa_causal_bf16")]


def floor_records(records, mode: str, dtype: str) -> list[Record]:
    """Records of provider 'floor': the scan_floor time at each L of the panel's kernel runs."""
    out = []
    for r in scaling_records(records, mode, dtype):
        if r.provider == "triton" and "floor_floor_ms" in r.extra:
            out.append(Record(r.suite, "floor", dict(r.size), r.extra["floor_floor_ms"]))
    return out


COMPARED = {"triton": "this kernel", "mamba_ssm_cuda": "mamba_ssm CUDA",
            "sdpa_causal_bf16": "causal SDPA (bf16)"}  # providers in comparison_table


def comparison_table(records, mode: str, dtype: str) -> str:
    """Markdown table of one (mode, dtype): ms of each provider in COMPARED against L, the
    ratio mamba_ssm / triton, and the fraction of the floor the triton kernel reaches."""
    ms: dict[str, dict[int, float]] = {}
    for r in scaling_records(records, mode, dtype):
        if r.status == "ok" and r.provider in COMPARED:
            ms.setdefault(r.provider, {})[r.size["L"]] = r.ms
    floor = {r.size["L"]: r.ms for r in floor_records(records, mode, dtype)}
    cols = [p for p in COMPARED if p in ms]
    rows = [f"**{mode}, {dtype}** (ms)", "",
            "| L | " + " | ".join(COMPARED[p] for p in cols) + " | mamba_ssm / ours | floor |",
            "|" + " ---: |" * (len(cols) + 3)]
    for L, ours in sorted(ms.get("triton", {}).items()):
        ratio = ms.get("mamba_ssm_cuda", {}).get(L, float("nan")) / ours
        cells = " | ".join(f"{ms[p][L]:.3f}" if L in ms[p] else "" for p in cols)
        rows.append(f"| {L} | {cells} | {ratio:.2f}x | {floor.get(L, float('nan')) / ours:.0%} |")
    return "\n".join(rows) + "\n"
