"""The pairs that count in a batch and their weights: the loss's ``M`` and ``W`` in factored form.

A miner selects two disjoint boolean masks and a weight per kind of pair, so ``M`` and ``W`` follow exactly::

    M = positive - negative_cost * negative
    W = positive * positive_weight + negative * negative_weight

Keeping them factored costs two bytes per pair instead of eight, and the loss builds each block of ``M`` and ``W``
in cache as it walks the rows, so no dense ``(B, R)`` float matrix is ever allocated for them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from lit_metric.functional._blocks import row_blocks
from lit_metric.functional._checks import check_real, describe

__all__ = ["Pairs"]


class Pairs(NamedTuple):
    """Positive and negative pairs of ``B`` anchors against ``R`` references, with their weights.

    Attributes:
        positive: ``(B, R)`` boolean mask of the positive pairs that count.
        negative: ``(B, R)`` boolean mask of the negative pairs that count, disjoint from ``positive``.
        positive_weight: weight of every positive pair, a scalar or a ``(B, 1)`` column per anchor, ``>= 0``.
        negative_weight: weight of every negative pair, a scalar or a ``(B, 1)`` column per anchor, ``>= 0``.
        negative_cost: the asymmetric cost ``C`` of negative pairs (``M = -C`` on them), ``> 0``.
    """

    positive: Tensor
    negative: Tensor
    positive_weight: Tensor
    negative_weight: Tensor
    negative_cost: float = 1.0

    def rows(self, rows: slice, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """``(M, W)`` of the anchors in ``rows``, two ``(len(rows), R)`` tensors of ``dtype``."""
        positive = self.positive[rows].to(dtype)
        negative = self.negative[rows].to(dtype)
        m = torch.sub(positive, negative, alpha=self.negative_cost)
        w = positive.mul_(_rows(self.positive_weight, rows, dtype)).addcmul_(
            negative, _rows(self.negative_weight, rows, dtype)
        )
        return m, w

    def matrices(self, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """The dense ``(M, W)``, two ``(B, R)`` tensors of ``dtype``, e.g. for a criterion that takes them dense."""
        m = torch.empty(self.positive.shape, dtype=dtype, device=self.positive.device)
        w = torch.empty_like(m)
        for rows in row_blocks(m):
            m[rows], w[rows] = self.rows(rows, dtype)
        return m, w

    def check(self, similarity: Tensor) -> None:
        """Raise a ValueError naming the first field that does not describe valid pairs for ``similarity``."""
        shape, device = similarity.shape, similarity.device
        for name in ("positive", "negative"):
            mask = getattr(self, name)
            if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
                raise ValueError(f"`pairs.{name}` must be a boolean tensor, got {describe(mask)}")
            if mask.shape != shape:
                raise ValueError(f"`pairs.{name}` must have the shape of `similarity` {tuple(shape)}, got {tuple(mask.shape)}")
        for name in ("positive_weight", "negative_weight"):
            weight = getattr(self, name)
            if not isinstance(weight, Tensor) or not weight.is_floating_point():
                raise ValueError(f"`pairs.{name}` must be a floating-point tensor, got {describe(weight)}")
            if weight.ndim != 0 and weight.shape != (shape[0], 1):
                raise ValueError(f"`pairs.{name}` must be a scalar or of shape ({shape[0]}, 1), got {tuple(weight.shape)}")
            if weight.requires_grad:
                raise ValueError(f"`pairs.{name}` must not require grad; learned weights go to `binomial_deviance` dense")
            if not bool(torch.isfinite(weight).all()) or bool((weight < 0).any()):
                raise ValueError(f"`pairs.{name}` must be finite and >= 0")
        for name in ("positive", "negative", "positive_weight", "negative_weight"):
            if getattr(self, name).device != device:
                raise ValueError(f"`pairs.{name}` must be on the device of `similarity` ({device}), got {getattr(self, name).device}")
        check_real("pairs.negative_cost", self.negative_cost, positive=True)
        if bool((self.positive & self.negative).any()):
            raise ValueError("`pairs.positive` and `pairs.negative` must be disjoint, found a pair marked as both")


def _rows(weight: Tensor, rows: slice, dtype: torch.dtype) -> Tensor:
    """The rows of a ``(B, 1)`` per-anchor weight, or a scalar weight as it is, in ``dtype``."""
    return (weight[rows] if weight.ndim == 2 else weight).to(dtype)

