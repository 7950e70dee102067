"""Retrieval metrics of an embedding set as a :class:`torchmetrics.Metric`.

A thin stateful layer over :func:`lit_metric.functional.retrieval.retrieval_metrics`: ``update`` stores
embeddings, labels, dataset indices and the optional query/gallery flags and cameras; ``compute`` gathers them
from every process (one without items takes part with empty states), drops the duplicates that
``DistributedSampler`` pads in (same dataset index, first kept), orders the items by dataset index and scores them
exactly. Ordering by dataset index makes the result, ties included, independent of how the data was split between
processes. Sharded, ``compute`` gathers nothing: each process keeps its items and
:func:`lit_metric.functional.sharded.sharded_retrieval_metrics` scores them where they are, with equal results.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import reduce
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.distributed import gather_all_tensors

from lit_metric.distributed import (
    check_same_on_every_process,
    first_copies,
    first_copies_across_processes,
    first_of_each,
    gather_objects,
    gather_rows,
    gather_sizes,
    raise_on_every_process,
)
from lit_metric.functional._checks import check_positive_int
from lit_metric.functional.norms import unit_rows
from lit_metric.functional.retrieval import (
    check_items,
    check_options,
    metric_names,
    resolve_roles,
    retrieval_metrics,
)
from lit_metric.functional.sharded import sharded_retrieval_metrics
from lit_metric.hparams import RecordsArguments

__all__ = ["RetrievalMetrics"]

_NO_CAMERA = -1
# Copies of an item embedded in different batches differ in the last bits, as other batch shapes take other kernels.
_COPY_TOLERANCE = 1e-3
# Fields that copies of one item (same dataset index) must share.
_COPY_FIELDS = ("labels", "is_query", "is_gallery", "cameras")
# Bytes of float32 embeddings over all processes from which `sharded=None` shards the evaluation: below, the search's
# tiles (up to 0.8 GB) outweigh the gathered copies, and at 20,000 x 128 in leave-one-out on 2 processes gathering
# was faster; at 1,000,000 x 128 sharding took 0.6 of the memory and less time (docs/sharded_evaluation.md).
SHARDED_FROM_BYTES = 2**28


class RetrievalMetrics(RecordsArguments, Metric):
    """Exact retrieval metrics by cosine similarity, leave-one-out or query/gallery with re-ID camera rules.

    ``compute`` returns a dict of scalar tensors with keys usable as log names: ``recall@K`` (hit rate) or its re-ID
    name ``cmc@K``, and ``precision@K``, for each ``K`` in ``k``, ``map@r``, ``r_precision``, ``map`` (full ranking),
    and the counts ``num_queries``, ``num_skipped_queries``, ``num_singleton_queries``. See
    :func:`~lit_metric.functional.retrieval.retrieval_metrics` for the protocol.

    Args:
        metrics: names from ``("recall", "precision", "map_at_r", "r_precision", "map", "cmc")``, or one name, with
            ``recall`` or ``cmc`` (one hit rate: ``cmc`` for re-ID), not both. ``map`` sorts the full gallery for every
            query, ``O(N^2 log N)``; the others need only nearest neighbours.
        k: cut-offs of ``recall``, ``precision`` and ``cmc``; each must be at most the gallery size.
        chunk_size: blocks of similarities hold at most ``chunk_size**2`` values (256 MB in float32 at the
            default; the search holds up to three); larger blocks make the matrix products more efficient, and
            memory grows with its square.
        sharded: under DDP, score each process's items where they are
            (:func:`~lit_metric.functional.sharded.sharded_retrieval_metrics`) instead of gathering every process's
            embeddings onto every process; the metrics are equal. ``None`` shards from :data:`SHARDED_FROM_BYTES`
            (256 MiB) of float32 embeddings over all processes, e.g. 524,288 items of width 128. Sharding uses the
            default process group.
        kwargs: passed to :class:`torchmetrics.Metric`.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        metrics: str | Sequence[str] = ("recall", "precision", "map_at_r", "r_precision"),
        k: Sequence[int] = (1, 2, 4, 8),
        chunk_size: int = 8192,
        sharded: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        metrics, k = metric_names(metrics), tuple(k)  # read twice: a generator must not be used up by the check
        check_options(metrics, k)
        check_positive_int("chunk_size", chunk_size)
        if sharded not in (None, True, False):
            raise ValueError(f"`sharded` must be True, False or None, got {sharded!r}")
        if sharded and self.process_group is not None:
            raise ValueError("`sharded` evaluation runs over the default process group, got a `process_group`")
        self.metrics = metrics
        self.k = tuple(sorted(set(k)))
        self.chunk_size = chunk_size
        self.sharded = sharded
        # Set by _sync_dist when it leaves the items where they are, for the compute that follows.
        self._sharded_now = False
        for name in ("embeddings", "labels", "indexes", "is_query", "is_gallery", "cameras"):
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self._roles_given: bool | None = None

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
        check_items(embeddings, labels, indexes, is_query, is_gallery, cameras)
        roles_given = is_query is not None or is_gallery is not None
        if self._roles_given is not None and roles_given != self._roles_given:
            # Unflagged items would silently become queries and gallery items at once next to flagged ones.
            raise ValueError("`is_query` or `is_gallery` must be given in every update or in none, got a mix")
        self._roles_given = roles_given
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
        sharded, self._sharded_now = self._sharded_now, False
        if sharded:
            # Some process has items; this one may have none.
            return self._compute_sharded()
        indexes = _concatenated(self.indexes) if len(self.indexes) else None
        if indexes is None or len(indexes) == 0:
            got = "no update" if indexes is None else "updates without items"
            raise ValueError(f"`update` must be called with at least one item before `compute`, got {got}")
        first, conflict = first_copies(indexes, self._copy_values())
        _check_no_conflict(conflict)
        unique = torch.equal(first, torch.arange(len(indexes), device=indexes.device))
        if not unique:
            _check_copy_embeddings(indexes, _concatenated(self.embeddings))

        def pick(states: list[Tensor] | Tensor) -> Tensor:
            # Items already unique and in index order (one process, no padding) need no gather: it would copy them all.
            return _concatenated(states) if unique else _concatenated(states)[first]

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

    def _compute_sharded(self) -> dict[str, Tensor]:
        """:meth:`compute` over the items of every process, each process keeping its own."""
        cameras = _concatenated(self.cameras)
        with_cameras = cameras != _NO_CAMERA
        local = bool(with_cameras.all()) if bool(with_cameras.all()) or not bool(with_cameras.any()) else "mix"
        # A process without items takes the others' choice.
        choices = set(gather_objects(local if len(cameras) else None)) - {None}
        raise_on_every_process(
            "`cameras` must be given in every update or in none, got a mix" if "mix" in choices or len(choices) > 1
            else None
        )
        indexes, embeddings = _concatenated(self.indexes), _concatenated(self.embeddings)
        keep, conflict = first_copies_across_processes(indexes, self._copy_values())
        _check_no_conflict(conflict)
        # The copies and their originals, few (DistributedSampler pads fewer items than processes), meet on every
        # process, where their embeddings are compared as in compute().
        dropped = indexes[~keep]
        copied = gather_rows(dropped, gather_sizes(len(dropped), indexes.device))
        mine = torch.isin(indexes, copied).nonzero().squeeze(1)
        sizes = gather_sizes(len(mine), indexes.device)
        _check_copy_embeddings(gather_rows(indexes[mine], sizes), gather_rows(embeddings[mine], sizes))
        everything = len(dropped) == 0

        def pick(states: list[Tensor] | Tensor) -> Tensor:
            # Indexing would copy every embedding, for nothing when no item is a copy.
            return _concatenated(states) if everything else _concatenated(states)[keep]

        return sharded_retrieval_metrics(
            pick(self.embeddings),
            pick(self.labels),
            indexes[keep],
            pick(self.is_query),
            pick(self.is_gallery),
            cameras[keep] if True in choices else None,
            self.metrics,
            self.k,
            self.chunk_size,
        )

    def reset(self) -> None:
        super().reset()
        self._roles_given = None

    def _sync_dist(self, dist_sync_fn: Callable = gather_all_tensors, process_group: Any | None = None) -> None:
        # torchmetrics gives a process without items 1-D float placeholders, which cannot be gathered with the 2-D
        # embeddings and integer labels of the others: the processes first agree on the embeddings' width and dtype.
        group = process_group or self.process_group
        values = self._agree_with_other_processes(group)
        sharded = self.sharded if self.sharded is not None else group is None and values * 4 >= SHARDED_FROM_BYTES
        # Without items anywhere, compute refuses on every process alike.
        if sharded and values:
            # compute() scores the items where they are; torchmetrics restores these states after it.
            self._sharded_now = True
            return
        super()._sync_dist(dist_sync_fn, process_group)

    def _agree_with_other_processes(self, group: Any) -> int:
        """Give this process empty states of the common shapes when it has no items, and every process the widest
        embedding dtype; refuse a mix of widths or of flagged and unflagged items, and different settings. Returns
        the number of stored embedding values (items times width) over all processes."""
        check_same_on_every_process(
            {"metrics": self.metrics, "k": self.k, "chunk_size": self.chunk_size, "sharded": self.sharded}, group
        )
        embeddings = self.embeddings[0] if len(self.embeddings) else None
        values = sum(x.numel() for x in self.embeddings)
        local = None if embeddings is None else (embeddings.shape[1], embeddings.dtype, self._roles_given, values)
        present = [item for item in gather_objects(local, group) if item is not None]
        if not present:
            return 0
        widths, roles = {width for width, _, _, _ in present}, {given for _, _, given, _ in present}
        if len(widths) > 1:
            raise ValueError(f"`embeddings` must have one dimension in every process, got {sorted(widths)}")
        if len(roles) > 1:
            raise ValueError("`is_query` or `is_gallery` must be given in every process or in none, got a mix")
        dtype = reduce(torch.promote_types, [dtype for _, dtype, _, _ in present])
        if embeddings is None:
            (width,) = widths
            long = torch.empty(0, dtype=torch.long, device=self.device)
            flag = torch.empty(0, dtype=torch.bool, device=self.device)
            self.embeddings = [torch.empty(0, width, dtype=dtype, device=self.device)]
            self.labels, self.indexes, self.cameras = [long], [long], [long]
            self.is_query, self.is_gallery = [flag], [flag]
        else:
            self.embeddings = [x.to(dtype) for x in self.embeddings]
        return sum(item[3] for item in present)

    def _copy_values(self) -> Tensor:
        """``(N, 4)`` integers of each stored item that its copies must share: the :data:`_COPY_FIELDS`."""
        return torch.stack([_concatenated(getattr(self, name)).long() for name in _COPY_FIELDS], dim=1)


