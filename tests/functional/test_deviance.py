"""Specification of the binomial deviance and the cosine similarity it is computed on."""

import math

import pytest
import torch
import torch.nn.functional as F

from lit_metric.functional import binomial_deviance, cosine_similarity


def loop_deviance(similarity, m, w, alpha, beta):
    """The paper's formula, pair by pair, in Python floats."""
    total = 0.0
    for i in range(similarity.shape[0]):
        for j in range(similarity.shape[1]):
            z = -alpha * (similarity[i, j].item() - beta) * m[i, j].item()
            total += w[i, j].item() * math.log1p(math.exp(z))
    return total


def autograd_deviance(similarity, m, w, alpha, beta):
    """The same formula left to autograd, to check the closed-form gradient."""
    return (w * F.softplus(-alpha * (similarity - beta) * m)).sum()


def random_problem(b=5, r=7, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    similarity = torch.rand(b, r, generator=generator, dtype=dtype) * 2 - 1
    m = torch.randint(-1, 2, (b, r), generator=generator).to(dtype) * torch.tensor([1.0, 3.0], dtype=dtype)[
        torch.randint(2, (b, r), generator=generator)
    ]
    w = torch.rand(b, r, generator=generator, dtype=dtype)
    return similarity, m, w


@pytest.mark.parametrize(("alpha", "beta"), [(2.0, 0.5), (0.5, -0.2), (10.0, 0.9)])
def test_matches_the_pairwise_loop_in_float64(alpha, beta):
    similarity, m, w = random_problem()
    loss = binomial_deviance(similarity, m, w, alpha, beta)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(loop_deviance(similarity, m, w, alpha, beta), rel=1e-12)


def test_gradcheck_with_respect_to_similarity_and_weights():
    similarity, m, w = random_problem()
    similarity.requires_grad_()
    w.requires_grad_()
    assert torch.autograd.gradcheck(lambda s, w_: binomial_deviance(s, m, w_, 2.0, 0.5), (similarity, w))


def test_closed_form_gradient_equals_autograd_to_1e_10():
    similarity, m, w = random_problem(b=16, r=16)
    ours = similarity.clone().requires_grad_()
    reference = similarity.clone().requires_grad_()
    grad_ours = torch.autograd.grad(binomial_deviance(ours, m, w, 2.0, 0.5), ours)[0]
    grad_reference = torch.autograd.grad(autograd_deviance(reference, m, w, 2.0, 0.5), reference)[0]
    torch.testing.assert_close(grad_ours, grad_reference, rtol=0, atol=1e-10)


@pytest.mark.parametrize("scale", [1e-300, 1.0, 1e300])
def test_gradcheck_end_to_end_through_cosine_similarity(scale):
    generator = torch.Generator().manual_seed(1)
    embeddings = torch.randn(6, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    references = torch.randn(5, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    _, m, w = random_problem(b=6, r=5)
    assert torch.autograd.gradcheck(
        lambda e, r: binomial_deviance(cosine_similarity(e * scale, r * scale), m, w), (embeddings, references)
    )


def test_gradcheck_of_the_self_similarity_and_its_one_product_backward():
    generator = torch.Generator().manual_seed(3)
    embeddings = torch.randn(6, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    _, m, w = random_problem(b=6, r=6)
    assert torch.autograd.gradcheck(lambda e: binomial_deviance(cosine_similarity(e), m, w), (embeddings,))
    grad_ours = torch.autograd.grad(binomial_deviance(cosine_similarity(embeddings), m, w), embeddings)[0]
    normalised = F.normalize(embeddings, dim=1)
    grad_autograd = torch.autograd.grad(autograd_deviance(normalised @ normalised.T, m, w, 2.0, 0.5), embeddings)[0]
    torch.testing.assert_close(grad_ours, grad_autograd, rtol=0, atol=1e-10)


def test_cosine_similarity_is_the_normalised_dot_product():
    generator = torch.Generator().manual_seed(2)
    a = torch.randn(4, 3, generator=generator, dtype=torch.float64)
    b = torch.randn(6, 3, generator=generator, dtype=torch.float64)
    expected = torch.tensor([[F.cosine_similarity(x, y, dim=0).item() for y in b] for x in a], dtype=torch.float64)
    torch.testing.assert_close(cosine_similarity(a, b), expected)
    torch.testing.assert_close(cosine_similarity(a), cosine_similarity(a, a.clone()))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_give_finite_float32_loss_and_gradients(dtype):
    similarity, m, w = random_problem(b=32, r=32, dtype=torch.float32)
    similarity = similarity.to(dtype).requires_grad_()
    loss = binomial_deviance(similarity, m.to(dtype), w.to(dtype))
    loss.backward()
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    assert similarity.grad.dtype == dtype
    assert torch.isfinite(similarity.grad).all()
    expected = loop_deviance(similarity.detach().double(), m.to(dtype).double(), w.to(dtype).double(), 2.0, 0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_extreme_similarities_with_large_negative_cost_stay_finite(dtype):
    # S = +-1 with C = 25 and alpha = 10 puts exp(.) far beyond float16's range in the naive formula.
    similarity = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=dtype, requires_grad=True)
    m = torch.tensor([[-25.0, 1.0], [1.0, -25.0]], dtype=dtype)
    w = torch.ones(2, 2, dtype=dtype)
    loss = binomial_deviance(similarity, m, w, alpha=10.0)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(similarity.grad).all()
    # Both terms are the saturated softplus: 10 * 0.5 * 25 on the negatives, 10 * 1.5 on the positives.
    assert loss.item() == pytest.approx(2 * 125 + 2 * 15, rel=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_all_zero_embedding_rows_have_similarity_zero_and_no_gradient(dtype):
    # F.normalize would give such rows (e.g. from a ReLU head) a gradient of 1 / eps = 1e12, inf in fp16.
    embeddings = torch.zeros(4, 8, dtype=dtype)
    embeddings[2:] = torch.randn(2, 8, dtype=dtype)
    embeddings.requires_grad_()
    m = torch.tensor([[0, 1, -1, -1], [1, 0, -1, -1], [-1, -1, 0, 1], [-1, -1, 1, 0]], dtype=torch.float32)
    w = (m != 0).float() / 4
    similarity = cosine_similarity(embeddings)
    loss = binomial_deviance(similarity, m, w)
    loss.backward()
    assert torch.isfinite(loss)
    assert bool((similarity[:2] == 0).all()) and bool((similarity[:, :2] == 0).all())
    assert bool((embeddings.grad[:2] == 0).all())
    assert torch.isfinite(embeddings.grad).all() and bool((embeddings.grad[2:] != 0).any())


# Largest magnitude of the embeddings: the ends of each dtype's range (3e38 is float32's 3.4e38 less 12%).
MAGNITUDES = [
    *((torch.float32, magnitude) for magnitude in (1e-30, 1e-15, 1.0, 1e19, 3e38)),
    *((torch.float16, magnitude) for magnitude in (1e-7, 6e4)),
    *((torch.bfloat16, magnitude) for magnitude in (1e-30, 1e30, 3e38)),
]


@pytest.mark.parametrize(
    ("dtype", "magnitude"), MAGNITUDES, ids=[f"{dtype}-{magnitude:g}"[6:] for dtype, magnitude in MAGNITUDES]
)
def test_loss_and_gradient_at_any_magnitude_equal_the_float64_reference(dtype, magnitude):
    # The squared norm of a float32 row overflows from 1e19 on and underflows below about 1e-22.
    b, labels = 32, torch.arange(8).repeat(4)
    shape = torch.randn(b, 64, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    scale = magnitude / shape.abs().max().item()
    embeddings = (shape * scale).to(dtype).requires_grad_()
    same = labels[:, None] == labels[None, :]
    positive, negative = same & ~torch.eye(b, dtype=torch.bool), ~same
    m = positive.double() - negative.double()
    w = positive.double() / positive.sum() + negative.double() / negative.sum()
    loss = binomial_deviance(cosine_similarity(embeddings), m.float(), w.float())
    loss.backward()
    # The reference takes the same values brought to magnitude 1 in float64, where F.normalize is exact.
    reference = (embeddings.detach().double() / scale).requires_grad_()
    normalised = F.normalize(reference, dim=1)
    expected = autograd_deviance(normalised @ normalised.T, m, w, 2.0, 0.5)
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert_rounded(embeddings.grad, reference.grad / scale)


def assert_rounded(grad, reference):
    """``grad`` is the float64 ``reference`` rounded to its dtype: to its precision, or to 1e-6 of the largest
    component (float32 arithmetic), or to its smallest subnormal where the gradient is that small, and inf where it is
    beyond the dtype's range (float16 at 1e-7: the true gradient reaches 1e5)."""
    finfo = torch.finfo(grad.dtype)
    atol = max(finfo.smallest_normal * finfo.eps, 1e-6 * reference.abs().max().item())
    torch.testing.assert_close(grad.double(), reference.to(grad.dtype).double(), rtol=finfo.eps, atol=atol)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_similarity_under_autocast_is_float32(dtype):
    embeddings = torch.randn(8, 16)
    with torch.autocast("cpu", dtype=dtype):
        similarity = cosine_similarity(embeddings)
    assert similarity.dtype == torch.float32
    torch.testing.assert_close(similarity, cosine_similarity(embeddings))


def test_gradient_reaches_the_embeddings_unlike_the_seed_article():
    embeddings = torch.randn(6, 4, requires_grad=True)
    m = torch.ones(6, 6) - 2 * torch.eye(6)
    w = torch.full((6, 6), 1 / 36)
    # The article rewrapped S as a new leaf (`Variable(sim, requires_grad=True)`), which detaches it.
    rewrapped = cosine_similarity(embeddings).detach().requires_grad_()
    binomial_deviance(rewrapped, m, w).backward()
    assert embeddings.grad is None
    binomial_deviance(cosine_similarity(embeddings), m, w).backward()
    assert embeddings.grad is not None and embeddings.grad.abs().sum() > 0


def valid():
    return torch.rand(3, 4), torch.ones(3, 4), torch.ones(3, 4)


@pytest.mark.parametrize(
    ("replace", "match"),
    [
        ({"similarity": torch.rand(3, 5)}, "`m` must have the shape of `similarity`"),
        ({"w": torch.ones(4, 3)}, "`w` must have the shape of `similarity`"),
        ({"similarity": torch.rand(12)}, r"`similarity` must have shape \(B, R\)"),
        ({"m": torch.ones(3, 4, dtype=torch.long)}, "`m` must be a floating-point tensor"),
        ({"similarity": torch.ones(3, 4, dtype=torch.int32)}, "`similarity` must be a floating-point tensor"),
        ({"w": torch.full((3, 4), -0.5)}, "`w` must be non-negative"),
        ({"w": torch.full((3, 4), float("inf"))}, "`w` must be finite"),
        ({"w": torch.full((3, 4), float("nan"))}, "`w` must be finite"),
        ({"m": torch.full((3, 4), float("nan"))}, "`m` must be finite"),
        ({"similarity": torch.full((3, 4), float("-inf"))}, "`similarity` must be finite"),
        ({"similarity": torch.rand(0, 4), "m": torch.ones(0, 4), "w": torch.ones(0, 4)}, "must not be empty"),
        ({"alpha": 0.0}, "`alpha` must be a finite number > 0, got 0.0"),
        ({"alpha": -1.0}, "`alpha` must be a finite number > 0"),
        ({"alpha": float("inf")}, "`alpha` must be a finite number > 0, got inf"),
        ({"alpha": "2"}, "`alpha` must be a finite number > 0, got '2'"),
        ({"beta": float("nan")}, "`beta` must be a finite number, got nan"),
        ({"beta": float("-inf")}, "`beta` must be a finite number"),
        ({"alpha": 1e39}, r"`alpha` must be within the float32 range \(\|x\| <= 3.403e\+38\), got 1e\+39"),
        ({"m": torch.ones(3, 4, requires_grad=True)}, "`m` must not require grad"),
    ],
)
def test_invalid_arguments_are_named(replace, match):
    similarity, m, w = valid()
    arguments = {"similarity": similarity, "m": m, "w": w, "alpha": 2.0, **replace}
    with pytest.raises(ValueError, match=match):
        binomial_deviance(**arguments)


@pytest.mark.parametrize(
    ("embeddings", "reference", "match"),
    [
        (torch.randn(3), None, r"`embeddings` must have shape \(N, D\)"),
        (torch.randn(0, 4), None, "`embeddings` must not be empty"),
        (torch.randint(3, (3, 4)), None, "`embeddings` must be a floating-point tensor"),
        (torch.tensor([[1.0, float("nan")]]), None, "`embeddings` must be finite"),
        (torch.randn(3, 4), torch.randn(3, 5), "`reference_embeddings` must have the embedding dimension"),
        (torch.randn(3, 4), torch.tensor([[float("inf")] * 4]), "`reference_embeddings` must be finite"),
    ],
)
def test_invalid_embeddings_are_named(embeddings, reference, match):
    with pytest.raises(ValueError, match=match):
        cosine_similarity(embeddings, reference)
