"""mambabook.checks: errors name the argument, the expected shape and the shape given."""

import pytest
import torch

from mambabook.checks import check_positive_int, check_same_device, check_tensor


def test_check_tensor_accepts_and_returns():
    x = torch.zeros(2, 3, 4)
    assert check_tensor("u", x, 3, shape=(2, None, 4), dims="(B, D, L)") is x


@pytest.mark.parametrize(
    "x, kwargs, err, pattern",
    [
        ([1.0], dict(ndim=1), TypeError, r"u must be a torch.Tensor of shape \(B, D, L\), got list"),
        (torch.zeros(2, 3), dict(ndim=3), ValueError, r"u must have shape \(B, D, L\), got shape \(2, 3\)"),
        (torch.zeros(2, 3, 4, dtype=torch.int64), dict(ndim=3), TypeError, r"u must have a floating dtype"),
        (torch.zeros(2, 3, 5), dict(ndim=3, shape=(2, 3, 4)), ValueError,
         r"u must have shape \(B, D, L\) = \(2, 3, 4\), got shape \(2, 3, 5\)"),
    ],
)
def test_check_tensor_errors_name_argument_and_shapes(x, kwargs, err, pattern):
    with pytest.raises(err, match=pattern):
        check_tensor("u", x, dims="(B, D, L)", **kwargs)


def test_check_same_device_and_positive_int():
    a = torch.zeros(1)
    assert check_same_device(a=a, b=None, c=torch.ones(2)) == a.device
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="one device"):
            check_same_device(a=a, b=a.cuda())
    with pytest.raises(ValueError, match="n must be a positive int"):
        check_positive_int("n", 0)
    with pytest.raises(ValueError, match="n must be a positive int"):
        check_positive_int("n", True)
    assert check_positive_int("n", 3) == 3
