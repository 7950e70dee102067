"""Specification of unit rows: of unit length at every finite magnitude of float32, float16, bfloat16 and float64,
with the exact gradient of ``x / ||x||``, and all-zero rows left at zero without a gradient."""

import doctest

import pytest
import torch

import lit_metric.functional.norms as norms
from lit_metric.functional import unit_rows

# Powers of two from each dtype's smallest subnormal to near its largest value: scaling by them is exact, so the rows
# must come out bitwise as at scale 1. Rows of base() reach 15, so 2**124 puts float32's largest value at 3.2e38.
SCALES = {
    torch.float32: [2.0**-149, 2.0**-100, 2.0**-50, 2.0**64, 2.0**124],  # 1.4e-45, 7.9e-31, 8.9e-16, 1.8e19, 2.1e37
    torch.float16: [2.0**-24, 2.0**12],  # 6e-8 and, times 15, 61440 of 65504
    torch.bfloat16: [2.0**-133, 2.0**-100, 2.0**100, 2.0**123],
    torch.float64: [2.0**-1074, 2.0**-1000, 2.0**1000, 2.0**1019],
}


def base(dtype, rows=6, dim=16):
    """Integers in [-15, 15], exact in every dtype, with row 2 all zero."""
    x = torch.randint(-15, 16, (rows, dim), generator=torch.Generator().manual_seed(0)).to(dtype)
    x[2] = 0
    return x


@pytest.mark.parametrize(("dtype", "scale"), [(dtype, scale) for dtype, scales in SCALES.items() for scale in scales])
def test_rows_from_the_smallest_subnormal_to_the_largest_values_equal_the_rows_at_scale_one(dtype, scale):
    x = base(dtype)
    assert torch.equal(unit_rows(x * scale), unit_rows(x))
    lengths = torch.linalg.vector_norm(unit_rows(x * scale, torch.float64), dim=1)
    expected = torch.ones(len(x), dtype=torch.float64)
    expected[2] = 0
    torch.testing.assert_close(lengths, expected, rtol=0, atol=4 * torch.finfo(dtype).eps)


@pytest.mark.parametrize("scale", [1e-300, 1e-30, 1.0, 1e30, 1e300])
def test_gradcheck_in_float64_at_normal_and_extreme_scales(scale):
    x = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: unit_rows(t * scale), (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_all_zero_rows_stay_zero_and_get_no_gradient(dtype):
    x = base(dtype).requires_grad_()
    out = unit_rows(x)
    (out * torch.arange(out.numel(), dtype=dtype).view_as(out)).sum().backward()
    assert bool((out[2] == 0).all())
    assert bool((x.grad[2] == 0).all())
    assert torch.isfinite(x.grad).all() and bool((x.grad[[0, 1, 3]] != 0).any())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_rows_are_computed_in_float32_and_returned_as_asked(dtype):
    x = torch.randn(4, 64).to(dtype)
    expected = x.double() / torch.linalg.vector_norm(x.double(), dim=1, keepdim=True)
    assert unit_rows(x).dtype == dtype
    # Rounded once, from float32 to the result: no error of half-precision sums.
    torch.testing.assert_close(unit_rows(x, torch.float32).double(), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(unit_rows(x), expected.to(dtype))


def test_the_docstring_example_runs():
    assert doctest.testmod(norms, extraglobs={"torch": torch}).failed == 0
