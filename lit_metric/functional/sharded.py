"""Exact retrieval over a gallery sharded across ``torch.distributed`` processes, with no process holding all of it.

Each process keeps its own shard of the gallery and its own queries. The queries travel in blocks: each process in
turn broadcasts a block of its queries, every process searches its shard with it (:func:`~.knn.search_tiles`), and
the owner of the block gathers everyone's candidates and keeps the best ``k`` of them. That is the exact global
top-``k``: a global neighbour is among the ``k`` best of its own shard. Ties are broken as in the single-process
search, by ascending *id*: in evaluation the dataset index, which orders the gallery of a single-process run.

Every process computes its similarities in products of the shape that the single-process search of all the queries
and the whole gallery uses (:func:`~.knn.tile_side` of the totals), and a similarity's float32 bits depend only on
that shape, so the scores, rankings and metrics equal the single-process ones bitwise (the sharded gallery is tiled
shard by shard, the last tile of each padded with zero rows as the single-process search pads its last one).

The metrics that need more than the top ``k`` are sharded as well: each query's ``R`` is a sum of per-shard counts,
and for the full-ranking mAP each process counts, for every relevant item of a block's queries wherever it lives,
the items of its shard that rank above it; the sums are the relevant items' global ranks. Means are exact sums
(:func:`~.retrieval.exact_sum`), so they do not depend on how the queries are split.

Memory per process, ``P`` processes, ``N`` items of width ``D``, ``B`` rows per block (the single-process row
tile): the shard's unit rows ``N / P x D x 4`` bytes, the search's tiles, the block ``B x D x 4``, the candidates
``P x B x k x 8 (1 + V)`` on the block's owner (a ranking key and ``V`` values each: for the metrics, the dataset
index and the label). Each process receives every query once (``N_q x D x 4`` bytes in all); docs/sharded_evaluation.md
has the full account.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from fractions import Fraction
from functools import reduce

import torch
from torch import Tensor

from lit_metric.distributed import (
    blocks_of_every_process,
    check_same_on_every_process,
    gather_objects,
    gather_rows,
    gather_sizes,
    gather_to,
    rank,
    raise_on_every_process,
    sum_to,
)
from lit_metric.functional._checks import check_finite, check_floating, check_k, check_positive_int
from lit_metric.functional.knn import (
    empty_key,
    equal_key_pairs,
    normalize,
    ranked_keys,
    ranking_keys,
    search_tiles,
    similarities,
    tile_side,
)
from lit_metric.functional.retrieval import (
    average_precision,
    average_precision_tiles,
    check_items,
    check_options,
    check_sizes,
    exact_mean,
    exact_sum,
    metric_names,
    neighbour_metrics,
    resolve_roles,
)

__all__ = ["sharded_knn", "sharded_neighbours", "sharded_retrieval_metrics"]

# Ids fill the low 32 bits of a ranking key, and the largest marks an empty slot.
_ID_LIMIT = 2**32 - 1
# Query rows per block of the pass that counts each query's relevant items: labels and keys only.
_COUNT_ROWS = 1 << 16


def sharded_knn(
    queries: Tensor,
    k: int,
    gallery: Tensor,
    gallery_ids: Tensor,
    query_keys: Tensor | None = None,
    gallery_keys: Tensor | None = None,
    chunk_size: int = 8192,
) -> tuple[Tensor, Tensor]:
    """Exact top-``k`` of this process's queries over the gallery shards of all processes, by cosine similarity.

    A collective call: every process makes it, with its own queries and shard, either of which may be empty. On one
    process it is :func:`~lit_metric.functional.knn.cosine_knn` of a gallery ordered by id.

    Args:
        queries: ``(N_q, D)`` floating embeddings of this process's queries.
        k: neighbours, at most the size of the whole gallery.
        gallery: ``(N_g, D)`` floating embeddings, this process's shard.
        gallery_ids: ``(N_g,)`` integer ids in ``[0, 2**32 - 1)``, distinct over all processes; ties rank by
            ascending id.
        query_keys: ``(N_q,)`` exclusion keys, see :func:`~lit_metric.functional.knn.cosine_knn`.
        gallery_keys: ``(N_g,)`` exclusion keys, given with ``query_keys``.
        chunk_size: tiles hold at most ``chunk_size**2`` similarities; a block holds at most ``chunk_size``
            queries.

    Returns:
        ``(scores, ids)``, both ``(N_q, k)``: float32 similarities in ranking order and the ids of the neighbours;
        empty slots hold ``-inf`` and ``-1``.

    Example:
        >>> import torch
        >>> gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        >>> scores, ids = sharded_knn(torch.tensor([[2.0, 0.1]]), 2, gallery, torch.tensor([10, 11, 12]))
        >>> ids.tolist()
        [[10, 12]]
    """
    scores, ids, _ = sharded_neighbours(queries, k, gallery, gallery_ids, query_keys, gallery_keys, None, chunk_size)
    return scores, ids


def sharded_neighbours(
    queries: Tensor,
    k: int,
    gallery: Tensor,
    gallery_ids: Tensor,
    query_keys: Tensor | None = None,
    gallery_keys: Tensor | None = None,
    gallery_values: Tensor | None = None,
    chunk_size: int = 8192,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """:func:`sharded_knn` that also brings back ``gallery_values`` of the neighbours, such as their labels.

    Args:
        queries: as :func:`sharded_knn`.
        k: as :func:`sharded_knn`.
        gallery: as :func:`sharded_knn`.
        gallery_ids: as :func:`sharded_knn`.
        query_keys: as :func:`sharded_knn`.
        gallery_keys: as :func:`sharded_knn`.
        gallery_values: ``(N_g, V)`` integers that travel with each gallery item, or ``None``.
        chunk_size: as :func:`sharded_knn`.

    Returns:
        ``(scores, ids, values)``: ``values`` ``(N_q, k, V)``, ``-1`` in empty slots, or ``None``.
    """
    width = None if gallery_values is None else tuple(gallery_values.shape[1:])
    raise_on_every_process(_search_error(queries, gallery, gallery_ids, query_keys, gallery_keys, gallery_values))
    check_same_on_every_process({
        "k": k, "chunk_size": chunk_size, "embedding dimension": queries.shape[1],
        "query_keys given": query_keys is not None, "gallery_values shape": width,
    })
    check_positive_int("chunk_size", chunk_size)
    sizes = [gather_sizes(len(queries), queries.device), gather_sizes(len(gallery), queries.device)]
    check_k(k, sum(sizes[1]))
    dtype = _widest(queries, gallery)
    # A shard's search breaks ties by position in the shard, which must then be id order.
    order = gallery_ids.argsort()
    unit_queries = normalize(queries.to(dtype), "queries")
    unit_gallery = normalize(_rows(gallery, order).to(dtype), "gallery")
    values = gallery_ids[:, None] if gallery_values is None else torch.cat([gallery_ids[:, None], gallery_values], 1)
    values, gallery_keys = values[order], None if gallery_keys is None else gallery_keys[order]
    tiles = tile_side(sum(sizes[0]), chunk_size), tile_side(sum(sizes[1]), chunk_size)
    scores = torch.full((len(queries), k), float("-inf"), device=queries.device)
    found = torch.full((len(queries), k, values.shape[1]), -1, dtype=torch.long, device=queries.device)
    for start, block_scores, block_values in _merged_blocks(
        unit_queries, query_keys, k, unit_gallery, gallery_keys, values.long(), tiles
    ):
        scores[start : start + len(block_scores)] = block_scores
        found[start : start + len(block_scores)] = block_values
    return scores, found[..., 0], None if gallery_values is None else found[..., 1:]


def sharded_retrieval_metrics(
    embeddings: Tensor,
    labels: Tensor,
    indexes: Tensor,
    is_query: Tensor | None = None,
    is_gallery: Tensor | None = None,
    cameras: Tensor | None = None,
    metrics: str | Sequence[str] = ("recall", "precision", "map_at_r", "r_precision", "map"),
    k: Sequence[int] = (1, 2, 4, 8),
    chunk_size: int = 8192,
) -> dict[str, Tensor]:
    """:func:`~lit_metric.functional.retrieval.retrieval_metrics` of the items of all processes, each process
    holding its own: the same protocol and the same values, bitwise, with no process holding all the embeddings.

    A collective call: every process makes it, with the same ``metrics``, ``k`` and ``chunk_size``, and gets the
    result. A process may hold no items. Bad input on any process is a ValueError on every process.

    Args:
        embeddings: ``(N_p, D)`` floating embeddings of this process's items; dtypes are promoted to the widest.
        labels: ``(N_p,)`` integer labels.
        indexes: ``(N_p,)`` dataset indices in ``[0, 2**32 - 1)``, each item once over all processes; they order the
            items as the single-process call's positions do, so ties rank by ascending index.
        is_query: ``(N_p,)`` bool, as in ``retrieval_metrics``; given on every process or on none.
        is_gallery: ``(N_p,)`` bool, likewise.
        cameras: ``(N_p,)`` integer camera ids, likewise.
        metrics: names from :data:`~lit_metric.functional.retrieval.RETRIEVAL_METRICS`, or one name; ``recall``
            or ``cmc``, not both.
        k: cut-offs of ``recall``, ``precision`` and ``cmc``.
        chunk_size: tiles of similarities hold at most ``chunk_size**2`` values.

    Returns:
        As ``retrieval_metrics``, on every process.
    """
    try:
        metrics = metric_names(metrics)
        check_options(metrics, k)
        check_items(embeddings, labels, indexes, is_query, is_gallery, cameras)
        check_positive_int("chunk_size", chunk_size)
        error = _id_error("indexes", indexes)
    except ValueError as bad:
        error = str(bad)
    raise_on_every_process(error)
    metrics, k = tuple(metrics), tuple(sorted(set(k)))
    check_same_on_every_process({
        "metrics": metrics, "k": k, "chunk_size": chunk_size, "embedding dimension": embeddings.shape[1],
        "is_query or is_gallery given": (is_query, is_gallery) != (None, None), "cameras given": cameras is not None,
    })
    device = labels.device
    queries_from_gallery = is_query is None and is_gallery is not None
    is_query, is_gallery = resolve_roles(is_query, is_gallery, len(labels), device)
    counts = gather_objects((int(is_query.sum()), int(is_gallery.sum()), bool((is_query & is_gallery).any())))
    num_queries, num_gallery = sum(count[0] for count in counts), sum(count[1] for count in counts)
    # The same numbers on every process, so the same error, if any.
    check_sizes(num_queries, num_gallery, any(count[2] for count in counts), k, queries_from_gallery)

    labels, indexes = labels.long(), indexes.long()
    keys = indexes if cameras is None else _camera_keys(labels, cameras.long())
    dtype = _widest(embeddings)
    units = normalize(embeddings.to(dtype))
    queries, gallery = is_query.nonzero().squeeze(1), is_gallery.nonzero().squeeze(1)
    # A shard's search breaks ties by position in the shard, which must then be dataset order.
    gallery = gallery[indexes[gallery].argsort()]
    query_labels, query_keys = labels[queries], keys[queries]
    shard = _Shard(_rows(units, gallery), labels[gallery], keys[gallery], indexes[gallery])

    same_label, same_key = shard.counts(query_labels, query_keys)
    num_relevant = same_label - same_key
    singleton = same_label - is_gallery[queries].long() == 0
    scored = num_relevant > 0
    needs_r = any(name in metrics for name in ("map_at_r", "r_precision"))
    largest_r = max(gather_objects(int(num_relevant.max()) if len(num_relevant) else 0))
    search_k = max(max(k), largest_r if needs_r else 0)

    scored_queries = queries[scored]
    num_scored = sum(gather_objects(len(scored_queries)))
    totals = dict.fromkeys(_log_names(metrics, k), Fraction(0))
    # Products of the single-process search's shape: all its queries, the whole gallery.
    tiles = tile_side(num_queries, chunk_size), tile_side(num_gallery, chunk_size)
    values = torch.stack([shard.indexes, shard.labels], dim=1)
    scored_labels, scored_relevant = labels[scored_queries], num_relevant[scored]
    scored_units = _rows(units, scored_queries)
    for start, _, found in _merged_blocks(
        scored_units, keys[scored_queries], search_k, shard.units, shard.keys, values, tiles
    ):
        rows = slice(start, start + len(found))
        match = (found[..., 0] >= 0) & (found[..., 1] == scored_labels[rows, None])
        for name, per_query in neighbour_metrics(match, scored_relevant[rows], metrics, k).items():
            totals[name] += exact_sum(per_query)
    if "map" in metrics:
        totals["map"] = exact_sum(shard.average_precision(
            scored_units, scored_labels, keys[scored_queries], (num_scored, num_gallery), chunk_size
        ))
    everyone = gather_objects(totals)
    out = {name: exact_mean(sum(process[name] for process in everyone), num_scored) for name in totals}
    local = (int(scored.sum()), int((~scored & ~singleton).sum()), int(singleton.sum()))
    # Counts are float like the metrics, as retrieval_metrics gives them.
    for name, count in zip(
        ("num_queries", "num_skipped_queries", "num_singleton_queries"), map(sum, zip(*gather_objects(local)))
    ):
        out[name] = torch.tensor(float(count))
    return out


class _Shard:
    """This process's gallery items, their unit rows, labels, exclusion keys and dataset indexes, and the parts of
    the sharded metrics that each process computes over its shard for the queries of every process."""

    def __init__(self, units: Tensor, labels: Tensor, keys: Tensor, indexes: Tensor) -> None:
        self.units, self.labels, self.keys, self.indexes = units, labels, keys, indexes
        self.sorted_labels, self.sorted_keys = labels.sort().values, keys.sort().values

    def counts(self, query_labels: Tensor, query_keys: Tensor) -> tuple[Tensor, Tensor]:
        """``(N_q,)`` numbers of gallery items, over all shards, of the label and of the exclusion key of each of
        this process's queries."""
        counts = query_labels.new_zeros(len(query_labels), 2)
        for owner, start, (labels, keys) in blocks_of_every_process([query_labels, query_keys], _COUNT_ROWS):
            local = torch.stack([_count(self.sorted_labels, labels), _count(self.sorted_keys, keys)], dim=1)
            total = sum_to(local, owner)
            if total is not None:
                counts[start : start + len(total)] = total
        return counts[:, 0], counts[:, 1]

    def average_precision(
        self, queries: Tensor, labels: Tensor, keys: Tensor, totals: tuple[int, int], chunk_size: int
    ) -> Tensor:
        """``(N_q,)`` float64 full-ranking average precision of this process's ``(N_q, D)`` unit ``queries``, each
        with a relevant item; ``totals`` are the numbers of such queries and of gallery items over all processes.

        For each block of queries, every process finds the relevant items in its shard, all processes share them
        (their ranking keys), and every process counts the items of its shard that rank above each of them; the
        counts summed on the block's owner are the relevant items' ranks."""
        row_side, column_side = average_precision_tiles(*totals, chunk_size)
        out = torch.empty(len(queries), dtype=torch.float64, device=queries.device)
        for owner, start, (block, block_labels, block_keys) in blocks_of_every_process(
            [queries, labels, keys], row_side
        ):
            scores = similarities(block, self.units, row_side, column_side)
            scores[equal_key_pairs(block_keys, self.keys, len(block))[0]] = float("-inf")
            ranking = ranking_keys(scores, self.indexes.expand_as(scores))
            query, item = ((self.labels == block_labels[:, None]) & (scores > float("-inf"))).nonzero().unbind(1)
            mine = torch.stack([query, ranking[query, item]], dim=1)
            relevant = gather_rows(mine, gather_sizes(len(mine), mine.device))
            ranks = sum_to(_count_above(ranking, relevant), owner)
            if ranks is not None:
                query, rank = relevant[:, 0], ranks + 1
                order = (query * (totals[1] + 1) + rank).argsort()
                out[start : start + len(block)] = average_precision(query[order], rank[order], len(block))
        return out


