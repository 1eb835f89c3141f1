"""mambabook.bench: timing, memory, sweeps with OOM, results with provenance, suites."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch

import mambabook.bench as bench
from mambabook.suites.memory import DecoderShape, measure_generation_memory


def test_time_fn_measures_milliseconds():
    t_sleep = bench.time_fn(lambda: time.sleep(0.005), "cpu", min_run_time=0.05)
    t_noop = bench.time_fn(lambda: None, "cpu", min_run_time=0.05)
    assert t_sleep >= 5.0  # a 5 ms sleep never takes less
    assert 0 < t_noop < t_sleep



def test_time_calls_measures_milliseconds():
    ms = bench.time_calls(lambda: time.sleep(0.01), "cpu", calls=2, min_run_time=0.05)
    assert 9 < ms < 40

def test_peak_memory_counts_live_tensors():
    n = 1 << 16

    def two_buffers():
        a = torch.ones(n)  # 4n bytes
        b = a * 2  # 4n bytes, both alive
        return b.sum()

    def one_at_a_time():
        for _ in range(3):
            a = torch.ones(n)
            del a
        return None

    assert bench.peak_memory(two_buffers, "cpu") >= 8 * n
    assert 4 * n <= bench.peak_memory(one_at_a_time, "cpu") < 8 * n


def test_sweep_records_oom_and_goes_on():
    def make_ok(L):
        x = torch.randn(L)
        return lambda: x * 2

    def make_oom(L):
        if L >= 64:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return make_ok(L)

    recs = bench.sweep("t", {"ok": make_ok, "oom": make_oom}, [{"L": 16}, {"L": 64}, {"L": 256}],
                       device="cpu", min_run_time=0.01)
    status = {(r.provider, r.size["L"]): r.status for r in recs}
    assert status[("ok", 256)] == "ok"
    assert status[("oom", 16)] == "ok"
    assert status[("oom", 64)] == "oom"
    assert status[("oom", 256)] == "skipped"


def test_sweep_reraises_real_errors():
    def broken(L):
        raise ValueError("not an oom")

    with pytest.raises(ValueError, match="not an oom"):
        bench.sweep("t", {"broken": broken}, [{"L": 1}], device="cpu")


def test_save_load_roundtrip_with_provenance(tmp_path):
    recs = [bench.Record("t", "p", {"L": 8}, 1.5, 100), bench.Record("t", "p", {"L": 16}, status="oom")]
    path = bench.save(recs, "t", path=tmp_path / "t.json", command="cmd")
    payload = json.loads(path.read_text())
    for key in ("device", "torch", "date", "commit", "python"):
        assert key in payload["provenance"]
    assert payload["command"] == "cmd"
    assert payload["records"][1]["status"] == "oom"


def test_loglog_slope_recovers_exponent():
    xs = [2.0**i for i in range(1, 8)]
    assert bench.loglog_slope(xs, [3 * x**2 for x in xs]) == pytest.approx(2.0)
    assert bench.loglog_slope(xs, [5.0 for _ in xs]) == pytest.approx(0.0)
    assert math.isnan(bench.loglog_slope([1.0], [1.0]))


def test_device_slug():
    assert bench.device_slug("cpu") == "cpu"


def test_suites_are_registered_and_cli_lists_them(capsys):
    suites = bench.discover_suites()
    assert "generation_memory" in suites
    assert bench.main(["--list"]) == 0
    assert "generation_memory" in capsys.readouterr().out


def test_run_suite_rejects_unknown_name():
    with pytest.raises(ValueError, match="suite must be one of"):
        bench.run_suite("no-such-suite", write=False)


def test_generation_memory_kv_grows_state_fixed():
    """The suite measures the book's models: the TransformerLM's KV cache and the MambaLM's
    state, with the sizes their configs say."""
    shape = DecoderShape(d_model=64, n_layer=4)
    recs = measure_generation_memory([32, 64, 128], shape, "cpu", min_run_time=0.01)
    kv = {r.size["L"]: r.peak_bytes for r in recs if r.provider.startswith("attention")}
    st = {r.size["L"]: r.peak_bytes for r in recs if r.provider.startswith("mamba")}
    # KV cache: 2 layers * (k, v) * (L + 1 slots) * d_model floats; the state does not depend on L
    assert kv == {L: 2 * 2 * (L + 1) * 64 * 4 for L in (32, 64, 128)}
    D, N, K = 2 * 64, shape.d_state, 4
    assert st == {L: 4 * (D * (K - 1) + D * N) * 4 for L in (32, 64, 128)}
    assert all(r.ms > 0 for r in recs)


def test_selective_scan_comparison_table_reads_ratios_and_floor():
    from mambabook.suites import selective_scan as scan_suite

    def rec(provider, L, ms):
        return bench.Record("selective_scan", provider, dict(L=L, dtype="bf16", mode="fwd"),
                            ms, extra={"floor_floor_ms": 0.5})
    records = [rec("triton", 4096, 1.0), rec("mamba_ssm_cuda", 4096, 2.0),
               rec("sdpa_causal_bf16", 4096, 0.8), rec("triton", 8192, 2.0),
               rec("previous", 4096, 9.0)]
    lines = scan_suite.comparison_table(records, "fwd", "bf16").splitlines()
    assert "previous" not in "\n".join(lines)
    assert lines[4] == "| 4096 | 1.000 | 2.000 | 0.800 | 2.00x | 50% |"
    assert lines[5] == "| 8192 | 2.000 |  |  | nanx | 25% |"
