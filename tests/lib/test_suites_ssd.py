"""mambabook.suites.ssd: the `ssd` suite runs in quick mode (the interpreter) with ok records."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import mambabook.bench as bench  # noqa: E402
from mambabook.suites.ssd import (  # noqa: E402
    QUICK,
    make_ssd_inputs,
    ssd_comparisons,
    ssd_suite,
    ssd_table,
)


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


def test_ssd_comparisons_answers_the_three_questions():
    rec = lambda p, N, L, ns: bench.Record("ssd", p, dict(L=L, N=N, mode="fwd", dtype="bf16"),
                                           1.0, extra=dict(ns_per_token=ns))
    Ls = (2048, 4096, 8192)
    records = ([rec("triton", 64, L, ns) for L, ns in zip(Ls, (3.0, 2.0, 2.0))]
               + [rec("mamba_chunk_scan_combined", 64, L, ns) for L, ns in zip(Ls, (2, 4, 2))]
               + [rec("mamba1_selective_scan", 16, L, 6.0) for L in Ls]
               + [rec("sdpa_causal", 0, L, ns) for L, ns in zip(Ls, (1.0, 2.5, 5.0))]
               + [rec("triton", 128, L, 9.0) for L in Ls])  # slower than SDPA at 8192
    lines = ssd_comparisons(records, "fwd")
    assert lines[0] == "fwd, N=64: triton / mamba_chunk_scan_combined, time: 0.50x to 1.50x"
    assert lines[1] == "fwd, N=64: Mamba-1 scan / SSD, time per token: 2.00x to 3.00x"
    assert lines[2] == "fwd, N=64: faster than causal SDPA from L = 4096"
    assert lines[3] == "fwd, N=128: Mamba-1 scan / SSD, time per token: 0.67x to 0.67x"
    assert lines[4] == "fwd, N=128: slower than causal SDPA at the longest L measured"
    assert len(lines) == 5 and ssd_comparisons(records, "fwd+bwd") == []
    quick = ssd_comparisons(ssd_suite(quick=True, device="cpu"), "fwd")  # no mamba_ssm
    assert len(quick) == 2 and quick[0].startswith("fwd, N=16: Mamba-1 scan / SSD")
    assert "than causal SDPA" in quick[1]