def _merged_blocks(
    queries: Tensor,
    query_keys: Tensor | None,
    k: int,
    gallery: Tensor,
    gallery_keys: Tensor | None,
    values: Tensor,
    tiles: tuple[int, int],
) -> Iterator[tuple[int, Tensor, Tensor]]:
    """The global top-``k`` of each block of this process's unit ``queries``, in order: ``(start, scores (B, k),
    values (B, k, V))`` with the ``(N_g, V)`` ``values`` of the neighbours, whose first column holds their ids. Every
    process searches its shard for every block of every process, in ``tiles``-shaped products."""
    row_side, column_side = tiles
    local_k, empty = min(k, len(gallery)), empty_key()
    for owner, start, block in blocks_of_every_process([queries] + ([] if query_keys is None else [query_keys]),
                                                       row_side):
        candidates = torch.full((len(block[0]), k, 1 + values.shape[1]), -1, dtype=torch.long, device=values.device)
        candidates[..., 0] = empty
        if local_k:
            scores, positions = search_tiles(
                block[0], local_k, gallery, block[1] if len(block) > 1 else None, gallery_keys, row_side, column_side
            )
            found = positions >= 0
            taken = values[positions.clamp(min=0)]
            candidates[:, :local_k, 0] = torch.where(found, ranking_keys(scores, taken[..., 0]), empty)
            candidates[:, :local_k, 1:] = torch.where(found[..., None], taken, -1)
        gathered = gather_to(candidates, owner)
        if gathered is None:
            continue
        candidates = torch.cat(gathered, dim=1)
        best = candidates[..., 0].topk(k, dim=1).indices
        chosen = candidates.gather(1, best[..., None].expand(-1, -1, candidates.shape[2]))
        yield start, ranked_keys(chosen[..., 0])[0], chosen[..., 1:]


