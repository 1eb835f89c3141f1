"""Plotting helpers shared by chapters and widgets: one look for every figure.

Scaling plots are log-log with the fitted slope in the legend; axes carry units.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import matplotlib.pyplot as plt

from .bench import Record, loglog_slope, select

PALETTE = {
    "attention": "#d1495b", "transformer": "#d1495b", "sdpa": "#d1495b", "naive": "#edae49",
    "mamba": "#00798c", "ssm": "#00798c", "triton": "#00798c", "rnn": "#30638e",
    "lstm": "#003d5b", "rwkv": "#8d5a97", "linear": "#8d5a97", "ref": "#999999",
}


FALLBACK = ["#30638e", "#edae49", "#66a182", "#8d5a97", "#d1495b", "#00798c", "#6c757d",
            "#b5651d", "#2e4057", "#a23b72"]


def color_for(name: str) -> str:
    """The provider's colour: by keyword, else a fixed pick from its name, so that the same
    provider has the same colour in a live run and a recorded one."""
    key = name.lower()
    for k, c in PALETTE.items():
        if k in key:
            return c
    return FALLBACK[zlib.crc32(key.encode()) % len(FALLBACK)]


def new_axes(width: float = 6.0, height: float = 3.6, **kw):
    fig, ax = plt.subplots(figsize=(width, height), **kw)
    return fig, ax


def plot_scaling(ax, records: Sequence[Record], x: str, providers: Sequence[str] | None = None,
                 *, y: str = "ms", label_suffix: str = "", linestyle: str = "-",
                 marker: str = "o") -> dict[str, float]:
    """Log-log plot of each provider's ms (or peak_bytes in MiB) against size x.

    Returns {provider: fitted slope}; the slope is printed in the legend.
    """
    providers = providers or list(dict.fromkeys(r.provider for r in records))
    slopes = {}
    for p in providers:
        if y == "ms":
            xs, ys = select(records, p, x)
        else:
            pts = sorted((r.size[x], r.peak_bytes / 2**20) for r in records
                         if r.provider == p and r.status == "ok" and r.peak_bytes)
            xs, ys = [a for a, _ in pts], [b for _, b in pts]
        if not xs:
            continue
        k = loglog_slope(xs, ys)
        slopes[p] = k
        ax.plot(xs, ys, marker=marker, linestyle=linestyle, color=color_for(p),
                label=f"{p}{label_suffix} (slope {k:.2f})")
        ooms = [r.size[x] for r in records if r.provider == p and r.status == "oom"]
        if ooms:
            ax.axvline(min(ooms), color=color_for(p) or "k", alpha=0.3, linestyle=":")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel("time per call (ms)" if y == "ms" else "peak memory (MiB)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return slopes
