"""Pair mining as pure tensor functions: which pairs of a batch count and how they are weighted.

Everything works on the rows of one process against the references of the whole (global) batch, with masks and no
loop over anchors. Selection is per row, so a process that holds some of the rows selects exactly the pairs that a
single process holding all rows would, and a caller may equally apply the functions to blocks of rows and add up
the counts and statistics (:class:`lit_metric.PairMiner` does, to stay in cache). Weights that divide by a count
over the whole batch take that count as an argument: the caller sums :func:`pair_counts` over processes first.
The selected masks and weights make a :class:`~lit_metric.functional.pairs.Pairs`, the loss's ``M`` and ``W``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lit_metric.functional._checks import check_choice, check_labels

__all__ = [
    "STRATEGIES",
    "WEIGHTINGS",
    "balanced_weights",
    "check_pair_labels",
    "hard_pairs",
    "hardest_negatives",
    "mining_statistics",
    "pair_counts",
    "pair_masks",
    "pair_weights",
    "per_anchor_weights",
    "select_pairs",
    "uniform_weights",
]

Strategy = Literal["all", "hard", "topk_negatives"]
Weighting = Literal["balanced", "per_anchor", "uniform"]
STRATEGIES: tuple[str, ...] = ("all", "hard", "topk_negatives")
WEIGHTINGS: tuple[str, ...] = ("balanced", "per_anchor", "uniform")


def pair_masks(
    labels: Tensor,
    reference_labels: Tensor,
    anchor_index: Tensor | None = None,
    validate_args: bool = True,
    indexes: Tensor | None = None,
    reference_indexes: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Positive and negative pair masks of ``labels`` against ``reference_labels``.

    Args:
        labels: ``(B,)`` integer labels of the anchors.
        reference_labels: ``(R,)`` integer labels of the references.
        anchor_index: ``(B,)`` position of each anchor among the references, so that an anchor never pairs with
            itself; ``None`` when anchors and references are disjoint sets.
        validate_args: :func:`check_pair_labels` first; a caller that checked the whole batch once passes
            ``False`` for its blocks of rows.
        indexes: ``(B,)`` dataset indexes of the anchors, given with ``reference_indexes``: a reference of the
            anchor's own dataset index, such as its earlier embedding in a cross-batch memory, is never its positive.
        reference_indexes: ``(R,)`` dataset indexes of the references.

    Returns:
        ``(positive, negative)``, two ``(B, R)`` boolean masks.
    """
    if validate_args:
        check_pair_labels(labels, reference_labels, anchor_index, indexes, reference_indexes)
    same = labels[:, None] == reference_labels[None, :]
    negative = ~same
    if anchor_index is not None:
        same[torch.arange(labels.shape[0], device=labels.device), anchor_index] = False
    if indexes is not None:
        same &= indexes[:, None] != reference_indexes[None, :]
    return same, negative


def hard_pairs(similarity: Tensor, positive: Tensor, negative: Tensor, margin: float) -> tuple[Tensor, Tensor]:
    """Multi-similarity-style selection: the pairs that are hard relative to the anchor's hardest pair of the other kind.

    Anchor ``i`` keeps the negatives with ``S_ij > min_positive_i - margin`` and the positives with
    ``S_ij < max_negative_i + margin``. An anchor with no positive keeps no negative, and one with no negative keeps
    no positive: there is nothing to be hard relative to.

    Args:
        similarity: ``(B, R)`` similarities; read without gradient.
        positive: ``(B, R)`` boolean mask of the candidate positive pairs.
        negative: ``(B, R)`` boolean mask of the candidate negative pairs.
        margin: how far past the other kind's hardest pair a pair still counts as hard.

    Returns:
        ``(positive, negative)``, the kept ``(B, R)`` boolean masks.
    """
    similarity = similarity.detach()
    hardest_positive = _masked_extreme(similarity, positive, "min")
    hardest_negative = _masked_extreme(similarity, negative, "max")
    return positive & (similarity < hardest_negative + margin), negative & (similarity > hardest_positive - margin)


def hardest_negatives(similarity: Tensor, negative: Tensor, k: int) -> Tensor:
    """The ``k`` most similar negatives of each anchor (all of them when it has fewer than ``k``).

    Args:
        similarity: ``(B, R)`` similarities; read without gradient.
        negative: ``(B, R)`` boolean mask of the candidate negative pairs.
        k: negatives kept per anchor, ``>= 1``.

    Returns:
        ``(B, R)`` boolean mask of the kept negative pairs.
    """
    k = min(k, similarity.shape[1])
    top = torch.where(negative, similarity, -float("inf")).topk(k, dim=1, sorted=False).indices
    # topk fills rows with fewer than k negatives with non-negatives; the final `&` drops those.
    return torch.zeros_like(negative).scatter_(1, top, True) & negative