def _rows(x: Tensor, rows: Tensor) -> Tensor:
    """``x[rows]``, or ``x`` itself when ``rows`` are all its rows in order, as in leave-one-out on items in dataset
    order: indexing would copy every embedding."""
    return x if torch.equal(rows, torch.arange(len(x), device=rows.device)) else x[rows]


def _count(sorted_reference: Tensor, values: Tensor) -> Tensor:
    """``(len(values),)`` number of entries of ``sorted_reference`` equal to each of ``values``."""
    return torch.searchsorted(sorted_reference, values, right=True) - torch.searchsorted(sorted_reference, values)


def _count_above(ranking: Tensor, relevant: Tensor) -> Tensor:
    """``(M,)`` number of keys in row ``relevant[:, 0]`` of the ``(B, N_g)`` ``ranking`` above ``relevant[:, 1]``."""
    query, key = relevant.unbind(1)
    if ranking.shape[1] == 0 or len(query) == 0:
        return torch.zeros_like(query)
    counts = torch.bincount(query, minlength=len(ranking))
    slot = torch.arange(len(query), device=query.device) - (counts.cumsum(0) - counts)[query]
    probes = torch.full((len(ranking), int(counts.max())), torch.iinfo(torch.long).max, device=query.device)
    probes[query, slot] = key
    at_or_below = torch.searchsorted(ranking.sort(dim=1).values, probes, right=True)
    return (ranking.shape[1] - at_or_below)[query, slot]


