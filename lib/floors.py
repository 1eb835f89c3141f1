"""What physics allows a generation step (chapter 8): the fewest seconds a decoding step,
a prompt and prompt + new tokens can take on a GPU, from a model's shapes and the GPU's
specification sheet, and the Transformer / Mamba ratio of those floors over batch x context.

A decoding step moves `models.decode_step_bytes` at the HBM bandwidth; a prompt is matrix
products, `prefill_flops` at a stated share of the dense bfloat16 FLOP/s. Computed, never
measured: the `generation_map` suite measures the same grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .models import TransformerLM, count_parameters, decode_step_bytes, equal_size_pair


@dataclass(frozen=True)
class GpuSpec:
    """A GPU's specification sheet, not a measurement: what the floors divide by."""

    bytes_per_s: float  # HBM bandwidth
    memory: float  # HBM capacity in bytes
    flop_per_s: float  # dense bfloat16 matrix products (no sparsity)


GPUS = {  # NVIDIA's specifications (SXM boards)
    "A100 80GB": GpuSpec(bytes_per_s=2.0e12, memory=80e9, flop_per_s=312e12),
    "H100 SXM": GpuSpec(bytes_per_s=3.35e12, memory=80e9, flop_per_s=989e12),
    "H200": GpuSpec(bytes_per_s=4.8e12, memory=141e9, flop_per_s=989e12),
}
MATMUL_SHARE = 0.5  # the share of the specified FLOP/s a prompt's matmuls reach (assumed)
N_NEW = 128  # tokens generated after the prompt, as in the Mamba paper
PAPER_SIZES = {  # the Mamba paper's released models: d_model, Mamba blocks
    "130M": (768, 24),
    "370M": (1024, 48),
    "790M": (1536, 48),
    "1.4B": (2048, 48),
    "2.8B": (2560, 64),
}


def paper_pair(d_model: int, n_layer: int) -> dict:
    """{"mamba", "transformer"}: a Mamba of that shape (byte vocabulary) and its matched
    Transformer, bfloat16, on the meta device (shapes only, nothing allocated)."""
    return equal_size_pair(d_model, n_layer, "meta", torch.bfloat16)


def prefill_flops(model, batch: int, context: int) -> float:
    """2 FLOPs per parameter per token (the matmuls, the tied head included); for the
    Transformer also causal attention's q k^T and p v: 2 n_layer B L^2 d_model."""
    flops = 2.0 * count_parameters(model) * batch * context
    if isinstance(model, TransformerLM):
        flops += 2.0 * model.cfg.n_layer * batch * context**2 * model.cfg.d_model
    return flops


def floor_seconds(step_bytes: float, flops: float, gpu: GpuSpec,
                  matmul_share: float = MATMUL_SHARE, n_new: int = N_NEW):
    """(a decoding step, the prompt, prompt + n_new tokens) in seconds at the floors, from
    a step's bytes and the prompt's FLOPs; the prompt yields the first new token."""
    step = step_bytes / gpu.bytes_per_s
    prompt = flops / (matmul_share * gpu.flop_per_s)
    return step, prompt, prompt + (n_new - 1) * step


def floor_times(model, batch: int, context: int, gpu: GpuSpec, **kw):
    """floor_seconds of `model` for `batch` sequences holding `context` tokens."""
    step_bytes = decode_step_bytes(model, batch, context).total
    return floor_seconds(step_bytes, prefill_flops(model, batch, context), gpu, **kw)


def floor_maps(pair: dict, gpus: dict, batches, contexts, matmul_share: float = MATMUL_SHARE,
               n_new: int = N_NEW) -> dict:
    """Transformer / Mamba at the floors over batch (rows) x context (columns) for each GPU
    of `gpus`: {name: (decoding-only ratios, prompt + n_new ratios, too big)}, too big where
    the Transformer's weights and cache for context + n_new - 1 tokens exceed that GPU's
    memory. Bytes and FLOPs are counted once for all GPUs."""
    maps = {name: ([], [], []) for name in gpus}
    for B in batches:
        for rows in maps.values():
            for grid in rows:
                grid.append([])
        for L in contexts:
            costs = [(decode_step_bytes(m, B, L).total, prefill_flops(m, B, L))
                     for m in (pair["mamba"], pair["transformer"])]
            held = decode_step_bytes(pair["transformer"], B, L + n_new - 1)
            for name, gpu in gpus.items():
                (sm, _, em), (st, _, et) = (floor_seconds(*c, gpu, matmul_share, n_new)
                                            for c in costs)
                big = held.weights + held.cache_read > gpu.memory
                for grid, value in zip(maps[name], (st / sm, et / em, big)):
                    grid[-1].append(value)
    return maps


def _tokens(L: int) -> str:
    return f"{L // 1024}K" if L >= 1024 else str(L)


def where_level(ratio, too_big, batches, contexts, level: float = 5.0,
                context: int = 2048) -> tuple[float, str]:
    """The largest ratio where the Transformer fits, and where `level` begins there: the
    smallest batch at `context`, else the cell with the smallest B L."""
    fit = [(B, L, r) for B, row, big_row in zip(batches, ratio, too_big)
           for L, r, big in zip(contexts, row, big_row) if not big]
    top = max(r for _, _, r in fit)
    at_context = [B for B, L, r in fit if L == context and r >= level]
    if at_context:
        return top, f"{level:g}x from B = {min(at_context)} at {_tokens(context)}"
    over = sorted((B * L, B, L) for B, L, r in fit if r >= level)
    if over:
        return top, f"{level:g}x first at B = {over[0][1]}, {_tokens(over[0][2])}"
    return top, f"{level:g}x nowhere"