def select_pairs(
    similarity: Tensor,
    positive: Tensor,
    negative: Tensor,
    strategy: Strategy = "all",
    margin: float = 0.1,
    negatives_per_anchor: int = 10,
) -> tuple[Tensor, Tensor]:
    """The pairs that ``strategy`` keeps among the candidates.

    ``"all"`` keeps every candidate, ``"hard"`` applies :func:`hard_pairs` with ``margin`` and ``"topk_negatives"``
    keeps every positive and the ``negatives_per_anchor`` hardest negatives (:func:`hardest_negatives`).

    Args:
        similarity: ``(B, R)`` similarities; read without gradient.
        positive: ``(B, R)`` boolean mask of the candidate positive pairs.
        negative: ``(B, R)`` boolean mask of the candidate negative pairs.

    Returns:
        ``(positive, negative)``, the kept ``(B, R)`` boolean masks.
    """
    check_choice("strategy", strategy, STRATEGIES)
    if strategy == "hard":
        return hard_pairs(similarity, positive, negative, margin)
    if strategy == "topk_negatives":
        return positive, hardest_negatives(similarity, negative, negatives_per_anchor)
    return positive, negative


def pair_counts(positive: Tensor, negative: Tensor) -> Tensor:
    """``(3,)`` int64 ``[positive pairs, negative pairs, anchors with at least one pair]`` of these rows.

    Summed over processes, these are the whole-batch counts that :func:`pair_weights` divides by.
    """
    # Row sums in int32 are several times faster than count_nonzero and any(dim=1) on bool masks.
    positive_per_anchor = positive.sum(dim=1, dtype=torch.int32)
    negative_per_anchor = negative.sum(dim=1, dtype=torch.int32)
    has_pair = (positive_per_anchor + negative_per_anchor) > 0
    return torch.stack([positive_per_anchor.sum(dtype=torch.int64), negative_per_anchor.sum(dtype=torch.int64), has_pair.sum()])


