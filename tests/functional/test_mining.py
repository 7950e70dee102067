"""Pair selection and weighting: hand-worked examples, a plain-loop reference, edge cases and row splits."""

from __future__ import annotations

import itertools

import pytest
import torch

from _mining_reference import loop_pairs
from lit_metric.functional.deviance import binomial_deviance
from lit_metric.functional.mining import (
    mining_statistics,
    pair_counts,
    pair_masks,
    pair_weights,
    select_pairs,
)
from lit_metric.functional.pairs import Pairs

STRATEGIES = ["all", "hard", "topk_negatives"]
WEIGHTINGS = ["balanced", "per_anchor", "uniform"]

# Four samples of two classes; each anchor's pairs under "hard" with margin 0.1 are worked out in the tests.
LABELS = torch.tensor([0, 0, 1, 1])
SIMILARITY = torch.tensor(
    [
        [1.0, 0.8, 0.5, 0.1],
        [0.8, 1.0, 0.9, 0.15],
        [0.5, 0.9, 1.0, 0.3],
        [0.1, 0.15, 0.3, 1.0],
    ]
)


def mine(similarity, labels, reference_labels=None, anchor_index=None, strategy="all", weighting="balanced", **kw):
    """Whole-batch M and W through the functional pipeline, as one process computes them."""
    if reference_labels is None:
        reference_labels, anchor_index = labels, torch.arange(len(labels))
    positive, negative = pair_masks(labels, reference_labels, anchor_index)
    positive, negative = select_pairs(
        similarity, positive, negative, strategy, kw.get("margin", 0.1), kw.get("negatives_per_anchor", 10)
    )
    dtype = torch.promote_types(similarity.dtype, torch.float32)
    weights = pair_weights(positive, negative, weighting, pair_counts(positive, negative), dtype)
    return Pairs(positive, negative, *weights, kw.get("negative_cost", 1.0)).matrices(dtype)


def random_batch(size=24, classes=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(classes, (size,), generator=generator)
    embeddings = torch.nn.functional.normalize(torch.randn(size, 8, generator=generator), dim=1)
    return embeddings @ embeddings.T, labels


# Hand-worked examples on SIMILARITY / LABELS.


def test_all_strategy_keeps_every_pair_but_the_diagonal_with_the_papers_weights():
    m, w = mine(SIMILARITY, LABELS, negative_cost=2.0)
    positive = torch.tensor([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]], dtype=torch.bool)
    negative = LABELS[:, None] != LABELS[None, :]
    torch.testing.assert_close(m, positive.float() - 2.0 * negative.float())
    torch.testing.assert_close(w, positive / 4 + negative / 8)


def test_hard_strategy_keeps_the_hand_worked_pairs():
    # Anchor 0: hardest positive 0.8, no negative above 0.7; hardest negative 0.5, positive 0.8 is not below 0.6.
    # Anchor 1: negative 2 (0.9 > 0.7) and positive 0 (0.8 < 1.0). Anchor 2: negatives 0, 1 (> 0.2), positive 3.
    # Anchor 3: no negative above 0.2, positive 0.3 not below 0.25. Anchors 0 and 3 have no hard pair.
    m, _ = mine(SIMILARITY, LABELS, strategy="hard", margin=0.1, negative_cost=2.0)
    expected = torch.tensor([[0, 0, 0, 0], [1, 0, -2, 0], [-2, -2, 0, 1], [0, 0, 0, 0]], dtype=torch.float)
    torch.testing.assert_close(m, expected)


