"""The pair-mining callback: builds the loss's ``M`` and ``W`` for every training batch."""

from __future__ import annotations

from typing import Literal

import lightning as L
from torch import Tensor

from lit_metric.functional.mining import balanced_weights, pair_masks, pair_matrices

__all__ = ["PairMiner"]


class PairMiner(L.Callback):
    """Chooses the pairs of a training batch and their weights.

    :class:`~lit_metric.MetricLearningModule` calls :meth:`mine` on the miner registered as a trainer callback
    (or on a default ``PairMiner()`` when there is none), so mining changes by configuration, not by code.

    Args:
        strategy: which pairs count. ``"all"``: every pair ``i != j``, as in the paper.
        weighting: how counted pairs are weighted. ``"balanced"``: ``1 / n_pos`` on positives and
            ``1 / n_neg`` on negatives, as in the paper.
        negative_cost: the asymmetric cost ``C`` of negative pairs (``M = -C``), 1 in the paper's original form.
    """

    def __init__(
        self,
        strategy: Literal["all"] = "all",
        weighting: Literal["balanced"] = "balanced",
        negative_cost: float = 1.0,
    ) -> None:
        super().__init__()
        if not negative_cost > 0:
            raise ValueError(f"`negative_cost` must be > 0, got {negative_cost}")
        self.strategy = strategy
        self.weighting = weighting
        self.negative_cost = negative_cost

    def mine(
        self, similarity: Tensor, labels: Tensor, reference_labels: Tensor, anchor_index: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(M, W)`` for a batch.

        Args:
            similarity: ``(B, R)`` detached similarities of the anchors against the references.
            labels: ``(B,)`` anchor labels.
            reference_labels: ``(R,)`` reference labels.
            anchor_index: ``(B,)`` position of each anchor among the references, or ``None``.

        Returns:
            ``(m, w)``, two ``(B, R)`` float32 tensors.
        """
        if similarity.shape != (labels.shape[0], reference_labels.shape[0]):
            raise ValueError(
                f"`similarity` must have shape (len(labels), len(reference_labels)) = "
                f"({labels.shape[0]}, {reference_labels.shape[0]}), got {tuple(similarity.shape)}"
            )
        positive, negative = pair_masks(labels, reference_labels, anchor_index)
        weights = balanced_weights(positive, negative, positive.sum(), negative.sum())
        return pair_matrices(positive, negative, weights, self.negative_cost)
