"""Retrieval metrics of an embedding set as a :class:`torchmetrics.Metric`.

A thin stateful layer over :func:`lit_metric.functional.retrieval.retrieval_metrics`: ``update`` stores
embeddings, labels, dataset indices and the optional query/gallery flags and cameras; ``compute`` gathers them
from every process, drops the duplicates that ``DistributedSampler`` pads in (same dataset index, first kept),
orders the items by dataset index and scores them exactly. Ordering by dataset index makes the result, ties
included, independent of how the data was split between processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from lit_metric.functional._checks import check_finite, check_floating, check_positive_int, describe
from lit_metric.functional.retrieval import check_options, first_occurrences, resolve_roles, retrieval_metrics

__all__ = ["RetrievalMetrics"]

_NO_CAMERA = -1


class RetrievalMetrics(Metric):
    """Exact retrieval metrics by cosine similarity, leave-one-out or query/gallery with re-ID camera rules.

    ``compute`` returns a dict of scalar tensors with keys usable as log names: ``recall@K`` (hit rate),
    ``precision@K`` and ``cmc@K`` for each ``K`` in ``k``, ``map@r``, ``r_precision``, ``map`` (full ranking),
    and the counts ``num_queries``, ``num_skipped_queries``, ``num_singleton_queries``. See
    :func:`~lit_metric.functional.retrieval.retrieval_metrics` for the protocol.

    Args:
        metrics: names from ``("recall", "precision", "map_at_r", "r_precision", "map", "cmc")``. ``map`` sorts
            the full gallery for every query, ``O(N^2 log N)``; the others need only nearest neighbours.
        k: cut-offs of ``recall``, ``precision`` and ``cmc``; each must be at most the gallery size.
        chunk_size: blocks of similarities hold at most ``chunk_size**2`` values (256 MB in float32 at the
            default; the search holds up to three); larger blocks make the matrix products more efficient, and
            memory grows with its square.
        kwargs: passed to :class:`torchmetrics.Metric`.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        metrics: Sequence[str] = ("recall", "precision", "map_at_r", "r_precision", "cmc"),
        k: Sequence[int] = (1, 2, 4, 8),
        chunk_size: int = 8192,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_options(metrics, k)
        check_positive_int("chunk_size", chunk_size)
        self.metrics = tuple(metrics)
        self.k = tuple(sorted(set(k)))
        self.chunk_size = chunk_size
        for name in ("embeddings", "labels", "indexes", "is_query", "is_gallery", "cameras"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self,
        embeddings: Tensor,
        labels: Tensor,
        indexes: Tensor,
        is_query: Tensor | None = None,
        is_gallery: Tensor | None = None,
        cameras: Tensor | None = None,
    ) -> None:
        """Store a batch.

        Args:
            embeddings: ``(N, D)`` finite floating embeddings.
            labels: ``(N,)`` integer class or identity labels.
            indexes: ``(N,)`` integer dataset indices; items with equal index are one item.
            is_query: ``(N,)`` bool; with ``is_gallery`` ``None`` the gallery is its complement.
            is_gallery: ``(N,)`` bool; with ``is_query`` ``None`` the queries are its complement. Without either
                flag every item is both a query and a gallery item (leave-one-out).
            cameras: ``(N,)`` non-negative integer camera ids; gallery items of the query's label and camera
                are then excluded. Give them in every update or in none.
        """
        _check_update(embeddings, labels, indexes, is_query, is_gallery, cameras)
        if self.embeddings and self.embeddings[0].shape[1] != embeddings.shape[1]:
            raise ValueError(
                f"`embeddings` must keep the dimension of earlier updates ({self.embeddings[0].shape[1]}), "
                f"got shape {tuple(embeddings.shape)}"
            )
        n = len(labels)
        is_query, is_gallery = resolve_roles(is_query, is_gallery, n, labels.device)
        if cameras is None:
            cameras = torch.full((n,), _NO_CAMERA, dtype=torch.long, device=labels.device)
        self.embeddings.append(embeddings.detach())
        self.labels.append(labels.long())
        self.indexes.append(indexes.long())
        self.is_query.append(is_query)
        self.is_gallery.append(is_gallery)
        self.cameras.append(cameras.long())

    def compute(self) -> dict[str, Tensor]:
        """Metrics over every stored item, once per dataset index; see the class docstring for the keys."""
        if len(self.indexes) == 0:
            raise ValueError("`update` must be called with at least one item before `compute`")
        indexes = _concatenated(self.indexes)
        first = first_occurrences(indexes)
        positions = torch.arange(len(indexes), device=indexes.device)
        # Items already unique and in index order (one process, no padding) need no gather: it would copy them all.
        pick = _concatenated if torch.equal(first, positions) else (lambda states: _concatenated(states)[first])
        cameras = pick(self.cameras)
        with_cameras = cameras != _NO_CAMERA
        if with_cameras.any() and not with_cameras.all():
            raise ValueError("`cameras` must be given in every update or in none, got a mix")
        return retrieval_metrics(
            pick(self.embeddings),
            pick(self.labels),
            pick(self.is_query),
            pick(self.is_gallery),
            cameras if with_cameras.all() else None,
            self.metrics,
            self.k,
            self.chunk_size,
        )


def _concatenated(states: list[Tensor] | Tensor) -> Tensor:
    """A list state as one tensor; a single tensor (one update, or synced) is returned without a copy."""
    if isinstance(states, Tensor):
        return states
    return states[0] if len(states) == 1 else torch.cat(states)


def _check_update(
    embeddings: Tensor,
    labels: Tensor,
    indexes: Tensor,
    is_query: Tensor | None,
    is_gallery: Tensor | None,
    cameras: Tensor | None,
) -> None:
    check_floating("embeddings", embeddings)
    if embeddings.ndim != 2:
        raise ValueError(f"`embeddings` must have shape (N, D), got shape {tuple(embeddings.shape)}")
    if embeddings.numel():
        check_finite("embeddings", embeddings)
    n = len(embeddings)
    for name, x, kind in (
        ("labels", labels, "integer"),
        ("indexes", indexes, "integer"),
        ("is_query", is_query, "bool"),
        ("is_gallery", is_gallery, "bool"),
        ("cameras", cameras, "integer"),
    ):
        if x is None and name not in ("labels", "indexes"):
            continue
        if not isinstance(x, Tensor) or (x.dtype == torch.bool) != (kind == "bool") or x.is_floating_point():
            raise ValueError(f"`{name}` must be a {kind} tensor, got {describe(x)}")
        if x.shape != (n,):
            raise ValueError(f"`{name}` must have shape ({n},) to match `embeddings`, got shape {tuple(x.shape)}")
    if cameras is not None and bool((cameras < 0).any()):
        raise ValueError("`cameras` must be non-negative camera ids, found a negative value")

