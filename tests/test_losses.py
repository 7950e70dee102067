"""Specification of BinomialDevianceLoss, the module form of the criterion."""

import pytest
import torch

from lit_metric import BinomialDevianceLoss, ConvEmbedder
from lit_metric.functional import Pairs, binomial_deviance, cosine_similarity


def paper_pairs(labels):
    """M and W of the paper for one batch: all pairs i != j, 1/n_pos and 1/n_neg."""
    same = labels[:, None] == labels[None, :]
    positive = same & ~torch.eye(len(labels), dtype=torch.bool)
    negative = ~same
    m = positive.double() - negative.double()
    w = positive.double() / positive.sum() + negative.double() / negative.sum()
    return m, w


def test_from_pairs_is_the_dense_loss_on_the_pairs_matrices():
    labels = torch.tensor([0, 0, 1, 1, 2])
    same = labels[:, None] == labels[None, :]
    pairs = Pairs(same & ~torch.eye(5, dtype=torch.bool), ~same, torch.tensor([[0.5]] * 5), torch.tensor(0.1), 4.0)
    similarity = cosine_similarity(torch.randn(5, 3, dtype=torch.float64))
    criterion = BinomialDevianceLoss(alpha=3.0, beta=0.2)
    expected = criterion.from_similarity(similarity, *pairs.matrices(torch.float64))
    torch.testing.assert_close(criterion.from_pairs(similarity, pairs), expected)


def test_defaults_are_the_papers():
    loss = BinomialDevianceLoss()
    assert (loss.alpha, loss.beta) == (2.0, 0.5)


def test_forward_is_the_functional_on_cosine_similarity():
    embeddings = torch.randn(8, 5, dtype=torch.float64)
    references = torch.randn(6, 5, dtype=torch.float64)
    m, w = torch.randn(8, 6, dtype=torch.float64), torch.rand(8, 6, dtype=torch.float64)
    criterion = BinomialDevianceLoss(alpha=3.0, beta=0.2)
    expected = binomial_deviance(cosine_similarity(embeddings, references), m, w, 3.0, 0.2)
    torch.testing.assert_close(criterion(embeddings, m, w, references), expected)


def test_reference_embeddings_default_to_the_embeddings():
    embeddings = torch.randn(8, 5, dtype=torch.float64)
    m, w = paper_pairs(torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    criterion = BinomialDevianceLoss()
    torch.testing.assert_close(criterion(embeddings, m, w), criterion(embeddings, m, w, embeddings.clone()))


def test_every_parameter_of_a_real_network_gets_a_gradient():
    torch.manual_seed(0)
    network = ConvEmbedder(in_channels=1, embedding_dim=16, channels=(8, 16))
    images = torch.rand(12, 1, 8, 8)
    m, w = paper_pairs(torch.arange(6).repeat(2))
    BinomialDevianceLoss()(network(images), m.float(), w.float()).backward()
    for name, parameter in network.named_parameters():
        assert parameter.grad is not None, name
        assert parameter.grad.abs().sum() > 0, name


def test_one_optimizer_step_lowers_the_loss():
    torch.manual_seed(0)
    network = ConvEmbedder(in_channels=1, embedding_dim=16, channels=(8, 16))
    images = torch.rand(12, 1, 8, 8)
    m, w = paper_pairs(torch.arange(6).repeat(2))
    criterion = BinomialDevianceLoss()
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    network.eval()  # fixed BatchNorm statistics make the two losses comparable
    before = criterion(network(images), m.float(), w.float())
    before.backward()
    optimizer.step()
    after = criterion(network(images), m.float(), w.float())
    assert after < before


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"alpha": 0}, "`alpha` must be a finite number > 0, got 0"),
        # An infinite alpha times the 0 of pairs that do not count would make the loss NaN.
        ({"alpha": float("inf")}, "`alpha` must be a finite number > 0, got inf"),
        ({"beta": float("nan")}, "`beta` must be a finite number, got nan"),
    ],
)
def test_alpha_and_beta_must_be_finite_and_alpha_positive(settings, match):
    with pytest.raises(ValueError, match=match):
        BinomialDevianceLoss(**settings)
