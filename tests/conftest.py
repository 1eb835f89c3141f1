"""Shared test setup: seeds, the device fixture, the gpu marker (the shared helpers are in
helpers.py)."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from helpers import HAS_CUDA
from hypothesis import settings

# Property tests draw the same examples on every run (CI stays reproducible); a run with
# HYPOTHESIS_PROFILE=explore draws new ones.
settings.register_profile("book", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "book"))


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
