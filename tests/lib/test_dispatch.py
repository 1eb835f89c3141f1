"""mambabook.dispatch: the one rule that picks a Triton kernel or its twin."""

import pytest
import torch

import mambabook.kernels as kernels
from mambabook.conv import causal_conv1d_ref, causal_conv1d_update_ref
from mambabook.dispatch import kernels_or_twins, wants_kernels

NAMES = ("causal_conv1d", "causal_conv1d_update")
TWINS = (causal_conv1d_ref, causal_conv1d_update_ref)


def test_rule_on_a_cpu_tensor():
    x = torch.zeros(2)
    assert kernels_or_twins(x, "ref", NAMES, TWINS) == TWINS
    assert kernels_or_twins(x, "auto", NAMES, TWINS) == TWINS  # a CPU tensor: the twins
    assert kernels_or_twins(x, "kernel", NAMES, TWINS) == (kernels.causal_conv1d,
                                                           kernels.causal_conv1d_update)
    assert [wants_kernels(x, p) for p in ("auto", "kernel", "ref")] == [False, True, False]


def test_missing_kernel_raises_only_when_asked_for():
    x = torch.zeros(2)
    with pytest.raises(AttributeError):
        kernels_or_twins(x, "kernel", ("no_such_kernel",), (None,))
    assert kernels_or_twins(x, "auto", ("no_such_kernel",), ("twin",)) == ("twin",)
