"""Pure functions under the stateful classes: the loss, pair mining and retrieval scoring."""

from lit_metric.functional.deviance import binomial_deviance, cosine_similarity

__all__ = ["binomial_deviance", "cosine_similarity"]
