"""Retrieval scoring on cosine similarity: the ranking metrics over the neighbour lists of :mod:`.knn`.

Rankings follow :func:`~lit_metric.functional.knn.cosine_knn`: descending cosine similarity, ties by ascending
gallery position, so a caller that orders items by dataset index gets ties broken by dataset index. A gallery item
is never ranked for a query that shares its *exclusion key* (:func:`exclusion_keys`): the item itself in
leave-one-out, and with cameras the (label, camera) pair, which removes same-identity same-camera items as in
Market-1501 and torchreid.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import torch
from torch import Tensor

from lit_metric.functional._checks import (
    check_finite,
    check_floating,
    check_positive_ints,
    describe,
)
from lit_metric.functional.knn import cosine_knn, equal_key_pairs, normalize, similarities, tile_side

__all__ = [
    "RETRIEVAL_METRICS",
    "check_items",
    "check_options",
    "check_sizes",
    "cosine_average_precision",
    "exclusion_keys",
    "hit_rate_at_k",
    "map_at_r",
    "metric_names",
    "precision_at_k",
    "r_precision",
    "resolve_roles",
    "retrieval_metrics",
]

RETRIEVAL_METRICS = ("recall", "precision", "map_at_r", "r_precision", "map", "cmc")


def cosine_average_precision(
    queries: Tensor,
    query_labels: Tensor,
    gallery: Tensor,
    gallery_labels: Tensor,
    query_keys: Tensor | None = None,
    gallery_keys: Tensor | None = None,
    chunk_size: int = 8192,
) -> Tensor:
    """Average precision of every query over the full ranking of the gallery.

    Needs the rank of every relevant item, so each query chunk sorts its full row of similarities: the cost is
    ``O(N_q N_g log N_g)``, against ``O(N_q N_g)`` for the ``k``-nearest-neighbour metrics.

    Args:
        queries: ``(N_q, D)`` floating embeddings.
        query_labels: ``(N_q,)`` integer labels.
        gallery: ``(N_g, D)`` floating embeddings.
        gallery_labels: ``(N_g,)`` integer labels.
        query_keys: ``(N_q,)`` exclusion keys, see :func:`cosine_knn`; ``None`` excludes nothing.
        gallery_keys: ``(N_g,)`` exclusion keys.
        chunk_size: bounds each chunk to about ``chunk_size**2 / 16`` similarities, as sorting them takes about
            16 times the memory of the similarities alone.

    Returns:
        ``(N_q,)`` float64 average precision; NaN for a query without a relevant gallery item.
    """
    q, g = normalize(queries, "queries"), normalize(gallery, "gallery")
    row_side, column_side = average_precision_tiles(len(q), len(g), chunk_size)
    if query_keys is not None:
        excluded = equal_key_pairs(query_keys, gallery_keys, row_side)
    out = [torch.empty(0, dtype=torch.float64, device=q.device)]
    for chunk, i in enumerate(range(0, len(q), row_side)):
        rows = slice(i, i + row_side)
        block = similarities(q[rows], g, row_side, column_side)
        if query_keys is not None:
            block[excluded[chunk]] = float("-inf")
        # Stable sort of rows in gallery order implements the tie rule.
        scores, order = block.sort(dim=1, descending=True, stable=True)
        hits = (gallery_labels[order] == query_labels[rows, None]) & (scores > float("-inf"))
        query, rank = hits.nonzero().unbind(1)
        out.append(average_precision(query, rank + 1, len(block)))
    return torch.cat(out)


def average_precision_tiles(num_queries: int, gallery_size: int, chunk_size: int) -> tuple[int, int]:
    """``(row_side, column_side)`` of the products of the full-ranking metric: rows hold about
    ``chunk_size**2 / 16`` similarities, as sorting them takes about 16 times their memory. Every search of the same
    queries and gallery, sharded or not, computes its similarities in products of this shape, so they agree bitwise."""
    rows = max(1, chunk_size * chunk_size // (16 * gallery_size))
    return tile_side(num_queries, rows), tile_side(gallery_size, chunk_size)


def average_precision(query: Tensor, rank: Tensor, num_queries: int) -> Tensor:
    """``(num_queries,)`` float64 average precision from the ranks of the relevant items.

    Args:
        query: ``(H,)`` query of each relevant item, ascending.
        rank: ``(H,)`` its 1-based rank, ascending within each query.
        num_queries: number of queries.

    Returns:
        The mean over each query's relevant items of (relevant items up to it) / (its rank); NaN for a query without
        any. Each query's terms are added in rank order (a cumulative sum), so its value does not depend on how
        queries are batched or how long the rows are: sharded and single-process results agree bitwise.
    """
    counts = torch.bincount(query, minlength=num_queries)
    slot = torch.arange(len(query), device=query.device) - (counts.cumsum(0) - counts)[query]
    terms = torch.zeros(num_queries, max(int(counts.max()) if len(query) else 0, 1), dtype=torch.float64,
                        device=query.device)
    terms[query, slot] = (slot + 1) / rank.double()
    return terms.cumsum(dim=1)[:, -1] / counts


def hit_rate_at_k(match: Tensor, k: int) -> Tensor:
    """Recall@K as hit rate: whether any of the first ``k`` neighbours is relevant.

    Args:
        match: ``(N_q, L)`` bool, ``L >= k``; ``match[q, i]`` says the ``i``-th neighbour of ``q`` is relevant.
        k: cut-off.

    Returns:
        ``(N_q,)`` float64 in ``{0, 1}``.
    """
    return match[:, :k].any(dim=1).double()


def precision_at_k(match: Tensor, k: int) -> Tensor:
    """Fraction of the first ``k`` neighbours that are relevant.

    Args:
        match: ``(N_q, L)`` bool, ``L >= k``.
        k: cut-off.

    Returns:
        ``(N_q,)`` float64.
    """
    return match[:, :k].sum(dim=1).double() / k


def r_precision(match: Tensor, num_relevant: Tensor) -> Tensor:
    """Fraction of the first ``R`` neighbours that are relevant, ``R`` being the query's number of relevant items.

    Args:
        match: ``(N_q, L)`` bool, ``L >= max(num_relevant)``.
        num_relevant: ``(N_q,)`` integer ``R >= 1`` per query.

    Returns:
        ``(N_q,)`` float64.
    """
    return (match & _first_r(match, num_relevant)).sum(dim=1) / num_relevant.double()


def map_at_r(match: Tensor, num_relevant: Tensor) -> Tensor:
    """MAP@R of Musgrave et al. (2020): ``(1/R) * sum_{i <= R} P@i * match_i`` per query.

    Args:
        match: ``(N_q, L)`` bool, ``L >= max(num_relevant)``.
        num_relevant: ``(N_q,)`` integer ``R >= 1`` per query.

    Returns:
        ``(N_q,)`` float64.
    """
    hits = match & _first_r(match, num_relevant)
    ranks = torch.arange(1, match.shape[1] + 1, device=match.device, dtype=torch.float64)
    return (hits.cumsum(dim=1) / ranks * hits).sum(dim=1) / num_relevant.double()


def retrieval_metrics(
    embeddings: Tensor,
    labels: Tensor,
    is_query: Tensor | None = None,
    is_gallery: Tensor | None = None,
    cameras: Tensor | None = None,
    metrics: str | Sequence[str] = ("recall", "precision", "map_at_r", "r_precision", "map"),
    k: Sequence[int] = (1, 2, 4, 8),
    chunk_size: int = 8192,
) -> dict[str, Tensor]:
    """Retrieval metrics of a set of items, each a query, a gallery item, or both.

    Without ``is_query`` and ``is_gallery`` every item is both (leave-one-out). Given one, the other defaults
    to its complement. An item never retrieves itself; with ``cameras``, nor any item of the same label and
    camera. A query counts as relevant the gallery items of its label that remain. A query with none is left
    out of every metric: counted in ``num_singleton_queries`` when no other item of its class is in the
    gallery, else in ``num_skipped_queries`` (all its matches share its camera).

    Args:
        embeddings: ``(N, D)`` floating embeddings.
        labels: ``(N,)`` integer class or identity labels.
        is_query: ``(N,)`` bool.
        is_gallery: ``(N,)`` bool.
        cameras: ``(N,)`` integer camera ids.
        metrics: names from :data:`RETRIEVAL_METRICS`, or one name. ``recall`` and ``cmc`` name one hit rate, under
            the names of deep metric learning (``recall@K``) and of re-ID (``cmc@K``): ask for one of them.
        k: cut-offs of ``recall``, ``precision`` and ``cmc``.
        chunk_size: tiles of similarities hold at most ``chunk_size**2`` values.

    Returns:
        Scalar float32 tensors: ``recall@K``, ``precision@K``, ``cmc@K`` for each ``K``, ``map@r``,
        ``r_precision``, ``map`` as requested (NaN when no query is scored), and the counts ``num_queries``
        (scored), ``num_skipped_queries`` and ``num_singleton_queries``. Ranking ties are broken by position.
    """
    metrics = metric_names(metrics)
    check_options(metrics, k)
    check_items(embeddings, labels, is_query=is_query, is_gallery=is_gallery, cameras=cameras)
    if len(labels) == 0:
        raise ValueError(f"`embeddings` must hold at least one item, got shape {tuple(embeddings.shape)}")
    queries_from_gallery = is_query is None and is_gallery is not None
    is_query, is_gallery = resolve_roles(is_query, is_gallery, len(labels), labels.device)
    queries, gallery = is_query.nonzero().squeeze(1), is_gallery.nonzero().squeeze(1)
    check_sizes(len(queries), len(gallery), bool((is_query & is_gallery).any()), k, queries_from_gallery)

    keys = exclusion_keys(labels, cameras)
    query_labels, gallery_labels = labels[queries], labels[gallery]
    same_label = _count_in(query_labels, gallery_labels)
    num_relevant = same_label - _count_in(keys[queries], keys[gallery])
    singleton = same_label - is_gallery[queries].long() == 0
    scored = num_relevant > 0

    needs_r = any(name in metrics for name in ("map_at_r", "r_precision"))
    search_k = max(max(k), int(num_relevant.max()) if needs_r else 0)
    # Indexing copies, which matters for a large gallery searched by a few queries: each set is indexed once at most.
    query_embeddings = embeddings if len(queries) == len(labels) else embeddings[queries]
    gallery_embeddings = embeddings if len(gallery) == len(labels) else embeddings[gallery]
    if len(queries) == len(gallery) == len(labels):
        _, neighbours = cosine_knn(embeddings, search_k, query_keys=keys, chunk_size=chunk_size)
    else:
        _, neighbours = cosine_knn(
            query_embeddings, search_k, gallery_embeddings, keys[queries], keys[gallery], chunk_size
        )
    match = (neighbours >= 0) & (gallery_labels[neighbours.clamp(min=0)] == query_labels[:, None])
    per_query = neighbour_metrics(match[scored], num_relevant[scored], metrics, k)
    if "map" in metrics:
        scored_queries = queries[scored]
        per_query["map"] = cosine_average_precision(
            query_embeddings if bool(scored.all()) else query_embeddings[scored], labels[scored_queries],
            gallery_embeddings, gallery_labels, keys[scored_queries], keys[gallery], chunk_size,
        )
    out = {name: exact_mean(exact_sum(values), len(values)) for name, values in per_query.items()}
    # Counts are float like the metrics, so Lightning logs them without a dtype warning.
    out["num_queries"] = scored.sum().float()
    out["num_skipped_queries"] = (~scored & ~singleton).sum().float()
    out["num_singleton_queries"] = singleton.sum().float()
    return out


def neighbour_metrics(
    match: Tensor, num_relevant: Tensor, metrics: Sequence[str], k: Sequence[int]
) -> dict[str, Tensor]:
    """Every requested metric but ``map`` for each query, keyed by log name.

    Args:
        match: ``(N_q, L)`` bool relevance of each query's neighbours in ranking order, ``L`` at least the largest
            cut-off and, for ``map_at_r`` and ``r_precision``, the largest ``R``.
        num_relevant: ``(N_q,)`` ``R >= 1`` per query.
        metrics: names from :data:`RETRIEVAL_METRICS`.
        k: cut-offs.

    Returns:
        ``(N_q,)`` float64 values per name.
    """
    per_query = {}
    for name, score in (("recall", hit_rate_at_k), ("precision", precision_at_k), ("cmc", hit_rate_at_k)):
        if name in metrics:
            per_query.update({f"{name}@{cut}": score(match, cut) for cut in k})
    if "map_at_r" in metrics:
        per_query["map@r"] = map_at_r(match, num_relevant)
    if "r_precision" in metrics:
        per_query["r_precision"] = r_precision(match, num_relevant)
    return per_query


def exact_sum(values: Tensor) -> Fraction:
    """The exact sum of ``(N,)`` finite float64 ``values``, as a fraction: unlike a float sum it does not depend on
    the order of the values, so sums over shards add up to the sum over all of them, bitwise.

    Each value is an integer mantissa times a power of two; the mantissas are summed per exponent in int64 (as two
    halves of 26 and 27 bits, so that 2**36 values cannot overflow) and the sums scaled in Python integers.
    """
    mantissas, exponents = torch.frexp(values.double())
    integers = (mantissas * 2.0**53).long()
    powers, group = torch.unique(exponents, return_inverse=True)
    sums = [torch.zeros(len(powers), dtype=torch.long, device=values.device).index_add_(0, group, half)
            for half in (integers >> 26, integers & (2**26 - 1))]
    total = Fraction(0)
    for power, high, low in zip(powers.tolist(), *(part.tolist() for part in sums)):
        total += Fraction((high << 26) + low) * Fraction(2) ** (power - 53)
    return total


def exact_mean(total: Fraction, count: int) -> Tensor:
    """``total / count`` as a float32 scalar tensor, rounded from the exact quotient (NaN when ``count`` is 0)."""
    return torch.tensor(float(total / count) if count else float("nan"), dtype=torch.float64).float()


def _first_r(match: Tensor, num_relevant: Tensor) -> Tensor:
    positions = torch.arange(match.shape[1], device=match.device)
    return positions < num_relevant[:, None]


def _count_in(values: Tensor, reference: Tensor) -> Tensor:
    """``(len(values),)`` number of entries of ``reference`` equal to each entry of ``values``."""
    reference = reference.sort().values
    return torch.searchsorted(reference, values, right=True) - torch.searchsorted(reference, values)


def metric_names(metrics: str | Sequence[str]) -> tuple[str, ...]:
    """``metrics`` as a tuple of names: one name is one metric, where ``tuple("recall")`` would be six letters."""
    return (metrics,) if isinstance(metrics, str) else tuple(metrics)


def check_options(metrics: Sequence[str], k: Sequence[int]) -> None:
    """Raise a ValueError unless ``metrics`` are known names and ``k`` are positive integer cut-offs."""
    unknown = sorted(set(metrics) - set(RETRIEVAL_METRICS))
    if unknown or not metrics:
        raise ValueError(f"`metrics` must be a non-empty subset of {RETRIEVAL_METRICS}, got {tuple(metrics)}")
    if "recall" in metrics and "cmc" in metrics:
        raise ValueError(
            "`metrics` must hold 'recall' or 'cmc', not both: they are one hit rate, named recall@K in deep metric "
            "learning and cmc@K in re-ID"
        )
    check_positive_ints("k", k)


def check_sizes(
    num_queries: int, num_gallery: int, shared: bool, k: Sequence[int], queries_from_gallery: bool = False
) -> None:
    """Raise a ValueError unless there is a query, a gallery item other than the query (``shared``: some item is
    both) and at least ``max(k)`` of them; ``queries_from_gallery`` says that the queries are the complement of a
    given ``is_gallery``."""
    gallery_size = num_gallery - int(shared)
    if num_queries == 0 and queries_from_gallery:
        raise ValueError(
            "`is_gallery` must leave at least one item out as a query (`is_query` is its complement), got every item "
            "in the gallery"
        )
    if num_queries == 0:
        raise ValueError("`is_query` must select at least one item, got no query")
    if gallery_size < 1:
        raise ValueError(
            f"the gallery must hold at least one item other than the query, got {num_gallery} gallery item(s)"
        )
    if max(k) > gallery_size:
        raise ValueError(f"every `k` must be at most the gallery size {gallery_size}, got k={max(k)}")


def check_items(
    embeddings: Tensor,
    labels: Tensor,
    indexes: Tensor | None = None,
    is_query: Tensor | None = None,
    is_gallery: Tensor | None = None,
    cameras: Tensor | None = None,
) -> None:
    """Raise a ValueError naming the argument unless ``embeddings`` is a finite floating ``(N, D)`` tensor,
    ``labels``, ``indexes`` and ``cameras`` (non-negative) are integer ``(N,)`` tensors and the flags bool ``(N,)``
    tensors; the optional ones may be ``None``."""
    check_floating("embeddings", embeddings)
    if embeddings.ndim != 2:
        raise ValueError(f"`embeddings` must have shape (N, D), got shape {tuple(embeddings.shape)}")
    check_finite("embeddings", embeddings)
    n = len(embeddings)
    for name, x, kind in (
        ("labels", labels, "an integer"),
        ("indexes", indexes, "an integer"),
        ("is_query", is_query, "a bool"),
        ("is_gallery", is_gallery, "a bool"),
        ("cameras", cameras, "an integer"),
    ):
        if x is None and name != "labels":
            continue
        if not isinstance(x, Tensor) or (x.dtype == torch.bool) != (kind == "a bool") or x.is_floating_point():
            raise ValueError(f"`{name}` must be {kind} tensor, got {describe(x)}")
        if x.shape != (n,):
            raise ValueError(f"`{name}` must have shape ({n},) to match `embeddings`, got shape {tuple(x.shape)}")
    if cameras is not None and bool((cameras < 0).any()):
        raise ValueError("`cameras` must be non-negative camera ids, found a negative value")


def exclusion_keys(labels: Tensor, cameras: Tensor | None = None) -> Tensor:
    """``(N,)`` keys for :func:`cosine_knn`: the item itself, or with ``cameras`` its (label, camera) pair.

    Args:
        labels: ``(N,)`` integer labels.
        cameras: ``(N,)`` integer camera ids, or ``None`` for leave-one-out by position.
    """
    if cameras is None:
        return torch.arange(len(labels), device=labels.device)
    return torch.unique(torch.stack([labels, cameras], dim=1), dim=0, return_inverse=True)[1]


def resolve_roles(
    is_query: Tensor | None, is_gallery: Tensor | None, n: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """``(is_query, is_gallery)``, both ``(n,)`` bool: neither given means every item is both (leave-one-out), and
    one given makes the other its complement. Given flags are ``(n,)`` bool tensors, as :func:`check_items` checks."""
    if is_query is None and is_gallery is None:
        everything = torch.ones(n, dtype=torch.bool, device=device)
        return everything, everything
    if is_query is None:
        return ~is_gallery, is_gallery
    if is_gallery is None:
        return is_query, ~is_query
    return is_query, is_gallery