@pytest.mark.parametrize(
    "weighting, positive_weights, negative_weights",
    [
        # Kept: positives (1,0), (2,3); negatives (1,2), (2,0), (2,1).
        ("balanced", [1 / 2, 1 / 2], [1 / 3, 1 / 3, 1 / 3]),
        # Two anchors with pairs; anchor 1 has one pair of each kind, anchor 2 one positive and two negatives.
        ("per_anchor", [1 / 2, 1 / 2], [1 / 2, 1 / 4, 1 / 4]),
        ("uniform", [1 / 5, 1 / 5], [1 / 5, 1 / 5, 1 / 5]),
    ],
)
def test_hard_strategy_weights_by_hand(weighting, positive_weights, negative_weights):
    _, w = mine(SIMILARITY, LABELS, strategy="hard", weighting=weighting)
    expected = torch.zeros(4, 4)
    expected[[1, 2], [0, 3]] = torch.tensor(positive_weights)
    expected[[1, 2, 2], [2, 0, 1]] = torch.tensor(negative_weights)
    torch.testing.assert_close(w, expected)


def test_topk_negatives_keeps_all_positives_and_the_k_most_similar_negatives():
    m, w = mine(SIMILARITY, LABELS, strategy="topk_negatives", negatives_per_anchor=1, weighting="uniform")
    # Hardest negatives: anchor 0 -> 2 (0.5), 1 -> 2 (0.9), 2 -> 1 (0.9), 3 -> 1 (0.15).
    expected = torch.tensor([[0, 1, -1, 0], [1, 0, -1, 0], [0, -1, 0, 1], [0, -1, 1, 0]], dtype=torch.float)
    torch.testing.assert_close(m, expected)
    torch.testing.assert_close(w, (expected != 0) / 8)


def test_topk_negatives_keeps_all_negatives_when_an_anchor_has_fewer_than_k():
    m, _ = mine(SIMILARITY, LABELS, strategy="topk_negatives", negatives_per_anchor=50)
    all_m, _ = mine(SIMILARITY, LABELS, strategy="all")
    torch.testing.assert_close(m, all_m)


# The vectorised pipeline against the plain loop.


@pytest.mark.parametrize("strategy, weighting", list(itertools.product(STRATEGIES, WEIGHTINGS)))
def test_matches_the_plain_loop_reference_in_float64(strategy, weighting):
    similarity, labels = random_batch()
    similarity = similarity.double()
    m, w = mine(
        similarity, labels, strategy=strategy, weighting=weighting, negative_cost=3.0, margin=0.2, negatives_per_anchor=4
    )
    expected_m, expected_w = loop_pairs(
        similarity, labels.tolist(), labels.tolist(), int.__eq__, strategy, weighting, negative_cost=3.0, margin=0.2, k=4
    )
    torch.testing.assert_close(m, expected_m, rtol=0, atol=0)
    # float64 weights: float32 ones would be off by about 3e-8.
    torch.testing.assert_close(w, expected_w, rtol=1e-15, atol=0)


@pytest.mark.parametrize("strategy, weighting", list(itertools.product(STRATEGIES, WEIGHTINGS)))
def test_rows_mined_apart_with_summed_counts_equal_the_whole_batch(strategy, weighting):
    # What each DDP process does: its rows against the global batch, with counts summed over processes.
    similarity, labels = random_batch(size=30, seed=1)
    whole_m, whole_w = mine(similarity, labels, strategy=strategy, weighting=weighting, negatives_per_anchor=3)
    parts, counts = [], torch.zeros(3, dtype=torch.long)
    for rows in (torch.arange(0, 11), torch.arange(11, 30)):
        positive, negative = pair_masks(labels[rows], labels, rows)
        positive, negative = select_pairs(similarity[rows], positive, negative, strategy, 0.1, 3)
        parts.append((positive, negative))
        counts += pair_counts(positive, negative)
    matrices = [Pairs(p, n, *pair_weights(p, n, weighting, counts)).matrices() for p, n in parts]
    torch.testing.assert_close(torch.cat([m for m, _ in matrices]), whole_m)
    torch.testing.assert_close(torch.cat([w for _, w in matrices]), whole_w)


def test_anchor_index_excludes_each_anchor_from_its_own_global_position():
    labels = torch.tensor([0, 0, 1, 1, 0, 1])
    positive, negative = pair_masks(labels[3:], labels, torch.arange(3, 6))
    assert positive.tolist() == [
        [False, False, True, False, False, True],
        [True, True, False, False, False, False],
        [False, False, True, True, False, False],
    ]
    assert torch.equal(negative, labels[3:, None] != labels[None, :])


