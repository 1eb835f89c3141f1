"""mambabook.kernels: hand-written Triton kernels (chapter 7).

Each kernel family lives in its own file: the @triton.jit kernel, the Python wrapper that
validates inputs and launches it, then the torch.autograd.Function. Every kernel has a
plain-PyTorch `*_ref` twin in mambabook (lib/) that the tests compare against. On a
machine without a GPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1).
"""

import importlib

_EXPORTS = {
    "selective_scan": "selective_scan",
    "selective_state_update": "selective_state_update",
}


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'mambabook.kernels' has no attribute {name!r}")
