"""Suites for chapters 4-5: the SSM's recurrent vs convolution view, and the price of selection.

Run: python -m mambabook.bench --suite ssm_views (or selection_price). D = 64 channels,
N = 16 state per channel; L doubles.
"""

from __future__ import annotations

import torch

from ..bench import Record, suite, sweep
from ..selective import scan_functions, selective_scan_ref
from ..ssm import (
    S4D,
    discretize_diag,
    s4d_real_init,
    ssm_convolution,
    ssm_kernel_diag,
    ssm_recurrent_diag,
)

D, N = 64, 16


def _lengths(quick: bool) -> list[dict]:
    return [{"L": L} for L in ([64, 128, 256, 512] if quick else [256, 1024, 4096, 16384])]


@suite("ssm_views")
def views_suite(quick: bool, device) -> list[Record]:
    """The recurrent view (a loop over L) vs the convolution view (FFT) of one S4D layer."""
    A = s4d_real_init(D, N).to(device)
    B = torch.ones(D, N, device=device)
    C = torch.randn(D, N, device=device)
    Ab, Bb = discretize_diag(A, B, torch.full((D,), 0.05, device=device), "zoh")

    def recurrent(L):
        u = torch.randn(1, D, L, device=device)
        return lambda: ssm_recurrent_diag(Ab, Bb, C, u)

    def convolution(L):
        u = torch.randn(1, D, L, device=device)
        return lambda: ssm_convolution(ssm_kernel_diag(Ab, Bb, C, L), u)

    return sweep("ssm_views", {"recurrent": recurrent, "convolution (FFT)": convolution},
                 _lengths(quick), device=device, min_run_time=0.05 if quick else 0.2)


@suite("selection_price")
def selection_price_suite(quick: bool, device) -> list[Record]:
    """What selection costs: an LTI layer (S4D: one kernel, FFT convolution) vs the
    selective scan (delta, B, C per token: no kernel, a scan over L)."""
    lti = S4D(D, N).to(device)

    def s4d_fft(L):
        u = torch.randn(1, D, L, device=device)
        return torch.no_grad()(lambda: lti(u))

    def scan(fn):
        def make(L):
            g = torch.Generator(device=device).manual_seed(0)
            u, delta = (torch.randn(1, D, L, device=device, generator=g) for _ in range(2))
            B, C = (torch.randn(1, N, L, device=device, generator=g) for _ in range(2))
            A = -torch.rand(D, N, device=device, generator=g)
            return lambda: fn(u, delta, A, B, C, delta_softplus=True)
        return make

    providers = {"S4D (FFT conv)": s4d_fft, "selective_scan_ref": scan(selective_scan_ref)}
    fast, _ = scan_functions(torch.empty(0, device=device))
    if fast is not selective_scan_ref:
        providers["selective_scan (triton)"] = scan(fast)
    return sweep("selection_price", providers, _lengths(quick), device=device,
                 min_run_time=0.05 if quick else 0.2)