@pytest.mark.parametrize("strategy, weighting", list(itertools.product(STRATEGIES, WEIGHTINGS)))
def test_dataset_indexes_keep_an_anchors_earlier_embeddings_from_its_positives(strategy, weighting):
    # 10 anchors (dataset items 5-14) against themselves, then 14 earlier embeddings, five of them the anchors' own.
    indexes = torch.tensor([5, 6, 7, 8, 9, 10, 11, 12, 13, 14] + [7, 20, 5, 21, 22, 12, 23, 24, 9, 25, 26, 27, 28, 6])
    generator = torch.Generator().manual_seed(3)
    labels = torch.randint(4, (30,), generator=generator)[indexes]  # an item's label, now and earlier
    embeddings = torch.nn.functional.normalize(torch.randn(24, 8, generator=generator), dim=1)
    similarity = (embeddings[:10] @ embeddings.T).double()
    positive, negative = pair_masks(labels[:10], labels, torch.arange(10), indexes=indexes[:10], reference_indexes=indexes)
    positive, negative = select_pairs(similarity, positive, negative, strategy, 0.2, 4)
    weights = pair_weights(positive, negative, weighting, pair_counts(positive, negative), torch.float64)
    m, w = Pairs(positive, negative, *weights, 3.0).matrices(torch.float64)
    expected_m, expected_w = loop_pairs(
        similarity, labels[:10].tolist(), labels.tolist(), lambda i, j: indexes[i] == indexes[j], strategy, weighting,
        negative_cost=3.0, margin=0.2, k=4,
    )
    torch.testing.assert_close(m, expected_m, rtol=0, atol=0)
    torch.testing.assert_close(w, expected_w, rtol=1e-15, atol=0)
    # The earlier embeddings of items 7, 5, 12, 9 and 6 share their anchor's label but are no pair of it.
    for anchor, earlier in [(2, 10), (0, 12), (7, 15), (4, 18), (1, 23)]:
        assert labels[anchor] == labels[earlier] and not positive[anchor, earlier] and not negative[anchor, earlier]


def test_indexes_need_reference_indexes_of_one_integer_per_reference():
    with pytest.raises(ValueError, match=r"`indexes` and `reference_indexes` must be given together"):
        pair_masks(LABELS, LABELS, indexes=torch.arange(4))
    with pytest.raises(ValueError, match=r"`reference_indexes` must have shape \(4,\), one per label, got shape \(3,\)"):
        pair_masks(LABELS, LABELS, indexes=torch.arange(4), reference_indexes=torch.arange(3))
    with pytest.raises(ValueError, match=r"`indexes` must be an integer tensor, got dtype torch.float32"):
        pair_masks(LABELS, LABELS, indexes=torch.arange(4.0), reference_indexes=torch.arange(4))


# Edge cases: nothing to mine must give zero weight and a finite, zero loss, never NaN.


@pytest.mark.parametrize("strategy, weighting", list(itertools.product(STRATEGIES, WEIGHTINGS)))
def test_batch_of_one_class_has_no_negative_and_a_finite_loss(strategy, weighting):
    similarity, _ = random_batch(size=6)
    labels = torch.zeros(6, dtype=torch.long)
    m, w = mine(similarity, labels, strategy=strategy, weighting=weighting)
    assert not bool((m < 0).any())
    if strategy == "hard":  # no negative, so no hardest negative for a positive to be measured against
        assert not bool(w.any())
    else:
        assert torch.allclose(w.sum(), torch.tensor(1.0))
    similarity = similarity.clone().requires_grad_()
    binomial_deviance(similarity, m, w).backward()
    assert torch.isfinite(similarity.grad).all()