def balanced_weights(
    num_positive: Tensor, num_negative: Tensor, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """The paper's weights: ``1 / n_pos`` on every positive pair and ``1 / n_neg`` on every negative pair.

    A batch with no positive (or no negative) pair has nothing to weight on that side; the count is clamped to 1
    so that the weight stays finite and weights nothing.

    Args:
        num_positive: scalar count of positive pairs over the whole (global) batch.
        num_negative: scalar count of negative pairs over the whole (global) batch.
        dtype: floating dtype of the weights.

    Returns:
        ``(positive_weight, negative_weight)``, scalars of ``dtype``.
    """
    return 1.0 / num_positive.clamp_min(1).to(dtype), 1.0 / num_negative.clamp_min(1).to(dtype)


def per_anchor_weights(
    positive: Tensor, negative: Tensor, num_anchors: Tensor, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """Each anchor's positives and negatives averaged separately, then the anchors averaged.

    Anchor ``i`` gives ``1 / n_pos_i`` to each of its positives and ``1 / n_neg_i`` to each of its negatives; both
    are divided by ``num_anchors``, the anchors of the whole batch that have at least one pair. An anchor without
    pairs has nothing to weight and does not count.

    Args:
        positive: ``(B, R)`` boolean mask of the positive pairs that count.
        negative: ``(B, R)`` boolean mask of the negative pairs that count.
        num_anchors: scalar count of anchors with at least one pair over the whole (global) batch.
        dtype: floating dtype of the weights.

    Returns:
        ``(positive_weight, negative_weight)``, ``(B, 1)`` columns of ``dtype``.
    """
    anchors = num_anchors.clamp_min(1).to(dtype)
    # A sum in int32 is much faster than bool.sum(), which widens every element to int64.
    positive_per_anchor = positive.sum(dim=1, keepdim=True, dtype=torch.int32).clamp_min_(1)
    negative_per_anchor = negative.sum(dim=1, keepdim=True, dtype=torch.int32).clamp_min_(1)
    return 1.0 / (positive_per_anchor * anchors), 1.0 / (negative_per_anchor * anchors)


def uniform_weights(num_pairs: Tensor, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """The same weight ``1 / num_pairs`` on every pair that counts: the plain mean over the whole batch's pairs.

    Args:
        num_pairs: scalar count of the pairs that count over the whole (global) batch.
        dtype: floating dtype of the weights.

    Returns:
        ``(positive_weight, negative_weight)``, equal scalars of ``dtype``.
    """
    weight = 1.0 / num_pairs.clamp_min(1).to(dtype)
    return weight, weight


def pair_weights(
    positive: Tensor, negative: Tensor, weighting: Weighting, counts: Tensor, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """The weight of each kept pair under ``weighting``, per kind of pair.

    Args:
        positive: ``(B, R)`` boolean mask of the positive pairs that count.
        negative: ``(B, R)`` boolean mask of the negative pairs that count.
        weighting: ``"balanced"`` (:func:`balanced_weights`), ``"per_anchor"`` (:func:`per_anchor_weights`) or
            ``"uniform"`` (:func:`uniform_weights`).
        counts: ``(3,)`` :func:`pair_counts` of the whole batch, i.e. summed over processes.
        dtype: floating dtype of the weights, e.g. float64 for a float64 loss, whose weights float32 would round.

    Returns:
        ``(positive_weight, negative_weight)``: scalars of ``dtype``, or ``(B, 1)`` columns for ``"per_anchor"``.
    """
    check_choice("weighting", weighting, WEIGHTINGS)
    num_positive, num_negative, num_anchors = counts
    if weighting == "per_anchor":
        return per_anchor_weights(positive, negative, num_anchors, dtype)
    if weighting == "uniform":
        return uniform_weights(num_positive + num_negative, dtype)
    return balanced_weights(num_positive, num_negative, dtype)


def mining_statistics(
    similarity: Tensor, candidate_negative: Tensor, num_candidates: Tensor, positive: Tensor, negative: Tensor
) -> Tensor:
    """Sums from which the miner's logged statistics follow, so that they can be summed over processes first.

    Args:
        similarity: ``(B, R)`` similarities; read without gradient.
        candidate_negative: ``(B, R)`` boolean mask of all negative pairs, before selection.
        num_candidates: scalar count of all pairs, positive and negative, before selection.
        positive: ``(B, R)`` boolean mask of the kept positive pairs.
        negative: ``(B, R)`` boolean mask of the kept negative pairs.

    Returns:
        ``(5,)`` float32 ``[candidate pairs, sum of kept positive similarities, sum of kept negative similarities,
        sum over anchors of the hardest negative similarity, anchors with a negative]``.
    """
    similarity = similarity.detach()
    zero = similarity.new_zeros(())
    hardest = _masked_extreme(similarity, candidate_negative, "max").squeeze(1)
    has_negative = hardest > -float("inf")
    sums = [
        num_candidates,
        torch.where(positive, similarity, zero).sum(dtype=torch.float32),
        torch.where(negative, similarity, zero).sum(dtype=torch.float32),
        hardest[has_negative].sum(dtype=torch.float32),
        torch.count_nonzero(has_negative),
    ]
    return torch.stack([value.float() for value in sums])


def _masked_extreme(similarity: Tensor, mask: Tensor, extreme: Literal["min", "max"]) -> Tensor:
    """``(B, 1)`` row-wise min or max of ``similarity`` over ``mask``; +inf (min) or -inf (max) for empty rows."""
    if extreme == "min":
        return torch.where(mask, similarity, float("inf")).amin(dim=1, keepdim=True)
    return torch.where(mask, similarity, -float("inf")).amax(dim=1, keepdim=True)


def check_pair_labels(
    labels: Tensor,
    reference_labels: Tensor,
    anchor_index: Tensor | None = None,
    indexes: Tensor | None = None,
    reference_indexes: Tensor | None = None,
) -> None:
    """Raise a ValueError naming the argument unless ``labels`` and ``reference_labels`` are 1-D integer tensors,
    ``anchor_index``, if given, is a ``(B,)`` integer tensor of positions among the references that hold the anchors'
    own labels (a wrong position would silently drop a real positive and count the anchor's pair with itself), and
    ``indexes`` and ``reference_indexes`` are both ``None`` or integer tensors of the shapes of the labels."""
    check_labels("labels", labels)
    check_labels("reference_labels", reference_labels)
    if (indexes is None) != (reference_indexes is None):
        raise ValueError("`indexes` and `reference_indexes` must be given together, got only one of them")
    if indexes is not None:
        for name, values, of in (("indexes", indexes, labels), ("reference_indexes", reference_indexes, reference_labels)):
            shape = f"({len(of)},), one per label"
            check_labels(name, values, shape)
            if values.shape != of.shape:
                raise ValueError(f"`{name}` must have shape {shape}, got shape {tuple(values.shape)}")
    if anchor_index is None:
        return
    if anchor_index.shape != labels.shape or anchor_index.is_floating_point() or anchor_index.dtype == torch.bool:
        raise ValueError(
            f"`anchor_index` must be an integer tensor of the shape of `labels` {tuple(labels.shape)}, got "
            f"{anchor_index.dtype} of shape {tuple(anchor_index.shape)}"
        )
    if len(anchor_index) == 0:
        return
    low, high = torch.aminmax(anchor_index)
    if bool(low < 0) or bool(high >= len(reference_labels)):
        raise ValueError(
            f"`anchor_index` must hold positions in [0, {len(reference_labels)}) among the references, got "
            f"[{int(low)}, {int(high)}]"
        )
    if not bool((reference_labels[anchor_index] == labels).all()):
        raise ValueError("`anchor_index` must point each anchor at a reference of its own label, got another label")
