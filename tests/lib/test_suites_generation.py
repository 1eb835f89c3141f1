"""mambabook.suites.generation's generation_map at a tiny plan on tiny models: the records'
fields and arithmetic (e2e, tokens/s, ratios, floors), oom and over-budget points, the
eager steps; the cost model of the paper-scale plan and the suite's registration."""

import pytest
import torch

from mambabook import bench
from mambabook.bench import Record
from mambabook.models import decode_step_bytes
from mambabook.suites.generation import (
    START_S,
    MapPlan,
    equal_size_models,
    estimate_plan,
    estimate_point,
    generation_map,
    map_answers,
    ratio_grid,
)

APPROX = dict(rel=1e-9)


def tiny_plan(models, **kw):
    plan = MapPlan(d_model=16, n_layer=2, batches=(1, 2), contexts=(8, 12, 16), n_new=4,
                   decode_steps=2, eager=((1, 16),), flops_per_s=1e10, budget_s=300.0,
                   copy_bytes=2**20, min_run_time=0.005)
    # the largest point alone over the prefill budget
    plan.max_prefill_s = 0.99 * estimate_point(models, 2, 16, plan)["prefill_s"]
    for k, v in kw.items():
        setattr(plan, k, v)
    return plan


def test_generation_map_records(monkeypatch):
    """A tiny map: (2, 8) runs out of memory for the Transformer (a stand-in prefill that
    raises), so (2, 12) is skipped for it after the oom; (2, 16) is over the prefill
    budget for both. Every measured record's numbers follow from its timings."""
    models = equal_size_models(16, 2, "cpu")
    plan = tiny_plan(models)
    transformer = models["transformer"]
    real_prefill = transformer.prefill

    def prefill(tokens, *args, **kwargs):
        if tokens.shape[0] == 2:
            raise torch.OutOfMemoryError("CUDA out of memory (a stand-in)")
        return real_prefill(tokens, *args, **kwargs)

    monkeypatch.setattr(transformer, "prefill", prefill)
    recs = generation_map(models, plan, "cpu")
    cell = {(r.provider, r.size["batch"], r.size["context"]): r for r in recs}
    assert len(recs) == len(cell) == 2 * 6 + 2
    assert cell[("transformer", 2, 8)].status == "oom"
    assert cell[("transformer", 2, 12)].status == "skipped"
    assert cell[("transformer", 2, 12)].extra["reason"] == "after an oom at batch 2, context 8"
    for name in models:
        assert cell[(name, 2, 16)].status == "skipped"
        assert cell[(name, 2, 16)].extra["reason"].startswith("over budget: estimated prefill")
    ok = [r for r in recs if r.status == "ok"]
    assert {(r.provider, r.size["batch"]) for r in ok} == {
        ("mamba", 1), ("transformer", 1), ("mamba", 2), ("mamba (eager)", 1),
        ("transformer (eager)", 1)}
    for r in recs:
        e, (b, c) = r.extra, (r.size["batch"], r.size["context"])
        model = models[r.provider.split()[0]]
        floor = decode_step_bytes(model, b, c)
        assert e["floor_bytes"] == floor.total and e["weight_bytes"] == floor.weights
        assert e["floor_ms"] == pytest.approx(floor.total / e["bandwidth_bytes_per_s"] * 1e3,
                                              **APPROX)
        assert e["cache_bytes"] == decode_step_bytes(model, b, c + 3).cache_read
        assert e["bandwidth_source"] == "device-to-device copy in this run"
        if r.status != "ok":
            assert r.ms is None and "prefill_ms" not in e
            continue
        step = e["decode_ms_per_token"]
        assert step > 0 and e["decode_tokens_per_s"] == pytest.approx(b / step * 1e3, **APPROX)
        assert e["floor_ratio"] == pytest.approx(step / e["floor_ms"], **APPROX)
        assert e["cuda_graph"] is False
        if r.provider.endswith("(eager)"):
            assert r.ms == step and "tokens_per_s" not in e
            graphed = cell[(r.provider.split()[0], b, c)]
            assert e["graph_speedup"] == pytest.approx(
                step / graphed.extra["decode_ms_per_token"], **APPROX)
            continue
        assert e["prefill_ms"] > 0 and r.ms == e["e2e_ms"]
        assert e["e2e_ms"] == pytest.approx(e["prefill_ms"] + 3 * step, **APPROX)
        assert e["tokens_per_s"] == pytest.approx(b * 4 / e["e2e_ms"] * 1e3, **APPROX)
    # ratios where both models ran, and only there
    for b, c in [(1, 8), (1, 12), (1, 16), (2, 8), (2, 12), (2, 16)]:
        m, t = cell[("mamba", b, c)], cell[("transformer", b, c)]
        both = m.status == t.status == "ok"
        assert both == (b == 1)
        for key in ("tokens_per_s", "decode_tokens_per_s"):
            ratio = f"mamba_over_transformer_{key}"
            assert (ratio in m.extra) == both and (ratio in t.extra) == both
            if both:
                assert m.extra[ratio] == t.extra[ratio] == pytest.approx(
                    m.extra[key] / t.extra[key], **APPROX)
    m, t = cell[("mamba (eager)", 1, 16)], cell[("transformer (eager)", 1, 16)]
    assert m.extra["mamba_over_transformer_decode_tokens_per_s"] == pytest.approx(
        m.extra["decode_tokens_per_s"] / t.extra["decode_tokens_per_s"], **APPROX)
    # the map a chapter draws: ratios where both ran, the statuses elsewhere
    batches, contexts, ratio, labels = ratio_grid(recs, "tokens_per_s")
    assert (batches, contexts) == ([1, 2], [8, 12, 16])
    for j, c in enumerate(contexts):
        m, t = cell[("mamba", 1, c)], cell[("transformer", 1, c)]
        assert ratio[0][j] == pytest.approx(m.extra["tokens_per_s"] / t.extra["tokens_per_s"])
        assert labels[0][j] == ""
    assert all(v != v for v in ratio[1])  # NaN: the Transformer has no measurement there
    assert labels[1] == ["ok / oom", "ok / skipped", "skipped"]


