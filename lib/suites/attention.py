"""Attention and RNN scaling suites (chapters 1 and 2).

attention_scaling: causal attention forward time and peak memory against L, the naive
two-matmul form (stores L x L scores) vs torch SDPA (fused; flash attention on the GPU).
rnn_loop: the step-by-step Elman RNN against L: time per token constant, total linear.
decode_step: time to generate one token after a context of L: a KV cache (grows with L)
against the fixed-size states of linear attention and RWKV.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..attention import KVCache, linear_attention_step, softmax_attention, wkv_step
from ..bench import Record, suite, sweep
from ..rnn import elman_rnn


def attention_providers(B: int, H: int, P: int, dtype: torch.dtype, device):
    """{"naive": ..., "sdpa": ...}: make(L) -> a zero-argument causal forward call."""

    def inputs(L):
        return [torch.randn(B, H, L, P, dtype=dtype, device=device) for _ in range(3)]

    def naive(L):
        q, k, v = inputs(L)
        return lambda: softmax_attention(q, k, v, causal=True)

    def sdpa(L):
        q, k, v = inputs(L)
        return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)

    return {"naive": naive, "sdpa": sdpa}


def attention_sizes(quick: bool, device) -> tuple[dict, list[dict]]:
    """(shape, sizes): B=1, H=12, P=64, bf16, L = 512 ... 131072 on a GPU; else B=1, H=2, P=64,
    float32, L = 256 ... 4096 (under 30 s on a 2-core CPU)."""
    if torch.device(device).type == "cuda" and not quick:
        shape = dict(B=1, H=12, P=64, dtype=torch.bfloat16)
        lengths = [512 * 2 ** i for i in range(9)]  # 512 ... 131072
    else:
        shape = dict(B=1, H=2, P=64, dtype=torch.float32)
        lengths = [256 * 2 ** i for i in range(5)]  # 256 ... 4096
    return shape, [{"L": L} for L in lengths]


@suite("attention_scaling")
def attention_scaling(quick: bool, device, progress: bool = False) -> list[Record]:
    shape, sizes = attention_sizes(quick, device)
    providers = attention_providers(device=device, **shape)
    records = sweep("attention_scaling", providers, sizes, device=device,
                    min_run_time=0.05 if quick else 0.2, progress=progress)
    for r in records:
        r.extra.update({k: str(v) for k, v in shape.items()})
    return records


def rnn_providers(B: int, D: int, device):
    """{"mambabook.rnn": the Python loop of elman_rnn, "torch.nn.RNN": torch's C++ loop}."""

    def weights():
        W_ih = torch.randn(D, D, device=device) / D ** 0.5
        W_hh = torch.randn(D, D, device=device) / D ** 0.5
        return W_ih, W_hh, torch.zeros(D, device=device)

    def loop(L, B=B):
        x = torch.randn(B, L, D, device=device)
        W_ih, W_hh, b = weights()
        return torch.no_grad()(lambda: elman_rnn(x, W_ih, W_hh, b, b))

    def library(L, B=B):
        x = torch.randn(B, L, D, device=device)
        net = torch.nn.RNN(D, D, batch_first=True).to(device)
        return torch.no_grad()(lambda: net(x))

    return {"mambabook.rnn": loop, "torch.nn.RNN": library}


@suite("rnn_loop")
def rnn_loop(quick: bool, device, progress: bool = False) -> list[Record]:
    """Elman RNN forward (no grad), B=8 D=64 (CPU) or B=64 D=256 (GPU), against L."""
    gpu = torch.device(device).type == "cuda" and not quick
    B, D = (64, 256) if gpu else (8, 64)
    lengths = [256 * 2 ** i for i in range(6 if gpu else 5)]  # 256 ... 8192 (GPU), 4096 (CPU)
    records = sweep("rnn_loop", rnn_providers(B, D, device), [{"L": L} for L in lengths],
                    device=device, measure_memory=False, min_run_time=0.1 if quick else 0.2,
                    progress=progress)
    for r in records:
        r.extra.update(B=B, D=D)
        if r.status == "ok":
            r.extra["us_per_token"] = 1e3 * r.ms / r.size["L"]
    return records


def decode_providers(B: int, H: int, P: int, dtype: torch.dtype, device):
    """One decoding step after a context of L tokens, for three kinds of memory."""

    def token():
        return [torch.randn(B, H, P, dtype=dtype, device=device) for _ in range(3)]

    def kv_cache(L):
        cache = KVCache(capacity=L + 16384)  # room for the steps the timer adds
        cache.prefill(*[torch.randn(B, H, L, P, dtype=dtype, device=device) for _ in range(2)])
        q, k, v = token()
        return lambda: cache.step(q, k, v)

    def linear_state(L):  # the state after L tokens has the same size for every L
        S = torch.randn(B, H, P, P, dtype=dtype, device=device).abs()
        z = torch.rand(B, H, P, dtype=dtype, device=device) * L
        q, k, v = token()
        return lambda: linear_attention_step(S, z, q, k, v)

    def rwkv_state(L):  # (a, b, p) per channel, D = H * P channels, whatever L is
        w, u = (torch.rand(H * P, dtype=dtype, device=device) for _ in range(2))
        state = tuple(torch.randn(B, H * P, dtype=dtype, device=device).abs() for _ in range(3))
        k, v = (torch.randn(B, H * P, dtype=dtype, device=device) for _ in range(2))
        return lambda: wkv_step(state, w, u, k, v)

    return {"kv_cache": kv_cache, "linear_attention": linear_state, "rwkv": rwkv_state}


@suite("decode_step")
def decode_step(quick: bool, device, progress: bool = False) -> list[Record]:
    """Per-token decode time vs context L: B=1, H=12, P=64 (bf16 on GPU, float32 on CPU)."""
    gpu = torch.device(device).type == "cuda" and not quick
    shape = dict(B=1, H=12, P=64, dtype=torch.bfloat16 if gpu else torch.float32)
    lengths = [1024 * 2 ** i for i in range(8)] if gpu else [256 * 2 ** i for i in range(6)]
    records = sweep("decode_step", decode_providers(device=device, **shape),
                    [{"L": L} for L in lengths], device=device, measure_memory=False,
                    min_run_time=0.05 if quick else 0.2, progress=progress)
    for r in records:
        r.extra.update({k: str(v) for k, v in shape.items()})
    return records
