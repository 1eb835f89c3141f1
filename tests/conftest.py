"""Shared test setup: seeds, devices, the one tolerance table, the gpu marker."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

# Tolerances (rtol, atol) per dtype, as in mamba_ssm's own selective-scan tests.
TOL = {
    torch.float64: (1e-7, 1e-9),
    torch.float32: (6e-4, 2e-3),
    torch.float16: (3e-3, 5e-3),
    torch.bfloat16: (3e-2, 5e-2),
}

HAS_CUDA = torch.cuda.is_available()
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# for lib tests that run mambabook.kernels: compiled on a GPU, else in Triton's interpreter
needs_kernels = pytest.mark.skipif(not (HAS_CUDA or INTERPRET),
                                   reason="needs CUDA or the Triton interpreter (TRITON_INTERPRET=1)")


def tol(dtype: torch.dtype) -> dict:
    rtol, atol = TOL[dtype]
    return {"rtol": rtol, "atol": atol}


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture
def device() -> torch.device:
    """CUDA when present, else CPU (the Triton kernels then run in the interpreter)."""
    return torch.device("cuda" if HAS_CUDA else "cpu")
