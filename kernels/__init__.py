"""mambabook.kernels: hand-written Triton kernels (chapter 7).

Each kernel family lives in its own file: the @triton.jit kernel, the Python wrapper that
validates inputs and launches it, then the torch.autograd.Function. Every kernel has a
plain-PyTorch `*_ref` twin in mambabook (lib/) that the tests compare against. On a
machine without a GPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1).
"""

import importlib
import os

_EXPORTS = {  # function -> the module (file) that defines it
    "selective_scan": "selective_scan_kernel",
    "selective_state_update": "state_update_kernel",
}


def check_runnable(name: str, t) -> None:
    """A Triton kernel needs its tensors on a GPU, or Triton's interpreter on the CPU."""
    if t.device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise ValueError(
            f"{name} is on the CPU: Triton kernels need a CUDA device, or TRITON_INTERPRET=1 "
            "set before triton is imported (then they run, slowly, in Triton's interpreter)")


def __getattr__(name):
    if name in _EXPORTS:
        fn = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = fn  # later lookups skip this hook
        return fn
    raise AttributeError(f"module 'mambabook.kernels' has no attribute {name!r}")
