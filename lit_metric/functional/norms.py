"""Rows scaled to unit length at any finite magnitude: the one normalisation of the loss, the metrics and the search."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["unit_rows"]


def unit_rows(x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """``(N, D)`` rows of ``x`` scaled to unit length, differentiably.

    Each row is divided by its largest magnitude before its norm is taken, so the norm lies in ``[1, sqrt(D)]``
    and neither overflows nor underflows: rows of any finite magnitude, from the smallest subnormal to the largest
    finite value of their dtype, come out of unit length. (In float32 a plain ``x / ||x||`` loses rows from about
    1e19 on, where the squared norm overflows, and below about 1e-22, where it underflows; ``F.normalize`` leaves
    rows of norm below its ``eps``, 1e-12, shorter than 1.) An all-zero row stays zero and gets no gradient, where
    ``F.normalize`` would give it ``1 / eps``, e.g. from an embedding head that ends in a ReLU.

    The gradient is the exact one of ``x / ||x||``: the upstream gradient's component orthogonal to the row, divided
    by the row's norm. It is finite wherever that quotient is representable in ``x``'s dtype; in float16 it overflows
    where it exceeds 65504, e.g. for an upstream gradient of 1 on a row of norm below 1.5e-5.

    Args:
        x: ``(N, D)`` finite floating tensor.
        dtype: dtype of the result; defaults to ``x``'s. The rows are computed in float32 at least whatever it is.

    Returns:
        ``(N, D)`` rows of unit length, or zero.

    Example:
        >>> unit_rows(torch.tensor([[3e-30, 4e-30], [0.0, 0.0], [3e38, -3e38]]))
        tensor([[ 0.6000,  0.8000],
                [ 0.0000,  0.0000],
                [ 0.7071, -0.7071]])
    """
    dtype = dtype or x.dtype
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    # Detached: the result does not depend on the divisor, so its gradient is exact with the divisor held fixed. An
    # all-zero row is divided by inf, which keeps it zero and gives it a zero gradient without a 0 / 0 anywhere.
    largest = x.detach().abs().amax(dim=1, keepdim=True)
    scaled = x / torch.where(largest > 0, largest, float("inf"))
    # Every nonzero scaled row holds a +-1, so its norm is at least 1; the floor only turns a zero row's 0 into 1.
    unit = scaled / torch.linalg.vector_norm(scaled, dim=1, keepdim=True).clamp_min(1.0)
    return unit.to(dtype)