def _log_names(metrics: Sequence[str], k: Sequence[int]) -> list[str]:
    """Log names of the metrics, in the order that ``retrieval_metrics`` gives them."""
    names = [f"{name}@{cut}" for name in ("recall", "precision", "cmc") if name in metrics for cut in k]
    return names + [name for metric, name in (("map_at_r", "map@r"), ("r_precision", "r_precision"), ("map", "map"))
                    if metric in metrics]


def _widest(*tensors: Tensor) -> torch.dtype:
    """The widest dtype of ``tensors`` over all processes."""
    everyone = gather_objects([x.dtype for x in tensors])
    return reduce(torch.promote_types, [dtype for dtypes in everyone for dtype in dtypes])


def _camera_keys(labels: Tensor, cameras: Tensor) -> Tensor:
    """Exclusion keys equal exactly for items of one label and camera, on every process: ``label x C + camera``
    with ``C`` one more than the largest camera id of all processes."""
    mine = (int(cameras.max()), int(labels.abs().max())) if len(labels) else (-1, 0)
    largest = gather_objects(mine)
    num_cameras, largest_label = max(c for c, _ in largest) + 1, max(label for _, label in largest)
    if largest_label > (2**62) // num_cameras:
        raise ValueError(f"`labels` must be at most {(2**62) // num_cameras} in magnitude with {num_cameras} cameras")
    return labels * num_cameras + cameras


