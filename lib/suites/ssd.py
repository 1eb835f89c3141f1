"""SSD suite (chapter 9): Mamba-2's chunked scan against its anchors, time per token.

ssd: B=8, H=24, P=64, N=64 and 128, G=1, chunks of 256, bfloat16, dt with bias and
softplus, D and z; forward and forward+backward against L = 2K..64K for
`mambabook.kernels.ssd_chunk_scan`, mamba_ssm's Triton `mamba_chunk_scan_combined` (when it
imports), the same computation in PyTorch (`ssd_combined_ref`), the book's Mamba-1 kernel
`mambabook.kernels.selective_scan` at equal width (D = H P = 1536, N = 16) and causal SDPA
at the same width (24 heads x 64). On a CPU: tiny sizes, forward only, float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..bench import Record, save, suite, sweep
from .selective_scan import make_scan_inputs

SHAPE = dict(B=8, H=24, P=64, G=1)  # a Mamba-2 layer of width H P = 1536 (mamba2-130m-like)
CHUNK = 256  # steps per chunk, mamba_ssm's default
STATES = (64, 128)  # N of the SSD
MAMBA1_N = 16  # N of the Mamba-1 scan at the same width
LENGTHS = [2048, 4096, 8192, 16384, 32768, 65536]
QUICK = dict(shape=dict(B=1, H=2, P=16, G=1), chunk=16, states=(16,), lengths=[32, 64])
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def mamba_chunk_scan_combined():
    """mamba_ssm's Triton SSD, or None where it does not import (no mamba_ssm source)."""
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined as fn
    except ImportError:
        return None
    return fn


def make_ssd_inputs(B, L, H, P, G, N, dtype, device, requires_grad=False) -> dict:
    """Random inputs in Mamba-2's ranges: raw dt around -1 (softplus'd with dt_bias),
    A = -exp(.) per head; streamed tensors (x, dt, B, C, z) in `dtype`, the rest float32."""
    g = lambda *s: torch.randn(*s, device=device)
    x = dict(x=g(B, L, H, P).to(dtype), dt=(0.5 * g(B, L, H) - 1).to(dtype),
             A=-torch.exp(0.5 * g(H)), B=g(B, L, G, N).to(dtype), C=g(B, L, G, N).to(dtype),
             D=g(H), z=g(B, L, H, P).to(dtype), dt_bias=0.3 * g(H))
    if requires_grad:
        for v in x.values():
            v.requires_grad_(True)
    return x


def _timed(fn, inputs: dict, out_shape, backward: bool, **kw):
    """A zero-argument call of fn(**inputs, **kw): forward, or forward + backward."""
    if not backward:
        return lambda: fn(**inputs, **kw)
    leaves = list(inputs.values())
    dout = torch.randn(out_shape, device=leaves[0].device, dtype=leaves[0].dtype)
    return lambda: torch.autograd.grad(fn(**inputs, **kw), leaves, dout)


def _ssd_call(fn, shape, chunk, device):
    def make(L, N, mode, dtype):
        x = make_ssd_inputs(L=L, N=N, dtype=DTYPES[dtype], device=device,
                            requires_grad=mode == "fwd+bwd", **shape)
        return _timed(fn, x, x["x"].shape, mode == "fwd+bwd", chunk_size=chunk,
                      dt_softplus=True)
    return make


def _mamba1_call(shape, device):
    from ..kernels import selective_scan

    def make(L, N, mode, dtype):
        x = make_scan_inputs(shape["B"], shape["H"] * shape["P"], L, N, DTYPES[dtype], device,
                             requires_grad=mode == "fwd+bwd")
        return _timed(selective_scan, x, x["u"].shape, mode == "fwd+bwd",
                      delta_softplus=True)
    return make


def _sdpa_call(shape, device):
    def make(L, N, mode, dtype):
        q, k, v = (torch.randn(shape["B"], shape["H"], L, shape["P"], device=device,
                               dtype=DTYPES[dtype], requires_grad=mode == "fwd+bwd")
                   for _ in range(3))
        attn = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return _timed(attn, dict(q=q, k=k, v=v), q.shape, mode == "fwd+bwd")
    return make


def ssd_providers(shape, chunk, device) -> list[tuple[str, object, bool]]:
    """[(name, make(L, N, mode, dtype), runs at every N of the SSD?)]."""
    from ..kernels import ssd_chunk_scan
    from ..ssd import ssd_combined_ref

    def torch_form(**kw):
        return ssd_combined_ref(**kw)[0]  # (out, final state) -> out

    out = [("triton", _ssd_call(ssd_chunk_scan, shape, chunk, device), True)]
    theirs = mamba_chunk_scan_combined()
    if theirs is not None and torch.device(device).type == "cuda":
        out.append(("mamba_chunk_scan_combined", _ssd_call(theirs, shape, chunk, device),
                    True))
    out.append(("ssd_chunked_torch", _ssd_call(torch_form, shape, chunk, device), True))
    out.append(("mamba1_selective_scan", _mamba1_call(shape, device), False))
    out.append(("sdpa_causal", _sdpa_call(shape, device), False))
    return out


