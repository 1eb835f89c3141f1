"""Suite "generation_memory": what one sequence holds while generating (intro chapter).

Attention keeps a KV cache, (layers, 2, H, L, P) per sequence, that grows with the
context L; a Mamba-style model keeps a conv state and an SSM state, (layers, D, K-1) and
(layers, D, N), whatever L is. Both caches are built by real prefill computations and
their bytes measured; the decode step at that context is timed with mambabook.bench.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..bench import Record, one_cpu_thread, peak_memory, suite, synchronize, time_fn


@dataclass
class DecoderShape:
    """Sizes of the two model stand-ins (same d_model and depth for both)."""

    layers: int = 4  # residual blocks
    d_model: int = 512  # model width
    heads: int = 8  # attention heads (P = d_model / heads)
    expand: int = 2  # Mamba: D = expand * d_model channels
    d_state: int = 16  # Mamba: N, state size per channel
    d_conv: int = 4  # Mamba: causal conv width (keeps K-1 past inputs)
    batch: int = 1  # sequences decoded together
    dtype: torch.dtype = torch.float32


def _weights(shape: DecoderShape, device) -> dict:
    g = torch.Generator(device="cpu").manual_seed(0)
    d, dd = shape.d_model, shape.expand * shape.d_model

    def w(*s):
        return (torch.randn(*s, generator=g) / math.sqrt(s[0])).to(device, shape.dtype)

    return {"wkv": w(d, 2 * d), "wq": w(d, d), "w_in": w(d, dd), "A": -torch.rand(dd, shape.d_state, generator=g).to(device) - 0.5}


def kv_cache_prefill(x: torch.Tensor, W: dict, shape: DecoderShape) -> torch.Tensor:
    """Prompt x: (B, L, d_model) -> KV cache (layers, 2, B, H, L, P), one projection a layer."""
    B, L, d = x.shape
    H, P = shape.heads, d // shape.heads
    cache = x.new_empty(shape.layers, 2, B, H, L, P)
    for layer in range(shape.layers):
        kv = (x @ W["wkv"]).view(B, L, 2, H, P).permute(2, 0, 3, 1, 4)  # (2, B, H, L, P)
        cache[layer] = kv
    return cache


def kv_cache_step(cache: torch.Tensor, x_t: torch.Tensor, W: dict, shape: DecoderShape) -> torch.Tensor:
    """One new token x_t: (B, d_model) attends over the whole cache in every layer."""
    B, d = x_t.shape
    H, P = shape.heads, d // shape.heads
    h = x_t
    for layer in range(shape.layers):
        q = (h @ W["wq"]).view(B, H, 1, P)  # (B, H, 1, P)
        o = F.scaled_dot_product_attention(q, cache[layer, 0], cache[layer, 1])  # (B, H, 1, P)
        h = h + o.reshape(B, d)
    return h


def ssm_state_prefill(x: torch.Tensor, W: dict, shape: DecoderShape, chunk: int = 256):
    """Prompt x: (B, L, d_model) -> (conv state (layers, B, D, K-1), ssm state (layers, B, D, N)).

    The prompt streams through in chunks: inside a chunk the diagonal recurrence
    h_t = exp(dt_t A) h_{t-1} + dt_t u_t is summed in closed form, so memory stays
    O(chunk), not O(L).
    """
    B, L, _ = x.shape
    D, N, K = shape.expand * shape.d_model, shape.d_state, shape.d_conv
    conv = x.new_zeros(shape.layers, B, D, K - 1)
    ssm = torch.zeros(shape.layers, B, D, N, device=x.device, dtype=torch.float32)
    for start in range(0, L, chunk):
        u = (x[:, start:start + chunk] @ W["w_in"]).float()  # (B, T, D)
        dt = F.softplus(u)  # (B, T, D): the step size, input-dependent as in Mamba
        logA = dt[..., None] * W["A"]  # (B, T, D, N): log of exp(dt A)
        cum = torch.cumsum(logA, dim=1)  # (B, T, D, N)
        total = cum[:, -1]  # (B, D, N)
        contrib = (torch.exp(total[:, None] - cum) * (dt * u)[..., None]).sum(1)  # (B, D, N)
        for layer in range(shape.layers):
            ssm[layer] = torch.exp(total) * ssm[layer] + contrib
            conv[layer] = u[:, -(K - 1):].transpose(1, 2).to(x.dtype)
    return conv, ssm


def ssm_state_step(state, x_t: torch.Tensor, W: dict, shape: DecoderShape) -> torch.Tensor:
    """One new token: every layer updates its fixed-size state in place."""
    conv, ssm = state
    h = x_t
    for layer in range(shape.layers):
        u = (h @ W["w_in"]).float()  # (B, D)
        conv[layer] = torch.cat([conv[layer, :, :, 1:], u[..., None].to(conv.dtype)], dim=-1)
        dt = F.softplus(u)
        ssm[layer] = torch.exp(dt[..., None] * W["A"]) * ssm[layer] + (dt * u)[..., None]
        y = ssm[layer].sum(-1)  # (B, D)
        h = h + (y[:, : shape.d_model]).to(h.dtype)
    return h


def measure_generation_memory(contexts, shape: DecoderShape, device, *, min_run_time=0.2):
    """Records for attention (KV cache) and Mamba (fixed state) at each context length."""
    W = _weights(shape, device)
    records = []
    for L in contexts:
        g = torch.Generator(device="cpu").manual_seed(L)
        x = torch.randn(shape.batch, L, shape.d_model, generator=g).to(device, shape.dtype)
        x_t = x[:, -1]
        for name, prefill, step in (
            ("attention (KV cache)", kv_cache_prefill, kv_cache_step),
            ("mamba (SSM state)", ssm_state_prefill, ssm_state_step),
        ):
            try:
                cache = prefill(x, W, shape)
                synchronize(device)
                tensors = cache if isinstance(cache, tuple) else (cache,)
                held = sum(t.numel() * t.element_size() for t in tensors)
                decode = functools.partial(step, cache, x_t, W, shape)
                with one_cpu_thread(device):  # small ops: one thread times steadier on a CPU
                    ms = time_fn(decode, device, min_run_time=min_run_time)
                step_peak = peak_memory(decode, device)
                records.append(Record("generation_memory", name, {"L": L}, ms, held, extra={
                    "bytes_per_sequence": held / shape.batch, "step_peak_bytes": step_peak,
                    "shape": {k: str(v) for k, v in vars(shape).items()}}))
                del cache, tensors, decode
            except Exception as err:  # noqa: BLE001
                from ..bench import is_oom

                if not is_oom(err):
                    raise
                records.append(Record("generation_memory", name, {"L": L}, status="oom"))
    return records


@suite("generation_memory")
def run(quick: bool = False, device=None):
    device = torch.device(device or "cpu")
    if device.type == "cuda" and not quick:
        shape = DecoderShape(layers=24, d_model=1024, heads=16, dtype=torch.bfloat16)
        contexts = [1024 * 2**i for i in range(0, 8)]  # 1K .. 128K
    else:
        shape = DecoderShape()
        contexts = [256, 512, 1024, 2048, 4096] if quick else [256 * 2**i for i in range(0, 7)]
    return measure_generation_memory(contexts, shape, device)
