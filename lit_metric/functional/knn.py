"""Exact k-nearest-neighbour search by cosine similarity, tile by tile, with a running threshold per query.

Ranking rule: gallery items are ranked by descending cosine similarity (in float32), and items with exactly equal
similarity by ascending gallery position, so rankings are deterministic. Exclusion rule: a pair of items with equal
*exclusion keys* is never ranked; in leave-one-out the default key is the item's position, so an item never retrieves
itself but an exact duplicate of it still counts.

The similarity matrix is computed in equal tiles of at most ``chunk_size`` rows and columns, one matrix product each.
In leave-one-out the matrix is symmetric and only the tiles on and above the diagonal are computed: each serves its
rows as queries and, transposed, its columns. Memory holds unit-length float32 copies of the queries and the gallery
(``N x D x 4`` bytes; none with ``normalized=True``), up to three tiles (``3 x 8192**2 x 4`` bytes, 0.8 GB, at
most) with their group maxima, and the ``(N_q, k)`` neighbour lists, plus the candidates of a slice of a tile: few
once thresholds have risen, at most a quarter of a tile's values when a whole tile ties, e.g. for collapsed
embeddings. The products are IEEE float32 whatever the caller set (:func:`float32_products`): TF32, which
``torch.set_float32_matmul_precision("high")`` allows on GPUs, and autocast would round the scores and reorder
near-ties.

Neighbours are picked from a tile without sorting it. Every query keeps a *threshold*, a lower bound of the
similarity of its final ``k``-th neighbour: the ``k``-th best similarity found so far. The columns of a tile are cut
into groups and one pass takes each group's maximum; only the groups whose maximum reaches the query's threshold are
read again. As thresholds rise, that pass dismisses nearly all of a tile. A query's first tiles, up to three at
once, set its threshold to the ``k``-th largest maximum of unions of a few groups, which ``k`` items reach; the
``k``-th best of three tiles is a tighter bound than of one, so the later tiles pass fewer candidates. On a CPU with
a C compiler, a compiled scan (:mod:`lit_metric.functional._scan`) replaces the maxima and the second read: it reads
each tile once and emits the entries that reach their row's threshold and, in leave-one-out, their column's; a
query's first tile alone then sets its first threshold. Both paths find bitwise the same neighbours.

Neighbours are held as int64 keys that order as (similarity, -position), so a single ``topk`` over the keys merges
new candidates with the ones kept, ties included, exactly. Scores are float32 matrix products. All tiles of a search
have one shape, so every score comes out of the same kernel and exact duplicates score exactly alike wherever they
sit; another ``chunk_size`` may round the last bit differently, so tilings agree on scores to about 1e-7.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from lit_metric.functional._checks import check_finite, check_k, check_matrix, check_positive_int
from lit_metric.functional._scan import TileScan, tile_scan
from lit_metric.functional.norms import unit_rows

__all__ = ["cosine_knn", "float32_products", "normalize"]

# Smaller groups gather fewer values per candidate; larger ones make fewer maxima. 8 was fastest at N = 60,000.
_MAX_GROUP = 8
# Groups merged into one value per tile when a query's first tiles set its threshold; 4 was fastest at N = 60,000.
_FIRST_UNION = 4
# Tiles that set a query's first threshold together, each held in its own buffer. Three cut the candidates per query
# from 184 to 121 at N = 60,000 (k = 49) and the search time by 3-7% in side-by-side runs; four were no faster.
_FIRST_TILES = 3
# With the compiled scan one first tile was faster (4.27 against 4.48 s at N = 60,000): candidates cost it little,
# and the group maxima of each further first tile are one more read of it.
_FIRST_TILES_SCANNED = 1
# Rows of a tile are taken in this many slices, which bounds the candidate arrays to a quarter of the tile when all of
# it passes. Fewer, larger slices synchronise a GPU less often: 1,000,000 items on an H200 with chunk_size 32768 took
# 10 s, against 57 s in slices of 2**24 candidates.
_SLICES_PER_TILE = 4


def cosine_knn(
    queries: Tensor,
    k: int,
    gallery: Tensor | None = None,
    query_keys: Tensor | None = None,
    gallery_keys: Tensor | None = None,
    chunk_size: int = 8192,
    normalized: bool = False,
    validate_args: bool = True,
) -> tuple[Tensor, Tensor]:
    """Exact top-``k`` gallery items of every query by cosine similarity, in ranking order.

    Args:
        queries: ``(N_q, D)`` floating embeddings.
        k: number of neighbours, ``1 <= k <= N_g``.
        gallery: ``(N_g, D)`` floating embeddings; ``None`` searches ``queries`` against themselves (leave-one-out),
            computing only half of the similarity matrix.
        query_keys: ``(N_q,)`` exclusion keys; pairs with equal keys are never ranked. Leave-one-out defaults
            to the item position, so an item never retrieves itself.
        gallery_keys: ``(N_g,)`` exclusion keys of the gallery; must be ``None`` in leave-one-out.
        chunk_size: tiles of similarities are at most ``chunk_size`` on a side (the fewest equal tiles that cover
            the queries, and the gallery), ``>= 1``.
        normalized: ``queries`` and ``gallery`` are already rows of :func:`normalize` (unit length, float32,
            contiguous) and are used as they are, e.g. a gallery normalised once for many searches. Rankings equal
            those of the raw embeddings with ``normalized=False``.
        validate_args: check that ``queries`` and ``gallery`` are finite and, with ``normalized``, unit rows: a pass
            over each. A caller that checked them once, e.g. a gallery normalised once for many searches, skips it.

    Returns:
        ``(scores, indices)``, both ``(N_q, k)``: float32 similarities in ranking order and gallery positions.
        Slots left empty by exclusions hold score ``-inf`` and index ``-1``.
    """
    symmetric = gallery is None
    inputs = {"queries": queries} if symmetric else {"queries": queries, "gallery": gallery}
    if validate_args:
        for name, x in inputs.items():
            check_matrix(name, x)
    if not symmetric and gallery.shape[1] != queries.shape[1]:
        raise ValueError(
            f"`gallery` must have the embedding dimension of `queries` ({queries.shape[1]}), "
            f"got shape {tuple(gallery.shape)}"
        )
    check_k(k, len(queries if symmetric else gallery))
    check_positive_int("chunk_size", chunk_size)
    if normalized:
        for name, x in inputs.items():
            if x.dtype != torch.float32 or not x.is_contiguous():
                raise ValueError(
                    f"`{name}` must be contiguous float32 rows of `normalize` when `normalized` is True, got "
                    f"dtype {x.dtype}{'' if x.is_contiguous() else ', not contiguous'}"
                )
            if validate_args:
                _check_unit_rows(name, x)
        q, g = queries, queries if symmetric else gallery
    else:
        q = normalize(queries, "queries")
        g = q if symmetric else normalize(gallery, "gallery")
    num_queries, gallery_size = len(q), len(g)
    if symmetric:
        if gallery_keys is not None:
            raise ValueError("`gallery_keys` must be None when `gallery` is None (leave-one-out)")
        query_keys = torch.arange(num_queries, device=q.device) if query_keys is None else query_keys
        gallery_keys = query_keys
    elif (query_keys is None) != (gallery_keys is None):
        raise ValueError("`query_keys` and `gallery_keys` must be given together, got only one of them")
    if query_keys is not None:
        for name, keys, size in (("query_keys", query_keys, num_queries), ("gallery_keys", gallery_keys, gallery_size)):
            if keys.shape != (size,):
                raise ValueError(f"`{name}` must have shape ({size},), one key per item, got {tuple(keys.shape)}")

    # Tiles of one shape: every similarity then comes out of the same matrix-product kernel, so that exact duplicates
    # score exactly alike wherever they sit (products of other shapes may round the last bit differently).
    row_side = tile_side(num_queries, chunk_size)
    column_side = row_side if symmetric else tile_side(gallery_size, chunk_size)
    return search_tiles(q, k, None if symmetric else g, query_keys, gallery_keys, row_side, column_side)


def search_tiles(
    queries: Tensor,
    k: int,
    gallery: Tensor | None,
    query_keys: Tensor | None,
    gallery_keys: Tensor | None,
    row_side: int,
    column_side: int,
) -> tuple[Tensor, Tensor]:
    """:func:`cosine_knn` of checked unit rows in tiles of ``(row_side, column_side)``, the search that it and the
    sharded search (:mod:`lit_metric.functional.sharded`) share: a similarity's float32 bits depend on the tile shape
    only, so searches that agree on it score every pair alike.

    Args:
        queries: ``(N_q, D)`` rows of :func:`normalize`.
        k: neighbours, ``1 <= k <= N_g``.
        gallery: ``(N_g, D)`` rows of :func:`normalize`, or ``None`` for leave-one-out (``row_side`` must then
            equal ``column_side``).
        query_keys: ``(N_q,)`` exclusion keys, or ``None`` (with ``gallery_keys``).
        gallery_keys: ``(N_g,)`` exclusion keys; in leave-one-out ``query_keys`` serve as both.
        row_side: tile height, at least ``N_q`` or a multiple of 8 (as :func:`tile_side` makes).
        column_side: tile width, a multiple of 8 above 8 (as :func:`tile_side` makes); ``row_side`` in
            leave-one-out.

    Returns:
        ``(scores, indices)``, both ``(N_q, k)``, as :func:`cosine_knn`.
    """
    symmetric = gallery is None
    q, g = queries, queries if symmetric else gallery
    num_queries, gallery_size = len(q), len(g)
    if symmetric:
        gallery_keys = query_keys
    group = _group_size(column_side, k)
    row_tiles, column_tiles = -(-num_queries // row_side), -(-gallery_size // column_side)
    excluded = None if query_keys is None else equal_key_pairs(query_keys, gallery_keys, row_side)
    function = tile_scan() if q.device.type == "cpu" else None
    scan = None
    if function is not None:
        threads = torch.get_num_threads()
        # Candidates of both directions and all threads hold at most a quarter of a tile's values; a range of rows
        # must hold one row's worth.
        scan = TileScan(function, max(column_side, row_side * column_side // (8 * threads)), threads)
    # Buffers reused for every tile: a fresh allocation this large would be paged in again for each.
    buffers = [
        torch.empty(row_side, column_side, dtype=torch.float32, device=q.device)
        for _ in range(min(_FIRST_TILES if scan is None else _FIRST_TILES_SCANNED, column_tiles))
    ]
    neighbours = _Neighbours(row_tiles * row_side, k, group, row_side * column_side, len(buffers), q.device, scan)
    # Backwards, so that in leave-one-out each query meets its own row of tiles before it meets them as columns.
    for row_tile in reversed(range(row_tiles)) if symmetric else range(row_tiles):
        row_start = row_tile * row_side
        rows = _tile_rows(q, row_start, row_side)
        strip = range(row_tile if symmetric else 0, column_tiles)
        # The first tiles of a row at once: they set its queries' first thresholds together.
        for batch in [strip[: len(buffers)], *([column_tile] for column_tile in strip[len(buffers) :])]:
            tiles = []
            for column_tile, buffer in zip(batch, buffers):
                column_start = column_tile * column_side
                columns = rows if symmetric and column_tile == row_tile else _tile_rows(g, column_start, column_side)
                with float32_products(q.device):
                    tile = torch.mm(rows, columns.T, out=buffer)
                # Zero rows pad the last tiles; they are never ranked.
                tile[:, gallery_size - column_start :] = float("-inf")
                tile[num_queries - row_start :] = float("-inf")
                if excluded is not None:
                    chunk_rows, chunk_columns = excluded[row_tile]
                    inside = (chunk_columns >= column_start) & (chunk_columns < column_start + column_side)
                    tile[chunk_rows[inside], chunk_columns[inside] - column_start] = float("-inf")
                tiles.append(tile)
            # In leave-one-out a tile off the diagonal also serves its columns as queries, its rows as their items.
            both = [symmetric and column_tile != row_tile for column_tile in batch]
            neighbours.offer(tiles, row_start, [column_tile * column_side for column_tile in batch], both)
    scores, indices = neighbours.ranked()
    return scores[:num_queries], indices[:num_queries]


def similarities(queries: Tensor, gallery: Tensor, row_side: int, column_side: int) -> Tensor:
    """``(N_q, N_g)`` float32 similarities of unit rows (:func:`normalize`), computed in products of
    ``(row_side, column_side)`` with ``N_q <= row_side``, zero rows padding the last ones, so that each value has the
    bits of any other product of that shape: the full-ranking metrics rank whole rows of them."""
    rows = _tile_rows(queries, 0, row_side)
    out = torch.empty(len(queries), len(gallery), dtype=torch.float32, device=queries.device)
    for start in range(0, len(gallery), column_side):
        with float32_products(queries.device):
            tile = torch.mm(rows, _tile_rows(gallery, start, column_side).T)
        out[:, start : start + column_side] = tile[: len(queries), : len(gallery) - start]
    return out


@contextmanager
def float32_products(device: torch.device) -> Iterator[None]:
    """Matrix products on ``device`` in IEEE float32 inside the block: autocast off and, on GPUs, no TF32, whatever
    the caller set; the caller's settings come back on leaving. Exact scores need it, as TF32 keeps 10 bits of
    mantissa."""
    matmul, on_gpu = torch.backends.cuda.matmul, device.type == "cuda"
    # torch >= 2.9 sets TF32 per backend; mixing that with the older flag makes torch refuse to report the precision.
    flag, ieee = ("fp32_precision", "ieee") if hasattr(matmul, "fp32_precision") else ("allow_tf32", False)
    previous = getattr(matmul, flag)
    if on_gpu:
        setattr(matmul, flag, ieee)
    try:
        with torch.autocast(device_type=device.type, enabled=False):
            yield
    finally:
        if on_gpu:
            setattr(matmul, flag, previous)


def normalize(x: Tensor, name: str = "embeddings") -> Tensor:
    """``(N, D)`` rows scaled to unit length (:func:`~lit_metric.functional.norms.unit_rows`), in float32 and
    row-major, so that every tile's product takes the same kernel path. Rows of any finite magnitude rank alike:
    float64 rows are normalised before they are rounded to float32, so even 1e-300 or 1e300 come out of unit length.

    Raises:
        ValueError: naming ``name`` when a value is NaN or inf.
    """
    check_finite(name, x)
    return unit_rows(x, torch.float32).contiguous()


def _check_unit_rows(name: str, x: Tensor) -> None:
    # normalize leaves all-zero rows at zero; any other length would rank by dot product, not cosine.
    norms = x.norm(dim=1)
    if bool(((norms - 1).abs() > 1e-3).logical_and_(norms != 0).any()):
        raise ValueError(f"`{name}` must be rows of unit length when `normalized` is True, as `normalize` makes")


def equal_key_pairs(query_keys: Tensor, gallery_keys: Tensor, rows_per_chunk: int) -> list[tuple[Tensor, Tensor]]:
    """For each chunk of ``rows_per_chunk`` queries, ``(rows in the chunk, gallery positions)`` of its pairs with
    equal keys.

    Found by binary search in the sorted gallery keys, so the cost is ``O((N_q + N_g) log N_g)`` plus the number
    of pairs, against ``O(N_q N_g)`` for comparing every pair; the tiles are then masked by index.
    """
    sorted_keys, order = gallery_keys.sort()
    start = torch.searchsorted(sorted_keys, query_keys)
    count = torch.searchsorted(sorted_keys, query_keys, right=True) - start
    rows = torch.repeat_interleave(count)
    rank_in_run = torch.arange(len(rows), device=rows.device) - (count.cumsum(0) - count)[rows]
    columns = order[start[rows] + rank_in_run]
    sizes = torch.bincount(rows // rows_per_chunk, minlength=-(-len(query_keys) // rows_per_chunk)).tolist()
    return list(zip((rows % rows_per_chunk).split(sizes), columns.split(sizes)))


class _Neighbours:
    """The best ``k`` neighbours found so far of every query, as keys, and every query's threshold."""

    def __init__(
        self,
        num_queries: int,
        k: int,
        group: int,
        tile_size: int,
        tiles_per_offer: int,
        device: torch.device,
        scan: TileScan | None = None,
    ) -> None:
        self.k, self.group = k, group
        self.maxima = [
            torch.empty(tile_size // group, dtype=torch.float32, device=device) for _ in range(tiles_per_offer)
        ]
        self.empty = empty_key()
        self.keys = torch.full((num_queries, k), self.empty, dtype=torch.int64, device=device)
        self.threshold = torch.full((num_queries,), float("-inf"), dtype=torch.float32, device=device)
        # The torch path's threshold masks; the compiled scan compares in place.
        self.mask = torch.empty(tile_size // group, dtype=torch.bool, device=device) if scan is None else None
        self.scan = scan

    def offer(
        self, tiles: list[Tensor], query_start: int, gallery_starts: list[int], both: list[bool] | None = None
    ) -> None:
        """Take the candidates of ``(B_q, B_g)`` tiles of the same queries: rows are queries from ``query_start`` on,
        columns gallery items from the tile's gallery start on. ``B_g`` is a multiple of the group size. Queries
        without a threshold get their first one from all the tiles. A tile flagged in ``both`` then also offers its
        columns as queries from its gallery start, its rows as their items from ``query_start`` (leave-one-out)."""
        both = both or [False] * len(tiles)
        num_queries, num_groups = len(tiles[0]), tiles[0].shape[1] // self.group
        threshold = self.threshold[query_start : query_start + num_queries]
        fresh = (threshold == float("-inf")).nonzero().squeeze(1) if num_groups * len(tiles) >= self.k else []
        # The compiled scan needs no maxima; the torch path reads a tile's candidates through them.
        all_maxima = (
            [_group_maxima(tile, self.group, out) for tile, out in zip(tiles, self.maxima)]
            if self.scan is None or len(fresh)
            else []
        )
        if len(fresh):
            everyone = len(fresh) == num_queries
            threshold[fresh] = _first_threshold([m if everyone else m[fresh] for m in all_maxima], self.k)
        if self.scan is not None:
            for tile, gallery_start, columns_too in zip(tiles, gallery_starts, both):
                self._take_scanned(tile, query_start, gallery_start, columns_too)
            return
        for tile, maxima, gallery_start in zip(tiles, all_maxima, gallery_starts):
            self._take(tile, maxima, query_start, gallery_start)
        for tile, gallery_start, columns_too in zip(tiles, gallery_starts, both):
            if columns_too:
                self.offer([tile.T], gallery_start, [query_start])

    def _take_scanned(self, tile: Tensor, query_start: int, gallery_start: int, columns_too: bool) -> None:
        """Merge the items of ``tile`` that reach their query's threshold, found by the compiled scan: of its rows
        and, with ``columns_too``, of its columns, in one read of the tile."""
        num_queries, width = tile.shape
        row_floor = self._floor(query_start, query_start + num_queries)
        column_floor = self._floor(gallery_start, gallery_start + width) if columns_too else None
        for rows, columns in self.scan(tile, row_floor, column_floor):
            query, item, score = rows
            self._merge(query_start, num_queries, query, ranking_keys(score, item + gallery_start))
            if columns is not None:
                query, order = columns[0].sort()
                item, score = columns[1][order], columns[2][order]
                self._merge(gallery_start, width, query, ranking_keys(score, item + query_start))

    def _take(self, tile: Tensor, maxima: Tensor, query_start: int, gallery_start: int) -> None:
        """Merge the items of ``tile`` that reach their query's threshold, found through the tile's group ``maxima``."""
        num_queries, width = tile.shape
        num_groups = width // self.group
        # Slices of rows bound the candidate arrays when most of a tile passes, e.g. for collapsed embeddings.
        rows_per_slice = -(-num_queries // _SLICES_PER_TILE)
        # (query, group, member) view: indexing it with (query, group) pairs gathers whole groups without the index
        # arithmetic that a flat gather needs, which cost more than the gather itself.
        members = tile.unflatten(1, (self.group, num_groups)).transpose(1, 2)
        for start in range(0, num_queries, rows_per_slice):
            stop = min(start + rows_per_slice, num_queries)
            threshold = self.threshold[query_start + start : query_start + stop]
            # Written into a contiguous buffer: nonzero is several times faster on one, and a transposed tile's maxima
            # are transposed.
            mask = self.mask[: (stop - start) * num_groups].view(stop - start, num_groups)
            query, group = torch.ge(maxima[start:stop], threshold[:, None], out=mask).nonzero().unbind(1)
            scores = members[start:stop][query, group]
            floor = self._floor(query_start + start, query_start + stop)[query]
            kept = (scores >= floor[:, None]).view(-1).nonzero().squeeze(1)
            candidate, rank = kept // self.group, kept % self.group
            keys = ranking_keys(scores.view(-1)[kept], group[candidate] + rank * num_groups + gallery_start)
            self._merge(query_start + start, stop - start, query[candidate], keys)

    def _floor(self, start: int, stop: int) -> Tensor:
        """The least score that queries ``start:stop`` take: their thresholds, but the lowest finite value while a
        threshold is still -inf, which keeps out the -inf of padding and exclusions."""
        return self.threshold[start:stop].clamp(min=torch.finfo(torch.float32).min)

    def _merge(self, query_start: int, num_queries: int, query: Tensor, keys: Tensor) -> None:
        """Keep the best ``k`` of the kept keys and the new ``keys`` of local queries ``query`` (ascending)."""
        if len(query) == 0:
            return
        counts = torch.bincount(query, minlength=num_queries)
        slot = torch.arange(len(query), device=query.device) - (counts.cumsum(0) - counts)[query]
        # Rows without new keys are merged too: in a slice nearly every row has some, and indexing rows costs more.
        pending = torch.full((num_queries, int(counts.max())), self.empty, dtype=torch.int64, device=keys.device)
        pending[query, slot] = keys
        rows = slice(query_start, query_start + num_queries)
        # Unsorted: several times faster, and only the smallest kept key is needed until the end.
        best = torch.cat([self.keys[rows], pending], dim=1).topk(self.k, dim=1, sorted=False).values
        self.keys[rows] = best
        self.threshold[rows] = torch.maximum(self.threshold[rows], key_scores(best.amin(dim=1)))

    def ranked(self) -> tuple[Tensor, Tensor]:
        """``(scores, positions)`` of every query's neighbours in ranking order; empty slots are ``-inf``, ``-1``."""
        return ranked_keys(self.keys)


_LAST_POSITION = 2**32 - 1


def _group_maxima(tile: Tensor, group: int, out: Tensor) -> Tensor:
    """``(B_q, B_g / group)`` maxima of the column groups of a tile, written into the flat buffer ``out``; group ``j``
    holds columns ``j``, ``j + B_g / group``, ... so that the maximum is a reduction over a middle dimension, which
    vectorises. (A fresh output would be paged in again for every tile.)"""
    num_queries, width = tile.shape
    num_groups = width // group
    out = out[: num_queries * num_groups]
    if tile.stride(1) == 1:
        return torch.amax(tile.unflatten(1, (group, num_groups)), dim=1, out=out.view(num_queries, num_groups))
    # A transposed tile: reduce in its stored layout, where the same groups are rows, then transpose the result.
    stored = out.view(num_groups, num_queries)
    return torch.amax(tile.T.unflatten(0, (group, num_groups)), dim=0, out=stored).T


def _first_threshold(maxima: list[Tensor], k: int) -> Tensor:
    """``(B_q,)`` lower bounds of the ``k``-th best similarity of each query in some tiles, from their ``(B_q, G)``
    group maxima: the ``k``-th largest maximum of unions of up to ``_FIRST_UNION`` groups per tile, as ``k`` unions
    reach it, so ``k`` items do (groups left over from whole unions are left out; a bound from fewer items is still a
    bound). While ``k`` is much smaller than ``G`` the best items of a tile rarely share a union, so the bound is
    barely lower than with single groups, and the ``topk`` over fewer values took 0.10 s instead of 0.26 s at
    N = 60,000 with one tile."""
    num_groups = maxima[0].shape[1]
    union = _FIRST_UNION * len(maxima)
    while union > 1 and num_groups // union * len(maxima) < k:
        union //= 2
    used = num_groups // union * union
    unions = [m[:, :used].unflatten(1, (union, used // union)).amax(dim=1) for m in maxima]
    return torch.cat(unions, dim=1).topk(k, dim=1, sorted=False).values.amin(dim=1)


def ranking_keys(scores: Tensor, positions: Tensor) -> Tensor:
    """int64 keys that order as ``(score, -position)``: float32 bits made monotonic in the high half, the position
    reversed in the low half."""
    bits = (scores + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into 0.0, which compares equal to it
    ordered = torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).long()
    return (ordered << 32) + (_LAST_POSITION - positions)


def key_scores(keys: Tensor) -> Tensor:
    """The float32 scores of :func:`ranking_keys`."""
    ordered = (keys >> 32).int()
    return torch.where(ordered >= 0, ordered, ordered ^ 0x7FFFFFFF).view(torch.float32)


def empty_key() -> int:
    """The key of an empty slot: score ``-inf``, below every other key."""
    return int(ranking_keys(torch.tensor([float("-inf")]), torch.tensor([_LAST_POSITION]))[0])


def ranked_keys(keys: Tensor) -> tuple[Tensor, Tensor]:
    """``(scores, positions)`` of ``(N_q, k)`` keys of :func:`ranking_keys`, each row in ranking order (descending
    keys); empty slots are ``-inf``, ``-1``."""
    keys = keys.sort(dim=1, descending=True).values
    scores, positions = key_scores(keys), _LAST_POSITION - (keys & _LAST_POSITION)
    positions[scores == float("-inf")] = -1
    return scores, positions


def tile_side(size: int, chunk_size: int) -> int:
    """Side of the fewest equal tiles of at most ``chunk_size`` that cover ``size`` items; above ``_MAX_GROUP``, a
    multiple of it, so that whole groups fill a tile."""
    cap = chunk_size if chunk_size <= _MAX_GROUP else chunk_size // _MAX_GROUP * _MAX_GROUP
    side = -(-size // -(-size // cap))
    return side if side <= _MAX_GROUP else -(-side // _MAX_GROUP) * _MAX_GROUP


def _tile_rows(x: Tensor, start: int, side: int) -> Tensor:
    """``side`` rows of ``x`` from ``start``, zero rows past its end (copied only for a last, partial tile)."""
    rows = x[start : start + side]
    if len(rows) == side:
        return rows
    return torch.cat([rows, rows.new_zeros(side - len(rows), x.shape[1])])


def _group_size(tile_side: int, k: int) -> int:
    """Columns per group: the largest power of two up to ``_MAX_GROUP`` that divides the tile side and leaves at least
    ``2 k`` groups, so that a query's first tile can set its threshold."""
    size = _MAX_GROUP
    while size > 1 and (tile_side % size or tile_side // size < 2 * k):
        size //= 2
    return size
