"""Plotting helpers shared by chapters and widgets: one look for every figure.

Scaling plots are log-log with the fitted slope in the legend; axes carry units.
`records_table` shows benchmark records as a table (Markdown, rendered in Jupyter and on
the website) instead of a wide printout.
"""

from __future__ import annotations

import math
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
        slope = f" (slope {k:.2f})" if math.isfinite(k) else ""  # one point has no slope
        ax.plot(xs, ys, marker=marker, linestyle=linestyle, color=color_for(p),
                label=f"{p}{label_suffix}{slope}")
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


UNITS = {"ms": ("ms", 1.0), "peak_bytes": ("MiB", 2.0**-20)}


def records_table(records: Sequence[Record], x: str, fields: Sequence[str] = ("ms",)):
    """Records as a Markdown table: one row per size x, a column per provider and field.

    fields: "ms" (median time) and/or "peak_bytes" (shown in MiB). A record that did not
    run shows its status ("oom", "skip"). Returns IPython's Markdown: `display(...)` it.
    """
    from IPython.display import Markdown

    for f in fields:
        if f not in UNITS:
            raise ValueError(f"fields must be among {sorted(UNITS)}, got {f!r}")
    records = list(records)
    providers = list(dict.fromkeys(r.provider for r in records))
    cell = {(r.provider, r.size[x]): r for r in records}
    head = [x] + [f"{p} ({UNITS[f][0]})" for f in fields for p in providers]
    lines = ["| " + " | ".join(head) + " |", "|" + " ---: |" * len(head)]
    for v in sorted({r.size[x] for r in records}):
        row = [str(v)]
        for f in fields:
            for p in providers:
                r = cell.get((p, v))
                if r is None:
                    row.append("")
                elif r.status != "ok":
                    row.append(r.status)
                elif getattr(r, f) is None:  # not measured
                    row.append("")
                else:
                    row.append(f"{getattr(r, f) * UNITS[f][1]:.4g}")
        lines.append("| " + " | ".join(row) + " |")
    return Markdown("\n".join(lines))


def plot_ratio_map(ax, ratio, batches: Sequence[int], contexts: Sequence[int], *,
                   level: float = 5.0, hatched=None, vmax: float = 100.0, labels=None):
    """A heat map of a ratio over batch (rows) x context (columns), each cell labelled, on a
    log colour scale from 1 to vmax, and the contour where the ratio crosses `level`.

    ratio: (len(batches), len(contexts)) numbers, NaN for a cell with no value (left blank,
    labelled by `labels`[i][j] when given, e.g. "oom"); hatched: booleans of the same shape,
    the cells to hatch (e.g. where a cache would not fit). Returns the contour set, or None
    when no cell is on each side of `level`.
    """
    import numpy as np
    from matplotlib.colors import LogNorm

    grid = [[float(v) for v in row] for row in ratio]
    want = (len(batches), len(contexts))
    if (len(grid), *{len(row) for row in grid}) != want:
        got = (len(grid), *sorted({len(row) for row in grid}))
        raise ValueError(f"ratio must have shape (batches, contexts) = {want}, got {got}")
    values = np.ma.masked_invalid(np.array(grid))
    ax.imshow(values, origin="lower", cmap="viridis", norm=LogNorm(1.0, vmax), aspect="auto")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            text = (labels[i][j] if labels is not None else "") if math.isnan(v) else f"{v:.1f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="black" if math.isnan(v) or v >= math.sqrt(vmax) else "white")
            if hatched is not None and hatched[i][j]:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False,
                                           hatch="//", edgecolor="white", lw=0))
    flat = [v for row in grid for v in row if not math.isnan(v)]
    lines = None
    if flat and min(flat) < level < max(flat):
        lines = ax.contour(values, levels=[level], colors="#d1495b", linewidths=2)
        path = max(lines.allsegs[0], key=len)  # the label between two cells' numbers
        k = max(1, len(path) // 2)
        where = [tuple((path[k - 1] + path[k]) / 2)] if len(path) > 1 else None
        for label in ax.clabel(lines, fmt=f"{level:g}x", fontsize=8, manual=where):
            label.set_bbox({"fc": "white", "ec": "none", "pad": 1})
    ax.set_xticks(range(len(contexts)), [f"{c // 1024}K" if c >= 1024 else str(c)
                                         for c in contexts])
    ax.set_yticks(range(len(batches)), [str(b) for b in batches])
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel("batch size B")
    return lines
