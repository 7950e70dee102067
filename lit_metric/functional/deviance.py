"""Binomial deviance of Yi et al. (2014) and the cosine similarity it is computed on.

The loss over a similarity matrix ``S`` with pair matrix ``M`` and pair weights ``W`` is::

    L = sum_ij W_ij * softplus(-alpha * (S_ij - beta) * M_ij)

``M`` and ``W`` come dense (:func:`binomial_deviance`) or factored as a miner's
:class:`~lit_metric.functional.pairs.Pairs` (:func:`binomial_deviance_of_pairs`); one kernel serves both.

Its gradient with respect to ``S`` has the closed form ``-alpha * W * M * sigmoid(z)`` with
``z = -alpha * (S - beta) * M``, so :class:`_BinomialDeviance` recomputes ``z`` in the backward pass
instead of keeping autograd's chain of ``(B, R)`` temporaries alive between the passes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from lit_metric.functional._blocks import row_blocks
from lit_metric.functional._checks import check_finite, check_floating, check_matrix, check_real
from lit_metric.functional.norms import unit_rows
from lit_metric.functional.pairs import Pairs

__all__ = ["binomial_deviance", "binomial_deviance_of_pairs", "cosine_similarity"]


def cosine_similarity(embeddings: Tensor, reference_embeddings: Tensor | None = None) -> Tensor:
    """Cosine similarity of every row of ``embeddings`` against every row of ``reference_embeddings``.

    Computed in float32 at least, with autocast disabled, so that mixed-precision training feeds the loss
    similarities that are exact to float32. Rows of any finite magnitude are normalised exactly (:func:`unit_rows`);
    an all-zero row has similarity 0 to everything and gets no gradient.

    Args:
        embeddings: ``(B, D)`` floating tensor.
        reference_embeddings: ``(R, D)`` floating tensor; defaults to ``embeddings``.

    Returns:
        ``(B, R)`` similarity matrix in ``[-1, 1]``.
    """
    check_matrix("embeddings", embeddings)
    if reference_embeddings is None:
        reference_embeddings = embeddings
    else:
        check_matrix("reference_embeddings", reference_embeddings)
        if reference_embeddings.shape[1] != embeddings.shape[1]:
            raise ValueError(
                f"`reference_embeddings` must have the embedding dimension of `embeddings` ({embeddings.shape[1]}), "
                f"got shape {tuple(reference_embeddings.shape)}"
            )
    dtype = torch.promote_types(embeddings.dtype, torch.float32)
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        queries = unit_rows(embeddings, dtype)
        if reference_embeddings is embeddings:
            return _Gram.apply(queries)
        return queries @ unit_rows(reference_embeddings, dtype).T


def binomial_deviance(
    similarity: Tensor,
    m: Tensor,
    w: Tensor,
    alpha: float = 2.0,
    beta: float = 0.5,
    validate_args: bool = True,
) -> Tensor:
    """Weighted binomial deviance ``sum(w * softplus(-alpha * (similarity - beta) * m))``.

    Computed in float32 at least whatever the input dtype, so fp16/bf16 similarities and large negative
    costs in ``m`` give a finite loss. The gradient comes back in the similarity's dtype: finite in bf16, and in
    fp16 while ``alpha * |m| * w`` stays below 65504.

    Args:
        similarity: ``(B, R)`` similarities, usually cosine.
        m: ``(B, R)`` pair matrix: ``+1`` for positive pairs, ``-negative_cost`` for negative pairs, ``0`` for
            pairs that do not count.
        w: ``(B, R)`` non-negative pair weights.
        alpha: scale of the similarity margin, ``> 0``.
        beta: similarity offset that separates positives from negatives.
        validate_args: check shapes, dtypes and finiteness; costs one pass over each input.

    Returns:
        Scalar loss in the computation dtype (float32 for half-precision inputs).
    """
    if validate_args:
        _check_deviance_args(similarity, m, w, alpha, beta)
    return _BinomialDeviance.apply(similarity, m, w, None, float(alpha), float(beta))


def binomial_deviance_of_pairs(
    similarity: Tensor, pairs: Pairs, alpha: float = 2.0, beta: float = 0.5, validate_args: bool = True
) -> Tensor:
    """:func:`binomial_deviance` with ``M`` and ``W`` given factored, as a miner's :class:`Pairs`.

    Equal to ``binomial_deviance(similarity, *pairs.matrices())`` without allocating the dense matrices.

    Args:
        similarity: ``(B, R)`` similarities, usually cosine.
        pairs: ``(B, R)`` positive and negative masks with their weights and the negative cost.
        alpha: scale of the similarity margin, ``> 0``.
        beta: similarity offset that separates positives from negatives.
        validate_args: check shapes, dtypes and finiteness; costs one pass over the similarity and the masks.

    Returns:
        Scalar loss in the computation dtype (float32 for half-precision inputs).
    """
    if validate_args:
        _check_similarity(similarity, alpha, beta)
        if not isinstance(pairs, Pairs):
            raise ValueError(f"`pairs` must be a lit_metric.functional.Pairs, got {type(pairs).__name__}")
        pairs.check(similarity)
    return _BinomialDeviance.apply(similarity, None, None, pairs, float(alpha), float(beta))


class _Gram(torch.autograd.Function):
    """``X X^T`` with the backward pass as one matrix product, ``(G + G^T) X``, where autograd would run two."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return x @ x.T

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return _symmetrized(grad_output) @ x


