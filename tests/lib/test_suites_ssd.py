"""mambabook.suites.ssd: the `ssd` suite runs in quick mode (the interpreter) with ok records."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import mambabook.bench as bench  # noqa: E402
from mambabook.suites.ssd import QUICK, make_ssd_inputs, ssd_suite, ssd_table  # noqa: E402


def test_ssd_suite_quick_records_every_provider_ok():
    torch.manual_seed(0)
    assert bench.discover_suites()["ssd"] is ssd_suite
    records = ssd_suite(quick=True, device="cpu")
    providers = {"triton", "ssd_chunked_torch", "mamba1_selective_scan", "sdpa_causal"}
    assert {r.provider for r in records} == providers
    for name in providers:
        Ls, ms = bench.select(records, name, "L")
        assert Ls == QUICK["lengths"] and all(t > 0 for t in ms), name
    for r in records:
        assert r.status == "ok" and r.size["mode"] == "fwd"
        want = r.ms * 1e6 / (QUICK["shape"]["B"] * r.size["L"])
        assert abs(r.extra["ns_per_token"] - want) <= 1e-9 * want
        assert r.extra["width"] == QUICK["shape"]["H"] * QUICK["shape"]["P"]


def test_make_ssd_inputs_shapes_and_ranges():
    torch.manual_seed(0)
    x = make_ssd_inputs(2, 8, 3, 4, 1, 5, torch.bfloat16, "cpu", requires_grad=True)
    assert x["x"].shape == x["z"].shape == (2, 8, 3, 4) and x["x"].dtype == torch.bfloat16
    assert x["dt"].shape == (2, 8, 3) and x["B"].shape == x["C"].shape == (2, 8, 1, 5)
    assert x["A"].dtype == torch.float32 and bool((x["A"] < 0).all())
    assert all(v.requires_grad for v in x.values())


def test_ssd_table_has_a_row_per_provider_and_state_size():
    rec = lambda p, N, L, ns: bench.Record("ssd", p, dict(L=L, N=N, mode="fwd", dtype="bf16"),
                                           1.0, extra=dict(ns_per_token=ns))
    records = [rec("triton", 64, 2048, 3.0), rec("triton", 64, 4096, 2.0),
               rec("mamba_chunk_scan_combined", 64, 2048, 2.0),
               rec("mamba_chunk_scan_combined", 64, 4096, 4.0),
               rec("sdpa_causal", 0, 2048, 1.0)]
    lines = ssd_table(records, "fwd").splitlines()
    assert lines[0].split()[-2:] == ["2048", "4096"]
    assert [ln.split()[0] for ln in lines[1:4]] == ["triton", "mamba_chunk_scan_combined",
                                                   "sdpa_causal"]
    assert lines[3].split()[-1] == "-"  # no SDPA record at 4096
    assert lines[4].split()[-2:] == ["1.50", "0.50"]  # triton / mamba_ssm
    assert ssd_table(records, "fwd+bwd").splitlines()[1:] == []
