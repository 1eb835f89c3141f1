"""Which implementation runs: a Triton kernel of `mambabook.kernels` or its plain-PyTorch twin.

One rule for every layer (scan, convolution, norm, SSD): path "auto" runs the kernels on CUDA
tensors when Triton imports, "kernel" runs them on any device (a CPU under
TRITON_INTERPRET=1, for tests), "ref" runs the twins.
"""

from __future__ import annotations

import importlib

import torch

PATHS = ("auto", "kernel", "ref")


def wants_kernels(x: torch.Tensor, path: str) -> bool:
    """Whether `path` asks for the kernels for tensors like x."""
    return path == "kernel" or (path == "auto" and x.is_cuda)


def kernels_or_twins(x: torch.Tensor, path: str, names: tuple[str, ...], twins: tuple):
    """The functions `names` of mambabook.kernels, or `twins` (the same order), by the rule
    above; "auto" falls back to the twins when the kernels do not import."""
    if wants_kernels(x, path):
        try:
            kernels = importlib.import_module("mambabook.kernels")
            return tuple(getattr(kernels, name) for name in names)
        except (ImportError, AttributeError):
            if path == "kernel":
                raise
    return twins
