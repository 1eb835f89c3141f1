"""Generation and training suites: MambaLM against an equal-size TransformerLM (chapter 08).

generation_throughput: batch 64, prompt 2048, 128 new tokens (greedy): tokens per second.
generation_latency: one decoding step at batch 1 for contexts 1K..64K.
generation_map: the Mamba paper's scale (Mamba d_model 2048 x 48 blocks against a Transformer
of 24 layers, ~1.27B parameters each, bf16, random weights) over batch 1..256 x context
512..16K: prefill, the decoding step, prompt + 128 new tokens, tokens/s of both and their
ratio, each step against its floor (models.decode_step_bytes at the bandwidth of a copy timed
in the same run). Budget: the cost model (estimate_plan: 2 FLOPs per parameter and token,
~2.6 GFLOP, plus causal attention, at 500 TFLOP/s, Mamba's prefill 1.5x that; a step at its
floor bytes / 3 TB/s + 0.5 ms, as many steps as do_bench takes) puts the 30 points it keeps
at about 245 s on an H200; the 6 of B x context >= 1M tokens (a prefill estimated over 4.5 s,
and a KV cache over 200 GB) are skipped, and a guard skips any point that would end the run
past 360 s. Eager decoding steps at batch 1 and 64, context 2048, beside the graphed ones.
lm_training: both models trained on the stdlib corpus for the same budget; loss curves.

Fairness: both models decode from preallocated buffers (Mamba's constant-size state, the
Transformer's KV cache of prompt + new tokens) and, on CUDA, one decoding step of each is
captured in a CUDA graph and replayed (the eager loop is recorded too). Weights in bfloat16
on the GPU, float32 on the CPU. The per-token functions are what the chapter's widget uses.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .. import bench
from ..bench import Record, one_cpu_thread, suite
from ..floors import prefill_flops
from ..models import (
    MambaLM,
    TransformerLM,
    cache_bytes,
    count_parameters,
    decode_step_bytes,
    equal_size_pair,
)
from ..selective import scan_functions, selective_scan_ref


def _dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def equal_size_models(d_model: int, n_layer: int, device, dtype=None, d_state: int = 16):
    """models.equal_size_pair seeded with 0, in bfloat16 on a GPU and float32 on a CPU
    unless dtype is given."""
    device = torch.device(device)
    torch.manual_seed(0)
    return equal_size_pair(d_model, n_layer, device, dtype or _dtype(device), d_state)


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
    step: Callable[[], None]  # one decoding step (a CUDA-graph replay on a GPU)
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

    return GenerationBench(generate_all, prefill, decode, step, cache, prompt, token)


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
                if key not in m.extra or key not in t.extra:
                    continue
                ratio = m.extra[key] / t.extra[key]
                m.extra[f"mamba_over_transformer_{key}"] = ratio
                t.extra[f"mamba_over_transformer_{key}"] = ratio


# ----------------------------------------------------------------------------- generation_map
ESTIMATE_BYTES_PER_S = 3.0e12  # the cost model's decoding rate: ~70% of a copy's 4.2 TB/s
STEP_OVERHEAD_S = 5e-4  # ... plus this per step (48 small layers at batch 1)
POINT_OVERHEAD_S = 0.5  # ... plus this per model and point: cache, capture, compiles, frees
START_S = 20.0  # ... plus this once: models, the copy, the first compiles, eager points


@dataclass
class MapPlan:
    """What generation_map measures, and the cost model that keeps it within its budget."""

    d_model: int = 2048  # width of both models: Mamba-1.4B's shape, ~1.27B parameters each
    n_layer: int = 48  # Mamba blocks (the Transformer gets n_layer / 2 layers)
    batches: tuple[int, ...] = (1, 4, 16, 64, 128, 256)  # B
    contexts: tuple[int, ...] = (512, 1024, 2048, 4096, 8192, 16384)  # prompt tokens
    n_new: int = 128  # tokens generated after the prompt
    decode_steps: int = 16  # decoding steps per timed call (CUDA-graph replays on a GPU)
    prefill_reps: int = 2  # timed prefills after the warm-up (10 if one is estimated < 50 ms)
    eager: tuple[tuple[int, int], ...] = ((1, 2048), (64, 2048))  # (B, context), no graph
    max_prefill_s: float = 4.5  # skip a point whose estimated prefill (either model) is longer
    budget_s: float = 360.0  # skip the points that would end the run later than this
    flops_per_s: float = 5e14  # the cost model's prefill rate (bf16 matmuls, ~half of peak)
    mamba_prefill_factor: float = 1.5  # Mamba's prefill over that estimate (scan, conv)
    bandwidth: float | None = None  # bytes/s for the floors; None: a copy timed in the run
    copy_bytes: int = 2**30  # the size of that copy (read once, written once)
    min_run_time: float = 0.05  # CPU: seconds per timing (torch.utils.benchmark)


CPU_MAP_PLAN = MapPlan(d_model=64, n_layer=4, batches=(1, 4), contexts=(32, 128), n_new=8,
                       decode_steps=4, eager=((1, 128),), flops_per_s=2e10, budget_s=120.0,
                       copy_bytes=2**24, min_run_time=0.02)


def _prefill_reps(prefill_s: float, plan: MapPlan) -> int:
    return 10 if prefill_s < 0.05 else plan.prefill_reps


def _do_bench_calls(call_s: float) -> int:
    """Calls triton's do_bench makes of a call of call_s seconds (bench.time_fn's defaults:
    1 + 5 to estimate, then 25 ms of warm-up and 100 ms of repetitions, at least 1 each)."""
    return 6 + max(1, int(0.025 / call_s)) + max(1, int(0.1 / call_s))


def estimate_point(models: dict, batch: int, context: int, plan: MapPlan) -> dict:
    """The cost model of one map point: prefill_s, the longer of the two models' prefills
    (FLOPs at plan.flops_per_s, Mamba's times plan.mamba_prefill_factor), and seconds, the
    whole point: per model a warm-up and the timed prefills, the decoding calls do_bench
    makes (a step: its floor bytes at ESTIMATE_BYTES_PER_S plus STEP_OVERHEAD_S; 4 more
    steps to capture the graph) and POINT_OVERHEAD_S."""
    prefills, seconds = [], 0.0
    for name, model in models.items():
        prefill = prefill_flops(model, batch, context) / plan.flops_per_s
        prefill *= plan.mamba_prefill_factor if name == "mamba" else 1.0
        step = (decode_step_bytes(model, batch, context).total / ESTIMATE_BYTES_PER_S
                + STEP_OVERHEAD_S)
        calls = _do_bench_calls(plan.decode_steps * step)
        seconds += ((1 + _prefill_reps(prefill, plan)) * prefill
                    + (calls * plan.decode_steps + 4) * step + POINT_OVERHEAD_S)
        prefills.append(prefill)
    return {"prefill_s": max(prefills), "seconds": seconds}


def estimate_plan(models: dict, plan: MapPlan) -> dict:
    """{(batch, context): estimate_point or None if skipped (prefill over max_prefill_s)},
    and "total": START_S plus the points measured (models on the meta device will do)."""
    points = {}
    for batch in plan.batches:
        for context in plan.contexts:
            est = estimate_point(models, batch, context, plan)
            points[(batch, context)] = est if est["prefill_s"] <= plan.max_prefill_s else None
    total = START_S + sum(e["seconds"] for e in points.values() if e)
    return {"points": points, "total": total}


def copy_bandwidth(device, nbytes: int) -> float:
    """Bytes per second of a device-to-device copy of nbytes (read once, written once)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = bench.time_fn(lambda: dst.copy_(src), device, min_run_time=0.05)
    return 2 * nbytes / (ms / 1e3)


def _measure_point(model, batch: int, context: int, plan: MapPlan, device, reps: int):
    """(prefill ms, ms per decoding step, cache bytes) of one model at one point."""
    graph = device.type == "cuda"
    gb = generation_fn(model, batch, context, plan.n_new, cuda_graph=graph)  # one prefill
    prefill_ms = bench.time_calls(gb.prefill, device, reps, min_run_time=plan.min_run_time)

    def decode():  # steps at positions context .. context + decode_steps - 1
        if isinstance(model, TransformerLM):
            gb.cache.pos.fill_(context)
        for _ in range(plan.decode_steps):
            gb.step()

    step_ms = bench.time_fn(decode, device, min_run_time=plan.min_run_time) / plan.decode_steps
    return prefill_ms, step_ms, cache_bytes(gb.cache)


def _point_extra(model, batch: int, context: int, plan: MapPlan, bandwidth: tuple) -> dict:
    """What every record of a point holds, measured or not: sizes, bytes, the floor."""
    floor = decode_step_bytes(model, batch, context)
    return {"params": count_parameters(model), "dtype": str(model.embedding.weight.dtype),
            "new_tokens": plan.n_new,
            # a cache for context + n_new tokens: the KV read by the last step, or the state
            "cache_bytes": decode_step_bytes(model, batch, context + plan.n_new - 1).cache_read,
            "weight_bytes": floor.weights, "floor_bytes": floor.total,
            "floor_ms": floor.seconds(bandwidth[0]) * 1e3,
            "bandwidth_bytes_per_s": bandwidth[0], "bandwidth_source": bandwidth[1]}


def _e2e_ms(prefill_ms: float, step_ms: float, n_new: int) -> float:
    """A prompt then n_new tokens: the prefill yields the first, n_new - 1 steps the rest."""
    return prefill_ms + (n_new - 1) * step_ms


def _ok_extra(extra: dict, batch: int, plan: MapPlan, prefill_ms, step_ms, graph) -> dict:
    e2e_ms = _e2e_ms(prefill_ms, step_ms, plan.n_new)
    return {**extra, "prefill_ms": prefill_ms, "decode_ms_per_token": step_ms,
            "e2e_ms": e2e_ms, "tokens_per_s": batch * plan.n_new / (e2e_ms / 1e3),
            "decode_tokens_per_s": batch / (step_ms / 1e3),
            "floor_ratio": step_ms / extra["floor_ms"], "decode_steps_timed": plan.decode_steps,
            "cuda_graph": graph, "torch_threads": torch.get_num_threads()}


def _free(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def generation_map(models: dict, plan: MapPlan, device=None,
                   suite_name: str = "generation_map") -> list[Record]:
    """Both models over plan.batches x plan.contexts: a prompt of `context` random tokens,
    then plan.n_new greedy tokens, and the decoding steps alone; see the suite's docstring.

    One record per model and point, size {"batch", "context"}; ms: prompt + n_new tokens.
    extra: prefill_ms, decode_ms_per_token, e2e_ms (prefill + (n_new - 1) steps),
    tokens_per_s (new tokens over e2e), decode_tokens_per_s, cache_bytes, floor_bytes and
    floor_ms (decode_step_bytes at the context, at the bandwidth in extra), floor_ratio
    (step / floor), the cost model's estimate, and, when both models ran, the Mamba /
    Transformer ratios of both tokens/s. status "oom" where memory ran out, "skipped" (with
    extra["reason"]) past the prefill or time budget or after an oom at a smaller size.
    Then "<model> (eager)" records at plan.eager: the decoding step without a CUDA graph.
    """
    device = torch.device(device) if device is not None else bench.default_device()
    bandwidth = ((plan.bandwidth, "given") if plan.bandwidth else
                 (copy_bandwidth(device, plan.copy_bytes), "device-to-device copy in this run"))
    started = time.perf_counter()
    records, ooms = [], {name: [] for name in models}
    for batch in plan.batches:
        for context in plan.contexts:
            size = {"batch": batch, "context": context}
            est = estimate_point(models, batch, context, plan)
            spent = time.perf_counter() - started
            reason = None
            if est["prefill_s"] > plan.max_prefill_s:
                reason = (f"over budget: estimated prefill {est['prefill_s']:.1f} s > "
                          f"{plan.max_prefill_s:g} s")
            elif spent + est["seconds"] > plan.budget_s:
                reason = (f"over budget: {spent:.0f} s spent + {est['seconds']:.0f} s "
                          f"estimated > {plan.budget_s:g} s")
            point = []
            for name, model in models.items():
                extra = {**_point_extra(model, batch, context, plan, bandwidth),
                         "estimated_point_s": est["seconds"],
                         "estimated_prefill_s": est["prefill_s"]}
                after = [p for p in ooms[name] if batch >= p[0] and context >= p[1]]
                if reason or after:
                    why = reason or f"after an oom at batch {after[0][0]}, context {after[0][1]}"
                    point.append(Record(suite_name, name, size, status="skipped",
                                        extra={**extra, "reason": why}))
                    continue
                try:
                    reps = _prefill_reps(est["prefill_s"], plan)
                    prefill_ms, step_ms, held = _measure_point(model, batch, context, plan,
                                                               device, reps)
                except Exception as err:  # noqa: BLE001 - an oom is a result, not a failure
                    if not bench.is_oom(err):
                        raise
                    ooms[name].append((batch, context))
                    point.append(Record(suite_name, name, size, status="oom", extra=extra))
                else:
                    extra = _ok_extra({**extra, "cache_bytes": held}, batch, plan, prefill_ms,
                                      step_ms, device.type == "cuda")
                    point.append(Record(suite_name, name, size, extra["e2e_ms"], None,
                                        extra=extra))
                _free(device)
            _add_ratios(point)
            records += point
    return records + _eager_records(models, plan, device, bandwidth, records, suite_name)


def _eager_records(models, plan, device, bandwidth, graphed, suite_name) -> list[Record]:
    """"<model> (eager)" records at plan.eager: one decoding step without a CUDA graph
    (generation.decode_costs), its floor, and graph_speedup over the graphed step."""
    ok = {(r.provider, r.size["batch"], r.size["context"]): r for r in graphed
          if r.status == "ok"}
    records = []
    for batch, context in plan.eager:
        point = []
        for r in decode_costs(models, [context], [batch], device, cuda_graph=False,
                              suite_name=suite_name, min_run_time=plan.min_run_time):
            extra = _point_extra(models[r.provider], batch, context, plan, bandwidth)
            if r.status == "ok":
                extra.update(decode_ms_per_token=r.ms, decode_tokens_per_s=r.extra["tokens_per_s"],
                             floor_ratio=r.ms / extra["floor_ms"], cuda_graph=False)
                g = ok.get((r.provider, batch, context))
                if g is not None:
                    extra["graph_speedup"] = r.ms / g.extra["decode_ms_per_token"]
            point.append(Record(suite_name, r.provider + " (eager)", r.size, r.ms, None,
                                r.status, extra))
        _add_ratios(point)
        records += point
        _free(device)
    return records


def ratio_grid(records: list[Record], key: str = "decode_tokens_per_s"):
    """generation_map's graphed records as the map `plotting.plot_ratio_map` draws: batches,
    contexts, ratio[i][j] = Mamba / Transformer of extra[key] ("decode_tokens_per_s" or
    "tokens_per_s") at (batches[i], contexts[j]), NaN where either model has no measurement,
    and labels[i][j]: "" where both ran, else the statuses ("oom", "skipped", "oom / ok")."""
    cells = {(r.provider, r.size["batch"], r.size["context"]): r for r in records
             if r.provider in ("mamba", "transformer")}
    batches = sorted({b for _, b, _ in cells})
    contexts = sorted({c for _, _, c in cells})
    ratio, labels = [], []
    for b in batches:
        ratio.append([])
        labels.append([])
        for c in contexts:
            m, t = cells.get(("mamba", b, c)), cells.get(("transformer", b, c))
            ran = [r is not None and r.status == "ok" and key in r.extra for r in (m, t)]
            if all(ran):
                ratio[-1].append(m.extra[key] / t.extra[key])
                labels[-1].append("")
            else:
                ratio[-1].append(float("nan"))
                status = [r.status if r is not None else "none" for r in (m, t)]
                labels[-1].append(status[0] if status[0] == status[1] else " / ".join(status))
    return batches, contexts, ratio, labels


def map_answers(records: list[Record], context: int = 2048, prefill_batch: int = 64,
                target: float = 5.0) -> list[str]:
    """generation_map's records as the chapter's answers, one line each: at one context,
    the decoding-only and end-to-end ratios (Mamba / Transformer tokens/s) per batch; both
    prefills at prefill_batch; each model's step against its floor at the largest batch
    measured there; the points where decoding alone reaches `target`; the eager steps."""
    ok = {(r.provider, r.size["batch"], r.size["context"]): r.extra for r in records
          if r.status == "ok"}
    pairs = {b: (ok[("mamba", b, c)], ok[("transformer", b, c)])
             for _, b, c in ok if c == context
             and ("mamba", b, c) in ok and ("transformer", b, c) in ok}
    lines = []
    if pairs:
        n_new = next(iter(pairs.values()))[0]["new_tokens"]
        for key, what in (("decode_tokens_per_s", "decoding only"),
                          ("tokens_per_s", f"prompt + {n_new} new tokens")):
            cells = [f"{m[key] / t[key]:.2f}x at B={b}" for b, (m, t) in sorted(pairs.items())]
            lines.append(f"{what}, context {context}, Mamba / Transformer tokens/s: "
                         + ", ".join(cells))
    if prefill_batch in pairs:
        m, t = pairs[prefill_batch]
        lines.append(f"prefill at B={prefill_batch}, prompt {context}: Mamba "
                     f"{m['prefill_ms']:.0f} ms, Transformer {t['prefill_ms']:.0f} ms "
                     f"({m['prefill_ms'] / t['prefill_ms']:.2f}x)")
    if pairs:
        b = max(pairs)
        m, t = pairs[b]
        lines.append(f"decoding step at B={b}, context {context}: Mamba "
                     f"{m['decode_ms_per_token']:.2f} ms ({m['floor_ratio']:.2f}x its floor), "
                     f"Transformer {t['decode_ms_per_token']:.2f} ms "
                     f"({t['floor_ratio']:.2f}x its floor)")
    batches, contexts, ratio, _ = ratio_grid(records, "decode_tokens_per_s")
    measured = [(b, c, ratio[i][j]) for i, b in enumerate(batches)
                for j, c in enumerate(contexts) if ratio[i][j] == ratio[i][j]]
    if measured:
        hits = [f"B={b} ctx={c}" for b, c, v in measured if v >= target]
        best = max(measured, key=lambda p: p[2])
        lines.append(f"decoding only at least {target:g}x at {len(hits)} of {len(measured)} "
                     f"points measured" + (f" ({', '.join(hits)})" if hits else "")
                     + f"; the largest, {best[2]:.2f}x at B={best[0]} ctx={best[1]}")
    for b, c in sorted({(r.size["batch"], r.size["context"]) for r in records
                        if r.provider.endswith("(eager)")}):
        m, t = ok.get(("mamba (eager)", b, c)), ok.get(("transformer (eager)", b, c))
        if not (m and t):
            continue
        mg, tg = ok.get(("mamba", b, c)), ok.get(("transformer", b, c))
        graphs = bool(mg and tg and mg.get("cuda_graph"))
        lines.append(
            f"eager (no CUDA graph) at B={b}, context {c}: Mamba's step "
            f"{m['decode_ms_per_token']:.2f} ms, Transformer's "
            f"{t['decode_ms_per_token']:.2f} ms, decoding ratio "
            f"{m['mamba_over_transformer_decode_tokens_per_s']:.2f}x"
            + (f" (graphs speed the steps up {m['graph_speedup']:.1f}x and "
               f"{t['graph_speedup']:.1f}x)" if graphs else ""))
        if graphs:  # the paper's setup: Mamba graphed, its Transformer baseline eager
            e2e_t = _e2e_ms(tg["prefill_ms"], t["decode_ms_per_token"], mg["new_tokens"])
            lines.append(
                f"Mamba with CUDA graphs against the Transformer without, at B={b}, "
                f"context {c}: {e2e_t / mg['e2e_ms']:.2f}x end to end, "
                f"{t['decode_ms_per_token'] / mg['decode_ms_per_token']:.2f}x decoding")
    return lines


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


@suite("generation_map")
def run_map(quick: bool, device) -> list[Record]:
    device = torch.device(device)
    plan = MapPlan() if device.type == "cuda" and not quick else CPU_MAP_PLAN
    models = equal_size_models(plan.d_model, plan.n_layer, device)
    with one_cpu_thread(device):
        return generation_map(models, plan, device)


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