@suite("ssd")
def ssd_suite(quick: bool, device, progress: bool = False) -> list[Record]:
    gpu = torch.device(device).type == "cuda" and not quick
    if gpu:
        shape, chunk, states, lengths = SHAPE, CHUNK, STATES, LENGTHS
        dtype, modes, mamba1_n = "bf16", ("fwd", "fwd+bwd"), MAMBA1_N
    else:  # the interpreter: tiny sizes, forward only (a few seconds on a 2-core CPU)
        shape, chunk, states, lengths = (QUICK[k] for k in ("shape", "chunk", "states",
                                                              "lengths"))
        dtype, modes, mamba1_n = "fp32", ("fwd",), 4
    records: list[Record] = []
    for mode in modes:
        for name, make, per_state in ssd_providers(shape, chunk, device):
            sizes = [dict(L=L, N=N, mode=mode, dtype=dtype) for N in
                     (states if per_state else (mamba1_n if "mamba1" in name else 0,))
                     for L in lengths]
            new = sweep("ssd", {name: make}, sizes,
                        device=device, measure_memory=gpu, min_run_time=0.2 if gpu else 0.01,
                        progress=progress)
            for r in new:
                r.extra.update(shape, chunk=chunk, width=shape["H"] * shape["P"])
                if r.status == "ok" and r.ms:
                    r.extra["ns_per_token"] = r.ms * 1e6 / (shape["B"] * r.size["L"])
            records += new
            if gpu:  # a partial file survives a run cut short
                print(mode, name, [(r.size["N"], r.size["L"], r.status, r.ms) for r in new],
                      flush=True)
                save(records, "ssd", notes="partial: written after each provider")
    return records


def _ns_per_token(records, mode: str):
    """(the lengths, {(provider, N, L): ns per token}) of one mode's ok records."""
    recs = [r for r in records if r.size["mode"] == mode and r.status == "ok"]
    cell = {(r.provider, r.size["N"], r.size["L"]): r.extra["ns_per_token"] for r in recs}
    return sorted({L for _, _, L in cell}), cell


def ssd_table(records, mode: str) -> str:
    """Nanoseconds per token for one mode: a row per (provider, N), a column per L; then
    triton / mamba_chunk_scan_combined per N where both ran (below 1: the book's is faster)."""
    Ls, cell = _ns_per_token(records, mode)
    rows = list(dict.fromkeys((p, N) for p, N, _ in cell))
    lines = [f"{mode}, ns per token".ljust(32) + "".join(f"{L:>9}" for L in Ls)]
    for p, N in rows:
        vals = [cell.get((p, N, L)) for L in Ls]
        lines.append(f"{p} N={N}".ljust(32)
                     + "".join(f"{v:9.3g}" if v else f"{'-':>9}" for v in vals))
    for p, N in rows:
        if p != "triton" or ("mamba_chunk_scan_combined", N) not in rows:
            continue
        ratio = [(cell.get(("triton", N, L)), cell.get(("mamba_chunk_scan_combined", N, L)))
                 for L in Ls]
        lines.append(f"triton / mamba_ssm N={N}".ljust(32)
                     + "".join(f"{a / b:9.2f}" if a and b else f"{'-':>9}" for a, b in ratio))
    return "\n".join(lines)


def ssd_comparisons(records, mode: str) -> list[str]:
    """The measurements of one mode as the chapter's three answers, one line each: the
    book's kernel against `mamba_chunk_scan_combined` per N (time ratio, range over L), the
    SSD's time per token against the Mamba-1 scan's at equal width (range over L), and the
    shortest L from which the SSD stays faster than causal SDPA."""
    Ls, cell = _ns_per_token(records, mode)
    one = {(p, L): v for (p, _, L), v in cell.items()}  # the providers that ran at one N

    def span(pairs):
        ratios = [a / b for a, b in pairs if a and b]
        return f"{min(ratios):.2f}x to {max(ratios):.2f}x" if ratios else None

    lines = []
    for N in sorted({N for p, N, _ in cell if p == "triton"}):
        ours = [cell.get(("triton", N, L)) for L in Ls]
        theirs = span((a, cell.get(("mamba_chunk_scan_combined", N, L)))
                      for a, L in zip(ours, Ls))
        if theirs:
            lines.append(f"{mode}, N={N}: triton / mamba_chunk_scan_combined, time: {theirs}")
        mamba1 = span((one.get(("mamba1_selective_scan", L)), a) for a, L in zip(ours, Ls))
        if mamba1:
            lines.append(f"{mode}, N={N}: Mamba-1 scan / SSD, time per token: {mamba1}")
        sdpa = [one.get(("sdpa_causal", L)) for L in Ls]
        faster = [a is not None and s is not None and a < s for a, s in zip(ours, sdpa)]
        if any(sdpa):
            start = next((i for i in range(len(Ls)) if all(faster[i:])), None)
            lines.append(f"{mode}, N={N}: " + (
                f"faster than causal SDPA from L = {Ls[start]}" if start is not None
                else "slower than causal SDPA at the longest L measured"))
    return lines
