"""mambabook.distributed: the context-parallel scan in 2 and 4 gloo processes against
selective_scan_ref on the whole sequence (outputs and gradients), bad inputs, bytes sent.

Each test spawns its processes once and runs several cases inside (a spawn costs seconds).
"""

import pytest
import torch
import torch.distributed as dist
from helpers import needs_kernels, tol

from mambabook.distributed import (
    ScanCase,
    all_to_all_bytes_per_rank,
    context_parallel_selective_scan,
    join_slices,
    ring_attention_bytes_per_rank,
    run_on_ranks,
    scan_bytes_per_rank,
    scan_case_inputs,
    scan_case_on_rank,
    scan_case_reference,
    split_lengths,
)

TIMEOUT_S = 60  # a collective left waiting fails the test instead of hanging it


def check_against_reference(case: ScanCase, per_rank: list[dict]) -> None:
    """The ranks' slices joined == selective_scan_ref on the whole sequence."""
    got, want = join_slices(case, per_rank), scan_case_reference(case)
    torch.testing.assert_close(got["out"], want["out"], **tol(torch.float32))
    assert got["grads"].keys() == want["grads"].keys()
    for name, g in want["grads"].items():
        torch.testing.assert_close(got["grads"][name], g, **tol(torch.float32),
                                   msg=f"{case}: d{name}")
        assert g.abs().sum() > 0, name


def bad_inputs_on_rank(rank: int, ranks: int) -> list[str]:
    """Each bad call raises on every rank (none waits for the others); returns the errors."""
    x = {k: v[..., 4 * rank:4 * rank + 4] if k in ("u", "delta", "z", "B", "C") else v
         for k, v in scan_case_inputs(ScanCase(lengths=[4] * ranks)).items()}
    errors = []
    bad = [dict(x, delta=x["delta"][..., :3]) if rank == 1 else x,  # one rank's shapes
           dict(x, u=x["u"][:, :3], delta=x["delta"][:, :3], z=x["z"][:, :3],  # D = 3 on
                A=x["A"][:3], D=x["D"][:3], delta_bias=x["delta_bias"][:3])  # the last rank
           if rank == ranks - 1 else x]
    for kw in bad:
        try:
            context_parallel_selective_scan(**kw)
            errors.append("no error")
        except ValueError as err:
            errors.append(str(err))
    return errors


def cases_on_rank(rank: int, ranks: int, cases: list[ScanCase], subgroup=None,
                  sub_case=None) -> dict:
    """The bad inputs first (the group must still work after them), then every case; with
    subgroup, sub_case on a group of some of the ranks only."""
    result = {"errors": bad_inputs_on_rank(rank, ranks),
              "cases": [scan_case_on_rank(rank, ranks, c) for c in cases]}
    if subgroup is not None:
        group = dist.new_group(subgroup)  # every rank takes part in creating it
        if rank in subgroup:
            result["subgroup"] = scan_case_on_rank(subgroup.index(rank), len(subgroup),
                                                   sub_case, group=group)
    return result


def check_errors(errors_per_rank: list[list[str]]) -> None:
    ranks = len(errors_per_rank)
    for rank, (shape_err, dim_err) in enumerate(errors_per_rank):
        if rank == 1:
            assert shape_err.startswith("delta must have shape (B, D, L) = (1, 4, 4)"), shape_err
        else:
            assert "rank(s) [1] raised an error" in shape_err, shape_err
        assert "same B, D and N on every rank" in dim_err, dim_err
        assert f"rank {ranks - 1}: (1, 3, 4)" in dim_err and "rank 0: (1, 4, 4)" in dim_err


def test_context_parallel_scan_two_ranks_equals_reference():
    cases = [ScanCase(lengths=[5, 6]),  # D, z, delta_bias, softplus; uneven slices
             ScanCase(batch=2, lengths=[4, 4], bc="BGNL", extras=(), softplus=False, seed=1),
             ScanCase(lengths=[1, 6], bc="DN", extras=("D",), seed=2),
             ScanCase(batch=2, lengths=[6, 2], extras=("z",), seed=3)]
    per_rank = run_on_ranks(cases_on_rank, 2, cases, timeout_s=TIMEOUT_S)
    check_errors([r["errors"] for r in per_rank])
    for i, case in enumerate(cases):
        check_against_reference(case, [r["cases"][i] for r in per_rank])


@needs_kernels
def test_context_parallel_scan_through_the_kernel():
    """The per-rank scan through mambabook.kernels (its initial state and the gradient
    through its last state): 2 ranks, compiled on a GPU, else in Triton's interpreter."""
    cases = [ScanCase(dim=5, lengths=[7, 9], path="kernel"),
             ScanCase(batch=2, lengths=[6, 3], bc="DN", extras=("z",), seed=6, path="kernel")]
    per_rank = run_on_ranks(cases_on_rank, 2, cases, timeout_s=TIMEOUT_S)
    check_errors([r["errors"] for r in per_rank])
    for i, case in enumerate(cases):
        check_against_reference(case, [r["cases"][i] for r in per_rank])


def test_context_parallel_scan_four_ranks_equals_reference():
    cases = [ScanCase(batch=2, dim=6, d_state=3, lengths=[3, 2, 4, 1], bc="BGNL"),
             ScanCase(lengths=split_lengths(9, 4), extras=("D", "delta_bias"), seed=4)]
    sub, sub_case = [1, 2], ScanCase(lengths=[3, 5], seed=5)  # two ranks in their own group
    per_rank = run_on_ranks(cases_on_rank, 4, cases, sub, sub_case, timeout_s=TIMEOUT_S)
    check_errors([r["errors"] for r in per_rank])
    for i, case in enumerate(cases):
        check_against_reference(case, [r["cases"][i] for r in per_rank])
    check_against_reference(sub_case, [per_rank[r]["subgroup"] for r in sub])


def test_without_a_process_group_raises():
    assert not dist.is_initialized()
    x = scan_case_inputs(ScanCase(lengths=[3]))
    with pytest.raises(ValueError, match="torch.distributed must be initialised"):
        context_parallel_selective_scan(**x)


def test_split_lengths():
    assert split_lengths(10, 4) == [3, 3, 2, 2]
    assert split_lengths(8, 2) == [4, 4]
    with pytest.raises(ValueError, match="L must be at least ranks = 4"):
        split_lengths(3, 4)
    with pytest.raises(ValueError, match="ranks must be a positive int"):
        split_lengths(8, 0)


def test_bytes_per_rank():
    """The scan's bytes do not grow with L; ring attention's and the all-to-all's do, and
    for long sequences they are orders of magnitude more (Mamba-2.8B-like sizes)."""
    scan = scan_bytes_per_rank(ranks=8, batch=1, dim=5120, d_state=16)
    assert scan == 7 * 2 * 5120 * 16 * 4
    assert scan_bytes_per_rank(1, 1, 5120, 16) == 0
    ring = [ring_attention_bytes_per_rank(L, 8, 1, 32, 80) for L in (2**16, 2**20)]
    assert ring[1] == 16 * ring[0] and ring[0] == 7 * 2 * (2**16 / 8) * 32 * 80 * 2
    a2a = [all_to_all_bytes_per_rank(L, 8, 1, 5120, 16) for L in (2**16, 2**20)]
    assert a2a[1] == 16 * a2a[0]
    assert ring[1] > 1000 * scan and a2a[1] > 1000 * scan
