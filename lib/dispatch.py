"""Which implementation runs: a Triton kernel of `mambabook.kernels` or its plain-PyTorch twin.

One rule for every layer (scan, convolution, norm, SSD): path "auto" runs the kernels on CUDA
tensors when Triton imports, "kernel" runs them on any device (a CPU under
TRITON_INTERPRET=1, for tests), "ref" runs the twins. The kernels are imported when asked
for, never by this module's import: kernels/ imports no module that imports it back.
"""

from __future__ import annotations

import importlib

import torch

from .conv import causal_conv1d_ref, causal_conv1d_update_ref
from .norm import add_rms_norm_ref

PATHS = ("auto", "kernel", "ref")


def check_path(path) -> None:
    """ValueError unless path is one of PATHS."""
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")


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


def conv_functions(x: torch.Tensor, path: str = "auto"):
    """(causal_conv1d, causal_conv1d_update) for tensors like x, by the rule above."""
    return kernels_or_twins(x, path, ("causal_conv1d", "causal_conv1d_update"),
                            (causal_conv1d_ref, causal_conv1d_update_ref))


def add_norm_function(x, path: str = "auto"):
    """add_rms_norm for tensors like x, by the rule above."""
    return kernels_or_twins(x, path, ("add_rms_norm",), (add_rms_norm_ref,))[0]