def _symmetrized(g: Tensor, tile: int = 256) -> Tensor:
    """``g + g^T`` of a square ``g``, tile by tile: a plain ``g + g.T`` reads the transpose with a stride that misses
    the cache and costs about as much as the matrix product."""
    out = torch.empty_like(g)
    for i in range(0, g.shape[0], tile):
        for j in range(i, g.shape[0], tile):
            block = g[i : i + tile, j : j + tile] + g[j : j + tile, i : i + tile].T
            out[i : i + tile, j : j + tile] = block
            out[j : j + tile, i : i + tile] = block.T
    return out


class _BinomialDeviance(torch.autograd.Function):
    """Loss with the closed-form gradient over dense ``(m, w)`` or factored ``pairs``; saves only its inputs.

    Both passes walk the rows in chunks so that the float temporaries stay cache-sized: the only full ``(B, R)``
    tensor they allocate is the gradient itself.
    """

    @staticmethod
    def forward(ctx, similarity: Tensor, m: Tensor | None, w: Tensor | None, pairs: Pairs | None, alpha, beta):
        ctx.save_for_backward(similarity, m, w)
        ctx.pairs, ctx.alpha, ctx.beta = pairs, alpha, beta
        pair_dtype = similarity.dtype if m is None else m.dtype
        dtype = torch.promote_types(torch.promote_types(similarity.dtype, pair_dtype), torch.float32)
        loss = torch.zeros((), dtype=dtype, device=similarity.device)
        for rows in row_blocks(similarity):
            m_rows, w_rows = _pair_rows(m, w, pairs, rows, dtype)
            z = _margin(similarity[rows], m_rows, alpha, beta, dtype)
            loss += torch.dot(F.softplus(z).view(-1), w_rows.reshape(-1))
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        similarity, m, w = ctx.saved_tensors
        dtype = grad_output.dtype
        grad_similarity = torch.empty_like(similarity) if ctx.needs_input_grad[0] else None
        grad_w = torch.empty_like(w) if ctx.needs_input_grad[2] else None
        for rows in row_blocks(similarity):
            m_rows, w_rows = _pair_rows(m, w, ctx.pairs, rows, dtype)
            z = _margin(similarity[rows], m_rows, ctx.alpha, ctx.beta, dtype)
            if grad_w is not None:
                grad_w[rows] = F.softplus(z) * grad_output
            if grad_similarity is not None:
                # d softplus(z) / dS = sigmoid(z) * (-alpha * M)
                grad = z.sigmoid_().mul_(m_rows).mul_(w_rows)
                torch.mul(grad, -ctx.alpha * grad_output, out=grad_similarity[rows])
        return grad_similarity, None, grad_w, None, None, None


def _pair_rows(m: Tensor | None, w: Tensor | None, pairs: Pairs | None, rows: slice, dtype) -> tuple[Tensor, Tensor]:
    """The ``rows`` of ``M`` and ``W`` in ``dtype``, sliced from the dense matrices or built from ``pairs``."""
    if pairs is not None:
        return pairs.rows(rows, dtype)
    return m[rows].to(dtype), w[rows].to(dtype)


def _margin(similarity: Tensor, m: Tensor, alpha: float, beta: float, dtype: torch.dtype) -> Tensor:
    """``z = -alpha * (S - beta) * M`` as a new tensor of ``dtype``."""
    return (similarity.to(dtype) - beta).mul_(m).mul_(-alpha)


def check_parameters(alpha: float, beta: float) -> None:
    """``alpha`` is a finite number ``> 0`` and ``beta`` a finite number: an infinite ``alpha`` times the ``0`` of
    pairs that do not count would make the loss NaN."""
    check_real("alpha", alpha, positive=True)
    check_real("beta", beta)


def _check_similarity(similarity: Tensor, alpha: float, beta: float) -> None:
    check_parameters(alpha, beta)
    check_matrix("similarity", similarity, "(B, R)")


def _check_deviance_args(similarity: Tensor, m: Tensor, w: Tensor, alpha: float, beta: float) -> None:
    _check_similarity(similarity, alpha, beta)
    for name, x in (("m", m), ("w", w)):
        check_floating(name, x)
        if x.shape != similarity.shape:
            raise ValueError(
                f"`{name}` must have the shape of `similarity` {tuple(similarity.shape)}, got {tuple(x.shape)}"
            )
    if m.requires_grad:
        # The backward pass gives `m` no gradient; a learned cost in it would silently stay as it is.
        raise ValueError("`m` must not require grad: the loss is not differentiated with respect to it")
    check_finite("m", m)
    low, high = torch.aminmax(w)
    if not bool(high < float("inf")) or bool(torch.isnan(low)):
        raise ValueError("`w` must be finite, found NaN or inf")
    if bool(low < 0):
        raise ValueError(f"`w` must be non-negative, found a weight of {low.item():.4g}")
