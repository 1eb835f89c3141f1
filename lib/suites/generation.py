"""Generation and training suites: MambaLM against an equal-size TransformerLM (chapter 08).

generation_throughput: batch 64, prompt 2048, 128 new tokens (greedy): tokens per second.
generation_latency: one decoding step at batch 1 for contexts 1K..64K.
lm_training: both models trained on the stdlib corpus for the same budget; loss curves.

Fairness: both models decode from preallocated buffers (Mamba's constant-size state, the
Transformer's KV cache of prompt + new tokens) and, on CUDA, one decoding step of each is
captured in a CUDA graph and replayed (the eager loop is recorded too). Weights in bfloat16
on the GPU, float32 on the CPU. The per-token functions are what the chapter's widget uses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .. import bench
from ..bench import Record, one_cpu_thread, suite
from ..models import (
    MambaConfig,
    MambaLM,
    TransformerLM,
    cache_bytes,
    count_parameters,
    matched_transformer_config,
)
from ..selective import scan_functions, selective_scan_ref


def _dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def equal_size_models(d_model: int, n_layer: int, device, dtype=None, d_state: int = 16):
    """{"mamba": MambaLM, "transformer": TransformerLM} of equal parameter count (eval mode);
    the Transformer has n_layer / 2 layers (one attention + one MLP per two Mamba blocks)."""
    device = torch.device(device)
    dtype = dtype or _dtype(device)
    torch.manual_seed(0)
    mcfg = MambaConfig(d_model=d_model, n_layer=n_layer, d_state=d_state)
    models = {"mamba": MambaLM(mcfg), "transformer": TransformerLM(matched_transformer_config(mcfg))}
    return {k: m.to(device=device, dtype=dtype).eval() for k, m in models.items()}


def _capture(fn, device: torch.device, cuda_graph: bool):
    """fn itself (CPU, or eager), or the replay of a CUDA graph of fn (after a warm-up)."""
    if device.type != "cuda" or not cuda_graph:
        return fn
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm-up: Triton autotuning and cuBLAS workspaces, off the graph
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def decode_step_fn(model, batch: int, context: int, cuda_graph: bool = True):
    """A zero-argument callable that generates one greedy token for `batch` sequences that
    already hold `context` tokens, and the cache it uses.

    The cache is filled with random numbers of the right size (the work of one step does
    not depend on the values): the Transformer's KV cache has context + 1 slots and the
    step writes at position `context` every call; Mamba's state is (B, D, K) + (B, D, N)
    per layer whatever the context.
    """
    device = model.embedding.weight.device
    with torch.no_grad():
        cache = model.new_cache(batch, context + 1)
        tensors = (cache.k + cache.v if isinstance(model, TransformerLM)
                   else [t for s in cache for t in (s.conv, s.ssm)])
        for t in tensors:
            t.normal_(0, 0.5)
    token = torch.zeros(batch, dtype=torch.long, device=device)

    @torch.no_grad()
    def step():
        if isinstance(model, TransformerLM):
            cache.pos.fill_(context)  # every call decodes the token at position `context`
        token.copy_(model.step(token, cache).argmax(-1))

    return _capture(step, device, cuda_graph), cache


def decode_costs(models: dict, contexts, batches, device=None, cuda_graph: bool = True,
                 suite_name: str = "decode_costs", min_run_time: float = 0.2) -> list[Record]:
    """Time one decoding step of each model at every (context, batch).

    Record.ms: milliseconds per step (one token for each of the B sequences); extra holds
    tokens_per_s = B / step time, cache_bytes (KV cache or state) and weight_bytes.
    A size that runs out of memory becomes an "oom" record.
    """
    device = torch.device(device) if device is not None else bench.default_device()
    records = []
    for context in contexts:
        for batch in batches:
            for name, model in models.items():
                size = {"context": int(context), "batch": int(batch)}
                try:
                    fn, cache = decode_step_fn(model, batch, context, cuda_graph)
                    ms = bench.time_fn(fn, device, min_run_time=min_run_time)
                except Exception as err:  # noqa: BLE001 - an oom is a result, not a failure
                    if not bench.is_oom(err):
                        raise
                    records.append(Record(suite_name, name, size, status="oom"))
                    continue
                weights = sum(p.numel() * p.element_size() for p in model.parameters())
                records.append(Record(suite_name, name, size, ms, None, extra={
                    "tokens_per_s": batch / (ms / 1e3), "cache_bytes": cache_bytes(cache),
                    "weight_bytes": weights, "params": count_parameters(model),
                    "cuda_graph": bool(cuda_graph and device.type == "cuda"),
                    "torch_threads": torch.get_num_threads()}))
                del fn, cache
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return records


@dataclass
class GenerationBench:
    """The callables generation_throughput times, and the buffers they work in."""

    run: Callable[[], None]  # prefill + n_new greedy tokens
    prefill: Callable[[], None]  # the prompt only (fills the cache, picks the first token)
    decode: Callable[[], None]  # n_new - 1 decoding steps after the prompt
    cache: object  # Mamba's states or the Transformer's KV cache (preallocated)
    prompt: torch.Tensor  # (B, prompt_len) random bytes
    token: torch.Tensor  # (B,) the last token generated


def generation_fn(model, batch: int, prompt_len: int, n_new: int,
                  cuda_graph: bool = True) -> GenerationBench:
    """Prefill a random prompt (B, prompt_len), then generate n_new greedy tokens (the first
    from the prefill's logits, then n_new - 1 decoding steps) into preallocated buffers."""
    device = model.embedding.weight.device
    g = torch.Generator(device="cpu").manual_seed(0)
    prompt = torch.randint(0, model.cfg.vocab_size, (batch, prompt_len), generator=g).to(device)
    max_len = prompt_len + n_new
    cache = model.new_cache(batch, max_len)
    token = torch.zeros(batch, dtype=torch.long, device=device)

    @torch.no_grad()
    def prefill():
        logits, _ = model.prefill(prompt, max_len, cache=cache)
        token.copy_(logits[:, -1].argmax(-1))

    @torch.no_grad()
    def one_step():
        token.copy_(model.step(token, cache).argmax(-1))

    prefill()  # fills the cache so that the captured step sees real buffers
    step = _capture(one_step, device, cuda_graph)

    def decode():
        if isinstance(model, TransformerLM):
            cache.pos.fill_(prompt_len)  # decode-only timing restarts after the prompt
        for _ in range(n_new - 1):
            step()

    def generate_all():
        prefill()  # sets the Transformer's pos to prompt_len
        for _ in range(n_new - 1):
            step()

    return GenerationBench(generate_all, prefill, decode, cache, prompt, token)


def generation_throughput(models: dict, batch: int, prompt_len: int, n_new: int, device=None,
                          cuda_graph: bool = True, suite_name: str = "generation_throughput",
                          min_run_time: float = 0.5):
    """One record per model: ms for prompt + n_new tokens; extra: tokens/s (new tokens over
    the whole time), prefill ms, decode ms per token, decode-only tokens/s, cache bytes."""
    device = torch.device(device) if device is not None else bench.default_device()
    records = []
    for name, model in models.items():
        size = {"batch": batch, "prompt": prompt_len, "new_tokens": n_new}
        try:
            gb = generation_fn(model, batch, prompt_len, n_new, cuda_graph)
            run, prefill, decode, cache = gb.run, gb.prefill, gb.decode, gb.cache
            # on a GPU, rep_ms=1000: a few repetitions of a call that takes a fraction of a second
            timing = dict(min_run_time=min_run_time, rep_ms=1000)
            ms = bench.time_fn(run, device, **timing)
            ms_prefill = bench.time_fn(prefill, device, **timing)
            ms_decode = bench.time_fn(decode, device, **timing)
            peak = bench.peak_memory(run, device)
        except Exception as err:  # noqa: BLE001
            if not bench.is_oom(err):
                raise
            records.append(Record(suite_name, name, size, status="oom"))
            continue
        per_token = ms_decode / max(1, n_new - 1)
        records.append(Record(suite_name, name, size, ms, peak, extra={
            "tokens_per_s": batch * n_new / (ms / 1e3),
            "prefill_ms": ms_prefill, "decode_ms_per_token": per_token,
            "decode_tokens_per_s": batch / (per_token / 1e3),
            "cache_bytes": cache_bytes(cache), "params": count_parameters(model),
            "cuda_graph": bool(cuda_graph and device.type == "cuda"),
                    "torch_threads": torch.get_num_threads(),
            "scan": _scan_used(model, device)}))
        del run, prefill, decode, cache, gb
        if device.type == "cuda":
            torch.cuda.empty_cache()
    _add_ratios(records)
    return records


def _scan_used(model, device) -> str:
    if not isinstance(model, MambaLM):
        return "sdpa"
    scan, _ = scan_functions(torch.empty(0, device=device), model.cfg.path)
    return "selective_scan_ref" if scan is selective_scan_ref else "mambabook.kernels"


def _add_ratios(records: list[Record]) -> None:
    """extra["mamba_over_transformer"]: the tokens/s ratio, written into every record."""
    ok = {r.provider: r for r in records if r.status == "ok"}
    for suffix in ("", " (eager)"):
        m, t = ok.get("mamba" + suffix), ok.get("transformer" + suffix)
        if m and t:
            for key in ("tokens_per_s", "decode_tokens_per_s"):
                ratio = m.extra[key] / t.extra[key]
                m.extra[f"mamba_over_transformer_{key}"] = ratio
                t.extra[f"mamba_over_transformer_{key}"] = ratio


# ----------------------------------------------------------------------------- suites
MIXER = {"mamba": "s6", "transformer": "attention"}  # the records' names -> TrainConfig.model
GPU_SIZE = {"d_model": 768, "n_layer": 24}  # ~90M parameters each: Mamba 24 blocks, Transformer 12 layers
CPU_SIZE = {"d_model": 64, "n_layer": 4}  # tiny, for --quick and the CPU


@suite("generation_throughput")
def run_throughput(quick: bool, device) -> list[Record]:
    device = torch.device(device)
    big = device.type == "cuda" and not quick
    models = equal_size_models(**(GPU_SIZE if big else CPU_SIZE), device=device)
    batch, prompt_len, n_new = (64, 2048, 128) if big else (4, 32, 8)
    with one_cpu_thread(device):
        records = generation_throughput(models, batch, prompt_len, n_new, device,
                                        min_run_time=0.5 if big else 0.1)
    if device.type == "cuda":  # the same without CUDA graphs: what kernel launches cost
        eager = generation_throughput(models, batch, prompt_len, n_new, device, cuda_graph=False)
        for r in eager:
            r.provider += " (eager)"
        records += eager
        _add_ratios(records)
    return records


@suite("generation_latency")
def run_latency(quick: bool, device) -> list[Record]:
    device = torch.device(device)
    big = device.type == "cuda" and not quick
    models = equal_size_models(**(GPU_SIZE if big else CPU_SIZE), device=device)
    contexts = [2**k for k in range(10, 17)] if big else [256, 1024, 4096]
    with one_cpu_thread(device):
        return decode_costs(models, contexts, [1], device, suite_name="generation_latency",
                            min_run_time=0.2 if big else 0.1)


@suite("lm_training")
def run_training(quick: bool, device) -> list[Record]:
    """Both models, same steps and batch (same tokens), capped at the same wall-clock time."""
    from ..corpus import load_corpus

    device = torch.device(device)
    big = device.type == "cuda" and not quick
    if big:
        common = dict(d_model=256, n_layer=8, L=512, batch=32, steps=1000, lr=2e-3,
                      warmup=100, eval_every=100, eval_batches=8, max_seconds=60.0,
                      max_bytes=8_000_000)
    else:
        common = dict(d_model=32, n_layer=2, L=16, batch=4, steps=6, warmup=2,
                      eval_every=3, eval_batches=1, max_bytes=300_000)
    corpus = load_corpus(common["max_bytes"])
    records = []
    with one_cpu_thread(device):
        for kind in ("mamba", "transformer"):
            records.append(_train_one(kind, common, corpus, device, big))
    return records


def _train_one(kind: str, common: dict, corpus, device, big: bool) -> Record:
    """Train one model of the pair; the record's ms is one training step timed by bench."""
    from ..train import TrainConfig, optimizer, train, train_step

    cfg = TrainConfig(task="stdlib", model=MIXER[kind], seed=0, **common)
    result = train(cfg, device=device, corpus=corpus, progress=True)
    model = result["model"].train()
    x = torch.randint(0, 256, (cfg.batch, cfg.L + 1), device=device)
    opt = optimizer(model, cfg)

    def step():
        train_step(model, opt, x[:, :-1], x[:, 1:])

    ms = bench.time_fn(step, device, min_run_time=0.2 if big else 0.05)
    curve = result["curve"]
    size = {"d_model": cfg.d_model, "n_layer_mamba": cfg.n_layer, "seq_len": cfg.L,
            "batch": cfg.batch}
    return Record("lm_training", kind, size, ms, None, extra={
        "params": result["params"], "curve": curve, "final_val_loss": curve["val_loss"][-1],
        "steps_done": curve["step"][-1], "train_seconds": curve["seconds"][-1],
        "config": result["config"], "model_config": result["model_config"],
        "corpus": result["data"], "scan": _scan_used(model, device),
        "torch_threads": torch.get_num_threads()})
