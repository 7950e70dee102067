"""Pair masks and pair matrices: which pairs of a batch count, and the ``M`` and ``W`` the loss sees."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["pair_masks", "pair_matrices", "balanced_weights"]


def pair_masks(labels: Tensor, reference_labels: Tensor, anchor_index: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Positive and negative pair masks of ``labels`` against ``reference_labels``.

    Args:
        labels: ``(B,)`` integer labels of the anchors.
        reference_labels: ``(R,)`` integer labels of the references.
        anchor_index: ``(B,)`` position of each anchor among the references, so that an anchor never pairs with
            itself; ``None`` when anchors and references are disjoint sets.

    Returns:
        ``(positive, negative)``, two ``(B, R)`` boolean masks.
    """
    _check_labels("labels", labels)
    _check_labels("reference_labels", reference_labels)
    same = labels[:, None] == reference_labels[None, :]
    negative = ~same
    if anchor_index is not None:
        if anchor_index.shape != labels.shape:
            raise ValueError(
                f"`anchor_index` must have the shape of `labels` {tuple(labels.shape)}, got {tuple(anchor_index.shape)}"
            )
        same[torch.arange(labels.shape[0], device=labels.device), anchor_index] = False
    return same, negative


def balanced_weights(positive: Tensor, negative: Tensor, num_positive: Tensor, num_negative: Tensor) -> Tensor:
    """The paper's weights: ``1 / n_pos`` on positive pairs and ``1 / n_neg`` on negative pairs.

    A batch with no positive (or no negative) pair has nothing to weight on that side; the count is clamped to 1
    so that the empty side contributes zero instead of dividing by zero.

    Args:
        positive: ``(B, R)`` boolean mask of the positive pairs that count.
        negative: ``(B, R)`` boolean mask of the negative pairs that count.
        num_positive: scalar count of positive pairs over the whole (global) batch.
        num_negative: scalar count of negative pairs over the whole (global) batch.

    Returns:
        ``(B, R)`` float32 weights.
    """
    return positive / num_positive.clamp_min(1) + negative / num_negative.clamp_min(1)


def pair_matrices(positive: Tensor, negative: Tensor, weights: Tensor, negative_cost: float = 1.0) -> tuple[Tensor, Tensor]:
    """``M`` (``+1`` positive, ``-negative_cost`` negative, ``0`` elsewhere) and ``W`` (zero where ``M`` is).

    Args:
        positive: ``(B, R)`` boolean mask of the positive pairs that count.
        negative: ``(B, R)`` boolean mask of the negative pairs that count.
        weights: ``(B, R)`` non-negative weights of the counted pairs.
        negative_cost: the asymmetric cost ``C`` of negative pairs, ``> 0``.

    Returns:
        ``(m, w)``, two ``(B, R)`` float32 tensors.
    """
    if not negative_cost > 0:
        raise ValueError(f"`negative_cost` must be > 0, got {negative_cost}")
    m = positive.float() - negative_cost * negative.float()
    w = weights.float() * (positive | negative)
    return m, w


def _check_labels(name: str, labels: Tensor) -> None:
    if labels.ndim != 1:
        raise ValueError(f"`{name}` must have shape (N,), got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"`{name}` must be an integer tensor, got dtype {labels.dtype}")
