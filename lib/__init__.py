"""mambabook: the library behind "Mamba vs Transformer".

Modules are named after what they compute: rnn, attention, ssm, selective, scan, ssd, models,
tasks, corpus, distributed; `train` is the one training stack, `bench` the one timing
harness; `widgets` are thin views over pure functions; `kernels` holds the Triton kernels.
Submodules are imported lazily so that `import mambabook` stays cheap.
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = {
    "attention", "bench", "checks", "corpus", "distributed", "kernels", "models", "plotting",
    "rnn", "scan", "selective", "ssd", "ssm", "suites", "tasks", "train", "widgets",
}


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'mambabook' has no attribute {name!r}")
