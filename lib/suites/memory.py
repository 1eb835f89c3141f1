"""Suite "generation_memory": what one sequence holds while generating (intro chapter).

The book's two language models of equal size (`mambabook.models`): the TransformerLM keeps
a KV cache, 2 x (H, L, P) per layer and sequence, that grows with the context L; the
MambaLM keeps a conv state and an SSM state, (D, K-1) and (D, N) per block, whatever L is.
Each cache is allocated at the size a prompt of L tokens leaves it, its bytes counted, and
one decoding step at that context timed with mambabook.bench (generation.decode_costs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..bench import Record, one_cpu_thread, suite
from .generation import decode_costs, equal_size_models

NAMES = {"transformer": "attention (KV cache)", "mamba": "mamba (SSM state)"}


@dataclass
class DecoderShape:
    """Sizes of the two models (equal width and parameter count)."""

    d_model: int = 512  # model width
    n_layer: int = 8  # Mamba blocks; the Transformer has n_layer / 2 layers
    d_state: int = 16  # Mamba: N, state size per channel
    batch: int = 1  # sequences decoded together
    dtype: torch.dtype = torch.float32


def measure_generation_memory(contexts, shape: DecoderShape, device, *, min_run_time=0.2):
    """Records for attention (KV cache) and Mamba (fixed state) at each context length L:
    peak_bytes holds the cache's bytes (per batch of shape.batch sequences), ms one step."""
    models = equal_size_models(shape.d_model, shape.n_layer, device, shape.dtype,
                               shape.d_state)
    with one_cpu_thread(device):  # small ops: one thread times steadier on a CPU
        costs = decode_costs(models, contexts, [shape.batch], device, cuda_graph=False,
                             suite_name="generation_memory", min_run_time=min_run_time)
    records = []
    for r in costs:
        size = {"L": r.size["context"]}
        if r.status != "ok":
            records.append(Record("generation_memory", NAMES[r.provider], size, status=r.status))
            continue
        held = r.extra["cache_bytes"]
        records.append(Record("generation_memory", NAMES[r.provider], size, r.ms, held, extra={
            "bytes_per_sequence": held / shape.batch, "params": r.extra["params"],
            "shape": {k: str(v) for k, v in vars(shape).items()}}))
    return records


@suite("generation_memory")
def run(quick: bool = False, device=None):
    device = torch.device(device or "cpu")
    if device.type == "cuda" and not quick:
        shape = DecoderShape(d_model=1024, n_layer=48, dtype=torch.bfloat16)
        contexts = [1024 * 2**i for i in range(0, 8)]  # 1K .. 128K
    else:
        shape = DecoderShape()
        contexts = [256, 512, 1024, 2048, 4096] if quick else [256 * 2**i for i in range(0, 7)]
    return measure_generation_memory(contexts, shape, device)
