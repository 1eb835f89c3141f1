"""mambabook.floors: the floors of a generation step from shapes and specification sheets."""

import pytest

from mambabook.floors import (
    GPUS,
    PAPER_SIZES,
    floor_maps,
    floor_seconds,
    floor_times,
    paper_pair,
    prefill_flops,
    where_level,
)
from mambabook.models import count_parameters, decode_step_bytes

BATCHES, CONTEXTS = [1, 64, 256], [512, 2048, 16384]


@pytest.fixture(scope="module")
def pair():
    return paper_pair(*PAPER_SIZES["1.4B"])


def test_paper_pair_is_equal_in_size_on_the_meta_device(pair):
    m, t = (count_parameters(pair[k]) for k in ("mamba", "transformer"))
    assert abs(t - m) / m < 1e-3
    assert pair["mamba"].embedding.weight.is_meta


def test_floor_seconds_are_bytes_over_bandwidth_and_flops_over_the_matmul_rate():
    gpu = GPUS["H200"]
    step, prompt, total = floor_seconds(4.8e9, 989e12, gpu, matmul_share=0.5, n_new=3)
    assert step == pytest.approx(1e-3) and prompt == pytest.approx(2.0)
    assert total == pytest.approx(prompt + 2 * step)


def test_floor_times_count_the_models_bytes_and_flops(pair):
    t = pair["transformer"]
    step, prompt, _ = floor_times(t, 8, 1024, GPUS["A100 80GB"])
    assert step * 2.0e12 == pytest.approx(decode_step_bytes(t, 8, 1024).total)
    assert prompt * 0.5 * 312e12 == pytest.approx(prefill_flops(t, 8, 1024))
    # attention's L^2 term: the Transformer's prompt costs more than its parameters say
    assert prefill_flops(t, 1, 4096) > 2 * count_parameters(t) * 4096


def test_floor_maps_ratios(pair):
    maps = floor_maps(pair, GPUS, BATCHES, CONTEXTS)
    decode, e2e, too_big = maps["H200"]
    assert len(decode) == len(BATCHES) and len(decode[0]) == len(CONTEXTS)
    # at batch 1 the weights dominate both steps: close to the ratio of the weights
    assert 0.9 < decode[0][0] < 1.5
    # the decoding ratio grows with the context at a large batch; end to end stays lower
    assert decode[1][0] < decode[1][1] < decode[1][2]
    assert all(e <= d for de, ee in zip(decode, e2e) for d, e in zip(de, ee))
    # the same bytes over the same bandwidth on every GPU: the decoding map is shared
    for row_a100, row in zip(maps["A100 80GB"][0], decode):
        assert row_a100 == pytest.approx(row)
    # 256 x 16K tokens of KV cache do not fit in 141 GB; batch 1 at 512 does
    assert too_big[2][2] and not too_big[0][0]


def test_where_level_names_the_first_batch_at_the_context(pair):
    decode, _, too_big = floor_maps(pair, {"H200": GPUS["H200"]}, BATCHES, CONTEXTS)["H200"]
    top, where = where_level(decode, too_big, BATCHES, CONTEXTS)
    assert where == "5x from B = 64 at 2K"
    assert top == max(r for row, big in zip(decode, too_big)
                      for r, b in zip(row, big) if not b)
    assert where_level([[1.0]], [[False]], [1], [512])[1] == "5x nowhere"
