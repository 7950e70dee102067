"""Pure functions under the stateful classes: the loss, pair mining, retrieval scoring and the unit rows they share."""

from lit_metric.functional.deviance import binomial_deviance, binomial_deviance_of_pairs, cosine_similarity
from lit_metric.functional.mining import (
    STRATEGIES,
    WEIGHTINGS,
    balanced_weights,
    hard_pairs,
    hardest_negatives,
    mining_statistics,
    pair_counts,
    pair_masks,
    pair_weights,
    per_anchor_weights,
    select_pairs,
    uniform_weights,
)
from lit_metric.functional.knn import cosine_knn
from lit_metric.functional.norms import unit_rows
from lit_metric.functional.pairs import Pairs
from lit_metric.functional.retrieval import (
    RETRIEVAL_METRICS,
    cosine_average_precision,
    hit_rate_at_k,
    map_at_r,
    precision_at_k,
    r_precision,
    retrieval_metrics,
)

__all__ = [
    "Pairs",
    "RETRIEVAL_METRICS",
    "STRATEGIES",
    "WEIGHTINGS",
    "balanced_weights",
    "binomial_deviance",
    "binomial_deviance_of_pairs",
    "cosine_average_precision",
    "cosine_knn",
    "cosine_similarity",
    "hard_pairs",
    "hardest_negatives",
    "hit_rate_at_k",
    "map_at_r",
    "mining_statistics",
    "pair_counts",
    "pair_masks",
    "pair_weights",
    "per_anchor_weights",
    "precision_at_k",
    "r_precision",
    "retrieval_metrics",
    "select_pairs",
    "uniform_weights",
    "unit_rows",
]
