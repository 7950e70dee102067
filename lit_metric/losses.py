"""The binomial deviance criterion as an ``nn.Module``: cosine similarity of the embeddings, then the loss."""

from __future__ import annotations

from torch import Tensor, nn

from lit_metric.functional.deviance import (
    binomial_deviance,
    binomial_deviance_of_pairs,
    check_parameters,
    cosine_similarity,
)
from lit_metric.functional.pairs import Pairs
from lit_metric.hparams import RecordsArguments

__all__ = ["BinomialDevianceLoss"]


class BinomialDevianceLoss(RecordsArguments, nn.Module):
    """Binomial deviance loss of Yi et al. 2014, ``sum(W * ln(1 + exp(-alpha * (S - beta) * M)))``.

    ``S`` is the cosine similarity of ``embeddings`` against ``reference_embeddings``; ``M`` and ``W`` come from
    a pair miner (:class:`lit_metric.PairMiner`). The asymmetric negative cost ``C`` lives in ``M`` (``-C`` on
    negative pairs), so it is a setting of the miner, not of the loss.

    Args:
        alpha: scale of the margin ``S - beta``, ``> 0``. The paper uses 2.
        beta: similarity offset that separates positives from negatives. The paper uses 0.5.
    """

    def __init__(self, alpha: float = 2.0, beta: float = 0.5) -> None:
        super().__init__()
        check_parameters(alpha, beta)
        self.alpha = alpha
        self.beta = beta

    def forward(self, embeddings: Tensor, m: Tensor, w: Tensor, reference_embeddings: Tensor | None = None) -> Tensor:
        """Loss of ``(B, D)`` embeddings against ``(R, D)`` references (default: themselves) under ``(B, R)`` M, W."""
        return self.from_similarity(cosine_similarity(embeddings, reference_embeddings), m, w)

    def from_similarity(self, similarity: Tensor, m: Tensor, w: Tensor) -> Tensor:
        """Loss of a ``(B, R)`` similarity matrix that the caller computed, e.g. to mine pairs on it first."""
        return binomial_deviance(similarity, m, w, self.alpha, self.beta)

    def from_pairs(self, similarity: Tensor, pairs: Pairs) -> Tensor:
        """Loss of a ``(B, R)`` similarity matrix under a miner's factored ``M`` and ``W`` (:class:`Pairs`)."""
        return binomial_deviance_of_pairs(similarity, pairs, self.alpha, self.beta)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}"
