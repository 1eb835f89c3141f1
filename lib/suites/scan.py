"""Scan suites (chapter 6): the linear recurrence h_t = a_t h_{t-1} + b_t, five ways.

scan: every provider of `mambabook.scan` against L at B=1, D=256 (float32, forward, no
grad); the point L=4096 is the check "the fastest is at least 10x faster than the loop".
scan_width: the same providers against the number of independent lanes D at a fixed L:
where the loop's per-step overhead is amortised and Hillis-Steele's extra work shows.
On a CPU both suites time with one thread (`mambabook.bench.one_cpu_thread`).
Run: python -m mambabook.bench --suite scan [--quick]  (and --suite scan_width).
"""

from __future__ import annotations

import torch

from .. import scan as S
from ..bench import Record, one_cpu_thread, select, suite, sweep

TEN_X = {"L": 4096, "B": 1, "D": 256}  # the size of the "10x faster than the loop" check


def scan_inputs(B: int, D: int, L: int, device, dtype=torch.float32):
    """a in (0.5, 1) (a decay, as exp(delta A) in Mamba), b ~ N(0, 1): (B, D, L) each."""
    g = torch.Generator(device="cpu").manual_seed(0)
    a = (0.5 + 0.5 * torch.rand(B, D, L, generator=g)).to(device, dtype)  # (B, D, L)
    b = torch.randn(B, D, L, generator=g).to(device, dtype)  # (B, D, L)
    return a, b


def scan_providers(device, dtype=torch.float32, names=None) -> dict:
    """{name: make(B, D, L) -> zero-argument forward call} for the scans of mambabook.scan."""

    def provider(fn):
        def make(B, D, L):
            a, b = scan_inputs(B, D, L, device, dtype)
            return torch.no_grad()(lambda: fn(a, b))

        return make

    return {name: provider(fn) for name, fn in S.SCANS.items() if names is None or name in names}


def lengths(quick: bool, device) -> list[dict]:
    """B=1, D=256; L = 256 ... 4096 (quick) or ... 16384 on a CPU, ... 65536 on a GPU."""
    gpu = torch.device(device).type == "cuda"
    top = 4096 if quick else (65536 if gpu else 16384)
    Ls = [256 * 2 ** i for i in range(10) if 256 * 2 ** i <= top]
    if quick:
        Ls = [256, 1024, 4096]
    return [{"L": L, "B": 1, "D": TEN_X["D"]} for L in Ls]


def widths(quick: bool, device) -> list[dict]:
    """B=1, L=512; D = 16 ... 16384 lanes (D x N of a Mamba layer is 1536 x 16 = 24576)."""
    gpu = torch.device(device).type == "cuda"
    Ds = [16, 256, 4096, 16384] if quick else [16, 64, 256, 1024, 4096, 16384] + (
        [65536] if gpu else [])
    return [{"D": D, "B": 1, "L": 512} for D in Ds]


def ratio_to_loop(records, size: dict = TEN_X) -> dict:
    """{provider: ms} at one size, plus 'fastest' and 'speedup' = loop ms / fastest ms."""
    ms = {r.provider: r.ms for r in records
          if r.status == "ok" and all(r.size.get(k) == v for k, v in size.items())}
    if "sequential" not in ms or len(ms) < 2:
        return {"ms": ms, "fastest": None, "speedup": None}
    fastest = min((p for p in ms if p != "sequential"), key=ms.get)
    return {"ms": ms, "fastest": fastest, "speedup": ms["sequential"] / ms[fastest]}


def slopes(records, x: str) -> dict:
    """{provider: log-log slope of ms against x}."""
    from ..bench import loglog_slope

    return {p: loglog_slope(*select(records, p, x))
            for p in dict.fromkeys(r.provider for r in records)}


@suite("scan")
def scan_vs_length(quick: bool, device, progress: bool = False) -> list[Record]:
    with one_cpu_thread(device):
        records = sweep("scan", scan_providers(device), lengths(quick, device), device=device,
                        min_run_time=0.1 if quick else 0.3, measure_memory=not quick,
                        progress=progress)
    for r in records:
        r.extra.update(dtype="float32", threads=1 if torch.device(device).type == "cpu" else None)
    check = ratio_to_loop(records)
    for r in records:
        if r.size == TEN_X and check["speedup"] is not None:
            r.extra["speedup_fastest_vs_loop"] = round(check["speedup"], 2)
    return records


@suite("scan_width")
def scan_vs_width(quick: bool, device, progress: bool = False) -> list[Record]:
    names = ["sequential", "hillis_steele", "blelloch", "chunked"]
    with one_cpu_thread(device):
        records = sweep("scan_width", scan_providers(device, names=names),
                        widths(quick, device), device=device,
                        min_run_time=0.1 if quick else 0.3, measure_memory=not quick,
                        progress=progress)
    for r in records:
        r.extra.update(dtype="float32", threads=1 if torch.device(device).type == "cpu" else None)
    return records
