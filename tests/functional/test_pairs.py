"""Specification of Pairs, the factored M and W, and of the loss computed on it without dense matrices."""

import itertools

import pytest
import torch

from lit_metric.functional import Pairs, binomial_deviance, binomial_deviance_of_pairs
from lit_metric.functional._blocks import row_blocks


def random_pairs(b=6, r=9, per_anchor=True, negative_cost=2.5, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    kind = torch.randint(-1, 2, (b, r), generator=generator)  # +1 positive, -1 negative, 0 does not count
    shape = (b, 1) if per_anchor else ()
    positive_weight = torch.rand(shape, generator=generator, dtype=dtype)
    negative_weight = torch.rand(shape, generator=generator, dtype=dtype)
    similarity = torch.rand(b, r, generator=generator, dtype=dtype) * 2 - 1
    return similarity, Pairs(kind == 1, kind == -1, positive_weight, negative_weight, negative_cost)


def test_matrices_written_out_by_hand():
    positive = torch.tensor([[False, True, False], [True, False, False]])
    negative = torch.tensor([[False, False, True], [False, False, False]])
    pairs = Pairs(positive, negative, torch.tensor([[0.5], [1.0]]), torch.tensor([[0.25], [0.75]]), negative_cost=10.0)
    m, w = pairs.matrices()
    assert m.tolist() == [[0.0, 1.0, -10.0], [1.0, 0.0, 0.0]]
    assert w.tolist() == [[0.0, 0.5, 0.25], [1.0, 0.0, 0.0]]
    assert m.dtype == w.dtype == torch.float32


@pytest.mark.parametrize("per_anchor", [True, False])
def test_rows_are_the_matching_rows_of_the_matrices(per_anchor):
    _, pairs = random_pairs(b=40, r=7, per_anchor=per_anchor)
    m, w = pairs.matrices(torch.float64)
    for rows in (slice(0, 1), slice(3, 17), slice(39, 40)):
        m_rows, w_rows = pairs.rows(rows, torch.float64)
        torch.testing.assert_close(m_rows, m[rows], rtol=0, atol=0)
        torch.testing.assert_close(w_rows, w[rows], rtol=0, atol=0)


@pytest.mark.parametrize(("per_anchor", "alpha", "beta"), itertools.product([True, False], [2.0, 7.0], [0.5, -0.1]))
def test_loss_and_gradient_equal_the_dense_loss_on_its_matrices(per_anchor, alpha, beta):
    similarity, pairs = random_pairs(per_anchor=per_anchor)
    m, w = pairs.matrices(torch.float64)
    factored = similarity.clone().requires_grad_()
    dense = similarity.clone().requires_grad_()
    loss_factored = binomial_deviance_of_pairs(factored, pairs, alpha, beta)
    loss_dense = binomial_deviance(dense, m, w, alpha, beta)
    torch.testing.assert_close(loss_factored, loss_dense, rtol=1e-12, atol=0)
    loss_factored.backward()
    loss_dense.backward()
    torch.testing.assert_close(factored.grad, dense.grad, rtol=1e-12, atol=0)


def test_gradcheck_in_float64():
    similarity, pairs = random_pairs()
    similarity.requires_grad_()
    assert torch.autograd.gradcheck(lambda s: binomial_deviance_of_pairs(s, pairs), (similarity,))


def test_spans_several_row_blocks():
    # 300 x 2000 similarities walk several cache blocks; the result must not depend on where blocks end.
    similarity, pairs = random_pairs(b=300, r=2000, seed=3, dtype=torch.float32)
    assert len(row_blocks(similarity)) > 1
    similarity = similarity.double().requires_grad_()
    m, w = pairs.matrices(torch.float64)
    torch.testing.assert_close(binomial_deviance_of_pairs(similarity, pairs), binomial_deviance(similarity, m, w))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_similarity_with_a_large_negative_cost_stays_finite(dtype):
    similarity = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=dtype).requires_grad_()
    eye = torch.eye(2, dtype=torch.bool)
    pairs = Pairs(~eye, eye, torch.tensor(1.0), torch.tensor(1.0), negative_cost=25.0)
    loss = binomial_deviance_of_pairs(similarity, pairs)
    loss.backward()
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss) and torch.isfinite(similarity.grad).all()


def valid():
    similarity, pairs = random_pairs(b=3, r=4)
    return similarity, pairs


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("positive", torch.zeros(3, 4), r"`pairs.positive` must be a boolean tensor, got dtype torch.float32"),
        ("negative", torch.zeros(3, 5, dtype=torch.bool), r"`pairs.negative` must have the shape of `similarity`"),
        ("positive_weight", torch.ones(3, 1, dtype=torch.long), r"`pairs.positive_weight` must be a floating-point"),
        ("negative_weight", torch.ones(4, 1), r"`pairs.negative_weight` must be a scalar or of shape \(3, 1\)"),
        ("positive_weight", torch.tensor(float("nan")), r"`pairs.positive_weight` must be finite and >= 0"),
        ("negative_weight", torch.tensor(-1.0), r"`pairs.negative_weight` must be finite and >= 0"),
        ("negative_cost", 0.0, r"`pairs.negative_cost` must be a finite number > 0, got 0.0"),
        ("negative_cost", torch.tensor(2.0), r"`pairs.negative_cost` must be a finite number > 0, got tensor"),
        ("positive_weight", torch.ones(3, 1, requires_grad=True), r"`pairs.positive_weight` must not require grad"),
        ("negative_cost", float("inf"), r"`pairs.negative_cost` must be a finite number > 0, got inf"),
        # The meta device stands in for a second device, which this machine does not have.
        (
            "negative",
            torch.zeros(3, 4, dtype=torch.bool, device="meta"),
            r"`pairs.negative` must be on the device of `similarity` \(cpu\), got meta",
        ),
    ],
)
def test_invalid_pairs_are_value_errors_naming_the_field(field, value, message):
    similarity, pairs = valid()
    with pytest.raises(ValueError, match=message):
        binomial_deviance_of_pairs(similarity, pairs._replace(**{field: value}))


def test_a_pair_both_positive_and_negative_is_a_value_error():
    similarity, pairs = valid()
    with pytest.raises(ValueError, match=r"`pairs.positive` and `pairs.negative` must be disjoint"):
        binomial_deviance_of_pairs(similarity, pairs._replace(negative=pairs.negative | pairs.positive))


def test_dense_matrices_instead_of_pairs_is_a_value_error():
    similarity, pairs = valid()
    with pytest.raises(ValueError, match=r"`pairs` must be a lit_metric.functional.Pairs, got tuple"):
        binomial_deviance_of_pairs(similarity, tuple(pairs.matrices()))


def test_non_finite_similarity_is_a_value_error():
    similarity, pairs = valid()
    similarity[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"`similarity` must be finite"):
        binomial_deviance_of_pairs(similarity, pairs)