def _id_error(name: str, ids: Tensor) -> str | None:
    if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= _ID_LIMIT):
        return f"`{name}` must lie in [0, {_ID_LIMIT}) to break ties in a sharded search, got {int(ids.min())} to " \
               f"{int(ids.max())}"
    return None


def _search_error(
    queries: Tensor,
    gallery: Tensor,
    ids: Tensor,
    query_keys: Tensor | None,
    gallery_keys: Tensor | None,
    values: Tensor | None,
) -> str | None:
    """The first thing wrong with this process's arguments of :func:`sharded_neighbours`, or ``None``."""
    try:
        for name, x in (("queries", queries), ("gallery", gallery)):
            check_floating(name, x)
            if x.ndim != 2:
                raise ValueError(f"`{name}` must have shape (N, D), got shape {tuple(x.shape)}")
            if x.numel():
                check_finite(name, x)
        if gallery.shape[1] != queries.shape[1]:
            raise ValueError(f"`gallery` must have the embedding dimension of `queries` ({queries.shape[1]}), got "
                             f"shape {tuple(gallery.shape)}")
        if (query_keys is None) != (gallery_keys is None):
            raise ValueError("`query_keys` and `gallery_keys` must be given together, got only one of them")
        expected = [("gallery_ids", ids, len(gallery)), ("query_keys", query_keys, len(queries)),
                    ("gallery_keys", gallery_keys, len(gallery)), ("gallery_values", values, len(gallery))]
        for name, x, size in expected:
            if x is not None and (x.is_floating_point() or x.dtype == torch.bool or len(x) != size or
                                  x.ndim != (2 if name == "gallery_values" else 1)):
                shape = f"({size}, V)" if name == "gallery_values" else f"({size},)"
                raise ValueError(f"`{name}` must be an integer tensor of shape {shape}, got {x.dtype} of shape "
                                 f"{tuple(x.shape)}")
        return _id_error("gallery_ids", ids)
    except ValueError as bad:
        return str(bad)
