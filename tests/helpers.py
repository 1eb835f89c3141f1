"""What the tests share besides fixtures: the one tolerance table, the device flags, and a
compile for sm_90 that needs no GPU. A module of its own, not conftest.py: tests/browser has
a conftest of its own, and two modules named conftest cannot both be imported by name when
the whole of tests/ is collected in one run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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


_SM90_COMPILE = """
import json, sys, importlib
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

for spec in sys.argv[1:]:
    const = json.loads(spec)
    kernel = getattr(importlib.import_module(const.pop("_module")), const.pop("_kernel"))
    half = set(const.pop("_bf16", ()))  # pointers to bfloat16
    types = const.pop("_types", {})  # any other argument's type, e.g. "*i64" or "fp32"
    opts = dict(num_warps=const.pop("_num_warps", 1), maxnreg=const.pop("_maxnreg", None))
    names = kernel.arg_names
    sig = {n: "constexpr" if n in const else types.get(n) or (
           ("*bf16" if n in half else "*fp32") if n.endswith("_ptr") else "i32")
           for n in names}
    src = ASTSource(fn=kernel, signature=sig,
                    constexprs={(names.index(k),): v for k, v in const.items()})
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                              options={k: v for k, v in opts.items() if v is not None})
    assert kernel.__name__ in compiled.asm["ptx"], spec
    print("compiled")
"""


def compile_for_sm90(specs: list[dict]) -> None:
    """Compile kernels for an H100/H200 (sm_90) on this machine, GPU or not, in a process
    without the interpreter (which does not see what only the compiler rejects). A spec is
    the kernel's constexprs (None for an absent pointer) plus _module, _kernel and optional
    _bf16 (pointer names), _types (argument name -> Triton type, for the arguments that are
    neither float pointers nor i32), _num_warps, _maxnreg; fails with the compiler's message."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", _SM90_COMPILE, *map(json.dumps, specs)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["compiled"] * len(specs)