def _check_no_conflict(conflict: tuple[int, int] | None) -> None:
    """Items with equal index must be copies, as DistributedSampler pads them in: colliding indexes of different items
    would otherwise silently drop all but one of them."""
    if conflict is not None:
        index, field = conflict
        raise ValueError(
            f"items with equal `indexes` must be copies of one item, got two with index {index} and different "
            f"`{_COPY_FIELDS[field]}`"
        )


def _check_copy_embeddings(indexes: Tensor, embeddings: Tensor) -> None:
    """Copies embedded in different batches may differ in the last bits, so the ``(N, D)`` ``embeddings`` of items
    with equal ``(N,)`` ``indexes`` need only point the same way: their unit rows, all that the metrics see of them,
    within ``_COPY_TOLERANCE`` or 8 units of the embeddings' precision of the first copy's."""
    _, copy_of = first_of_each(indexes)
    copies = (copy_of != torch.arange(len(indexes), device=indexes.device)).nonzero().squeeze(1)
    if len(copies) == 0:
        return
    copy, original = (unit_rows(embeddings[rows], torch.float32) for rows in (copies, copy_of[copies]))
    distance = torch.linalg.vector_norm(copy - original, dim=1)
    tolerance = max(_COPY_TOLERANCE, 8 * torch.finfo(embeddings.dtype).eps)
    worst = int(distance.argmax())
    if distance[worst] > tolerance:
        raise ValueError(
            f"items with equal `indexes` must be copies of one item, got two with index "
            f"{int(indexes[copies[worst]])} and `embeddings` whose unit rows are {float(distance[worst]):.3g} "
            f"apart, more than the {tolerance:.3g} that copies from different batches may differ by"
        )


def _concatenated(states: list[Tensor] | Tensor) -> Tensor:
    """A list state as one tensor; a single tensor (one update, or synced) is returned without a copy."""
    if isinstance(states, Tensor):
        return states
    return states[0] if len(states) == 1 else torch.cat(states)