def _map_record(provider, batch, context, step_ms, prefill_ms=None, floor_ms=1.0, **extra):
    """A generation_map record with the fields map_answers reads (tokens/s from the times)."""
    e = {"new_tokens": 128, "decode_ms_per_token": step_ms, "floor_ratio": step_ms / floor_ms,
         "decode_tokens_per_s": batch / step_ms * 1e3, **extra}
    if prefill_ms is not None:
        e.update(prefill_ms=prefill_ms, e2e_ms=prefill_ms + 127 * step_ms,
                 tokens_per_s=batch * 128 / (prefill_ms + 127 * step_ms) * 1e3)
    return Record("generation_map", provider, {"batch": batch, "context": context},
                  e.get("e2e_ms", step_ms), None, extra=e)


def test_map_answers():
    """The chapter's answers from records with known ratios: per batch at the context, the
    prefills, the steps against their floors, the points at 5x, the eager steps."""
    recs = [
        _map_record("mamba", 1, 2048, 2.0, 100.0), _map_record("transformer", 1, 2048, 2.0, 80.0),
        _map_record("mamba", 64, 2048, 2.0, 3000.0, cuda_graph=True),
        _map_record("transformer", 64, 2048, 12.0, 2000.0, floor_ms=8.0),
        _map_record("mamba", 128, 2048, 4.0, 6000.0, floor_ms=2.0),
        _map_record("transformer", 128, 2048, 30.0, 4000.0, floor_ms=15.0),
        _map_record("mamba", 128, 4096, 4.0, 12000.0),
        Record("generation_map", "transformer", {"batch": 128, "context": 4096}, None, None,
               "oom", {}),
        _map_record("mamba (eager)", 64, 2048, 8.0, graph_speedup=4.0,
                    mamba_over_transformer_decode_tokens_per_s=1.5),
        _map_record("transformer (eager)", 64, 2048, 12.0, graph_speedup=1.0,
                    mamba_over_transformer_decode_tokens_per_s=1.5),
    ]
    lines = map_answers(recs)
    assert lines == [
        "decoding only, context 2048, Mamba / Transformer tokens/s: 1.00x at B=1, 6.00x at "
        "B=64, 7.50x at B=128",
        "prompt + 128 new tokens, context 2048, Mamba / Transformer tokens/s: "
        f"{(80 + 254) / (100 + 254):.2f}x at B=1, {(2000 + 127 * 12) / (3000 + 254):.2f}x at "
        f"B=64, {(4000 + 127 * 30) / (6000 + 127 * 4):.2f}x at B=128",
        "prefill at B=64, prompt 2048: Mamba 3000 ms, Transformer 2000 ms (1.50x)",
        "decoding step at B=128, context 2048: Mamba 4.00 ms (2.00x its floor), Transformer "
        "30.00 ms (2.00x its floor)",
        "decoding only at least 5x at 2 of 3 points measured (B=64 ctx=2048, B=128 "
        "ctx=2048); the largest, 7.50x at B=128 ctx=2048",
        "eager (no CUDA graph) at B=64, context 2048: Mamba's step 8.00 ms, Transformer's "
        "12.00 ms, decoding ratio 1.50x (graphs speed the steps up 4.0x and 1.0x)",
        "Mamba with CUDA graphs against the Transformer without, at B=64, context 2048: "
        f"{(2000 + 127 * 12) / (3000 + 254):.2f}x end to end, 6.00x decoding",
    ]
    assert map_answers([]) == []
    recs[2].extra["cuda_graph"] = False  # no graph: no graph speed-up to state
    assert map_answers(recs)[-1].endswith("decoding ratio 1.50x")  # and no graphed line


def test_generation_map_time_budget():
    """Once the run's time budget cannot hold a point, the point is skipped, not run; a
    given bandwidth is used as given."""
    models = equal_size_models(16, 2, "cpu")
    plan = tiny_plan(models, budget_s=0.0, eager=(), bandwidth=1e9)
    recs = generation_map(models, plan, "cpu")
    assert len(recs) == 12 and all(r.status == "skipped" for r in recs)
    assert all(r.extra["reason"].startswith("over budget") for r in recs)
    assert {r.extra["bandwidth_source"] for r in recs} == {"given"}
    assert recs[0].extra["floor_ms"] == pytest.approx(recs[0].extra["floor_bytes"] / 1e6)


def test_paper_scale_plan_fits_its_budget():
    """The cost model of the default plan (models on the meta device): the points kept are
    those under a million prompt tokens, and the whole run fits the time budget."""
    plan = MapPlan()
    models = equal_size_models(plan.d_model, plan.n_layer, "meta", torch.bfloat16)
    est = estimate_plan(models, plan)
    skipped = {p for p, e in est["points"].items() if e is None}
    assert skipped == {(b, c) for b in plan.batches for c in plan.contexts if b * c >= 2**20}
    assert START_S < est["total"] <= 0.8 * plan.budget_s


def test_generation_map_is_a_suite():
    assert "generation_map" in bench.discover_suites()