@pytest.mark.parametrize("strategy, weighting", list(itertools.product(STRATEGIES, WEIGHTINGS)))
def test_all_distinct_labels_have_no_positive_and_a_finite_loss(strategy, weighting):
    similarity, _ = random_batch(size=6)
    labels = torch.arange(6)
    m, w = mine(similarity, labels, strategy=strategy, weighting=weighting)
    assert not bool((m > 0).any())
    if strategy == "hard":
        assert not bool(w.any())
    else:
        assert torch.allclose(w.sum(), torch.tensor(1.0))
    loss = binomial_deviance(similarity, m, w)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_anchors_without_hard_pairs_drop_out_of_the_weights(weighting):
    _, w = mine(SIMILARITY, LABELS, strategy="hard", weighting=weighting)
    assert not bool(w[[0, 3]].any())
    assert bool(w[1].any()) and bool(w[2].any())


def test_hard_mining_with_no_hard_pair_anywhere_gives_zero_weights_and_zero_loss():
    # Positives all at 0.9, negatives all at 0.1: well separated beyond the margin.
    labels = torch.tensor([0, 0, 1, 1])
    similarity = torch.where(labels[:, None] == labels[None, :], 0.9, 0.1)
    m, w = mine(similarity, labels, strategy="hard", weighting="per_anchor", margin=0.2)
    assert not bool(w.any())
    assert binomial_deviance(similarity, m, w).item() == 0.0


# Statistics and errors.


def test_mining_statistics_sums_by_hand():
    positive, negative = pair_masks(LABELS, LABELS, torch.arange(4))
    num_candidates = pair_counts(positive, negative)[:2].sum()
    kept_positive, kept_negative = select_pairs(SIMILARITY, positive, negative, "hard", margin=0.1)
    sums = mining_statistics(SIMILARITY, negative, num_candidates, kept_positive, kept_negative)
    hardest_negatives = 0.5 + 0.9 + 0.9 + 0.15
    expected = torch.tensor([12.0, 0.8 + 0.3, 0.9 + 0.5 + 0.9, hardest_negatives, 4.0])
    torch.testing.assert_close(sums, expected)


def test_pair_counts_by_hand():
    positive, negative = select_pairs(SIMILARITY, *pair_masks(LABELS, LABELS, torch.arange(4)), "hard", margin=0.1)
    assert pair_counts(positive, negative).tolist() == [2, 3, 2]


def test_unknown_strategy_is_a_value_error():
    positive, negative = pair_masks(LABELS, LABELS, torch.arange(4))
    with pytest.raises(ValueError, match=r"`strategy` must be one of 'all', 'hard', 'topk_negatives', got 'hardest'"):
        select_pairs(SIMILARITY, positive, negative, "hardest")


def test_unknown_weighting_is_a_value_error():
    positive, negative = pair_masks(LABELS, LABELS, torch.arange(4))
    with pytest.raises(ValueError, match=r"`weighting` must be one of 'balanced', 'per_anchor', 'uniform', got 'mean'"):
        pair_weights(positive, negative, "mean", pair_counts(positive, negative))


@pytest.mark.parametrize(
    ("anchor_index", "message"),
    [
        (torch.arange(3), r"`anchor_index` must be an integer tensor of the shape of `labels` \(4,\), got torch.int64 of"),
        (torch.arange(4.0), r"`anchor_index` must be an integer tensor .* got torch.float32 of shape \(4,\)"),
        (torch.tensor([-4, 1, 2, 3]), r"`anchor_index` must hold positions in \[0, 4\) among the references, got \[-4, 3\]"),
        (torch.tensor([0, 1, 2, 4]), r"`anchor_index` must hold positions in \[0, 4\) among the references, got \[0, 4\]"),
        (torch.tensor([1, 2, 0, 3]), "`anchor_index` must point each anchor at a reference of its own label"),
    ],
)
def test_anchor_index_must_point_each_anchor_at_itself_among_the_references(anchor_index, message):
    # A wrong position would drop a real positive and keep the anchor's pair with itself, silently.
    with pytest.raises(ValueError, match=message):
        pair_masks(LABELS, LABELS, anchor_index)


def test_float_labels_are_a_value_error():
    with pytest.raises(ValueError, match=r"`labels` must be an integer tensor, got dtype torch.float32"):
        pair_masks(LABELS.float(), LABELS)
