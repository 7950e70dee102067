"""Specification of the exact cosine k-nearest-neighbour search: ranking, ties, exclusions, tiling and symmetry.

Every test runs twice: with the compiled tile scan and with the torch path that replaces it where no C compiler is
available; both must find the same neighbours.
"""

import pytest
import torch
import torch.nn.functional as F

import lit_metric.functional.knn as knn
from lit_metric.functional import _scan
from lit_metric.functional.knn import cosine_knn


@pytest.fixture(autouse=True, params=["scan", "torch"])
def path(request, monkeypatch):
    if request.param == "torch":
        monkeypatch.setattr(knn, "tile_scan", lambda: None)
    elif _scan.tile_scan() is None:
        pytest.skip("no C compiler builds the tile scan here")
    return request.param


def brute_force(queries, k, gallery=None, query_keys=None, gallery_keys=None):
    """Neighbour positions by plain loops: valid gallery items sorted by (-similarity in float64, position)."""
    q = F.normalize(queries.double(), dim=1)
    g = q if gallery is None else F.normalize(gallery.double(), dim=1)
    if gallery is None:
        query_keys = gallery_keys = torch.arange(len(q)) if query_keys is None else query_keys
    rows = []
    for i in range(len(q)):
        valid = [j for j in range(len(g)) if query_keys is None or query_keys[i] != gallery_keys[j]]
        ranking = sorted(valid, key=lambda j: (-float(q[i] @ g[j]), j))[:k]
        rows.append(ranking + [-1] * (k - len(ranking)))
    return torch.tensor(rows)


def random_points(n, d=8, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("chunk_size", [7, 16, 48, 8192])
def test_leave_one_out_and_query_gallery_equal_brute_force(chunk_size):
    x = random_points(100)
    assert torch.equal(cosine_knn(x, 10, chunk_size=chunk_size)[1], brute_force(x, 10))
    queries, gallery = x[:37], x[37:]
    assert torch.equal(cosine_knn(queries, 5, gallery, chunk_size=chunk_size)[1], brute_force(queries, 5, gallery))


def test_scores_are_the_float32_cosine_similarities_in_ranking_order():
    x = random_points(50, seed=1).double()
    scores, neighbours = cosine_knn(x, 6, chunk_size=16)
    unit = F.normalize(x.float(), dim=1)
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores, (unit[:, None, :] * unit[neighbours]).sum(-1))
    assert bool((scores[:, :-1] >= scores[:, 1:]).all())


@pytest.mark.parametrize("caller", ["tf32", "ieee"])
def test_float32_products_turn_tf32_off_on_gpus_and_restore_the_caller_s_setting(caller):
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    try:
        matmul.fp32_precision = caller
        with knn.float32_products(torch.device("cuda")):
            assert matmul.fp32_precision == "ieee"
        assert matmul.fp32_precision == caller
        with pytest.raises(RuntimeError, match="inside"), knn.float32_products(torch.device("cuda")):
            raise RuntimeError("inside")
        assert matmul.fp32_precision == caller
        with knn.float32_products(torch.device("cpu")):
            assert matmul.fp32_precision == caller
    finally:
        matmul.fp32_precision = before


def test_the_ranking_does_not_depend_on_the_tiling():
    # Matrix products of other shapes may round the last bit differently, so scores are compared to 1e-6.
    x = random_points(203, seed=2)
    expected_scores, expected = cosine_knn(x, 20, chunk_size=8192)
    for chunk_size in (5, 16, 24, 64, 200):
        scores, neighbours = cosine_knn(x, 20, chunk_size=chunk_size)
        assert torch.equal(neighbours, expected)
        torch.testing.assert_close(scores, expected_scores, rtol=0, atol=1e-6)


def test_leave_one_out_computes_only_the_tiles_on_and_above_the_diagonal(monkeypatch):
    # 100 items in tiles of 16: 7 tiles a side, so 28 products instead of 49; a query/gallery search makes all 49.
    products = []
    monkeypatch.setattr(knn.torch, "mm", lambda *args, **kwargs: products.append(1) or torch.matmul(*args, **kwargs))
    x = random_points(100)
    symmetric = cosine_knn(x, 5, chunk_size=16)
    assert len(products) == 7 * 8 // 2
    products.clear()
    full = cosine_knn(x, 5, x, torch.arange(100), torch.arange(100), chunk_size=16)
    assert len(products) == 7 * 7
    assert torch.equal(symmetric[1], full[1])
    torch.testing.assert_close(symmetric[0], full[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("chunk_size", [2, 3, 100])
def test_ties_go_to_the_lowest_position_and_exact_duplicates_are_kept(chunk_size):
    # Exact duplicates make exact ties; small tiles put tied items in different tiles and across the cut.
    base = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [1.0, 1.0, 0]])
    x = base[torch.tensor([0, 1, 0, 2, 0, 1, 2, 0, 0, 1])]
    # Item 0 (e1): its duplicates 2, 4, 7, 8 tie at 1, then [1, 1, 0] items 3 and 6 tie; lowest positions win.
    assert cosine_knn(x, 3, chunk_size=chunk_size)[1][0].tolist() == [2, 4, 7]
    scores, neighbours = cosine_knn(x, 5, chunk_size=chunk_size)
    assert neighbours[0].tolist() == [2, 4, 7, 8, 3]
    assert scores[0, :4].tolist() == [1.0, 1.0, 1.0, 1.0]
    assert torch.equal(neighbours, brute_force(x, 5))


def test_exact_duplicates_in_different_tiles_score_alike_and_rank_by_position():
    # 72 items, 12 distinct vectors, in tiles of about 64: copies of a vector sit in different tiles, as rows and as
    # columns. (Tiles of 64 and 8 would compute some copies with a kernel for small products, which rounds apart.)
    generator = torch.Generator().manual_seed(5)
    which = torch.randint(12, (72,), generator=generator)
    x = torch.randn(12, 32, generator=generator)[which]
    for found in (cosine_knn(x, 40, chunk_size=64), cosine_knn(x[:30], 40, x, chunk_size=64)):
        scores, neighbours = found
        for row_scores, row in zip(scores.tolist(), neighbours.tolist()):
            first = {}
            for score, position in zip(row_scores, row):
                vector = int(which[position])
                assert first.setdefault(vector, (score, position))[0] == score
                assert first[vector][1] <= position
        # Equal scores come in ascending position.
        ties = (scores[:, 1:] == scores[:, :-1]) & (neighbours[:, 1:] < neighbours[:, :-1])
        assert not bool(ties.any())


@pytest.mark.parametrize("chunk_size", [2, 64])
def test_collapsed_embeddings_rank_by_position(chunk_size):
    # Every similarity ties, as with a collapsed network: each query gets the lowest other positions.
    _, neighbours = cosine_knn(torch.ones(9, 4), 4, chunk_size=chunk_size)
    assert neighbours.tolist() == [[p for p in range(9) if p != q][:4] for q in range(9)]


def test_collapsed_embeddings_in_bounded_slices(monkeypatch):
    # When every group of a tile passes, candidates are taken a few rows at a time; the ranking is unchanged.
    monkeypatch.setattr(knn, "_SLICES_PER_TILE", 16)
    x = torch.ones(300, 4)
    x[::7] = -1.0
    assert torch.equal(cosine_knn(x, 12, chunk_size=32)[1], brute_force(x, 12))


def test_exclusion_keys_leave_empty_slots():
    x = torch.eye(3)
    scores, neighbours = cosine_knn(x, 2, query_keys=torch.tensor([0, 0, 1]))
    # Items 0 and 1 share a key, so each has only item 2 left; item 2 sees both.
    assert neighbours.tolist() == [[2, -1], [2, -1], [0, 1]]
    assert scores[0, 1] == float("-inf")


def test_exclusion_keys_across_tiles_in_both_modes():
    x = random_points(90, seed=3)
    keys = torch.arange(90) % 11  # items 11 apart share a key, in different tiles
    assert torch.equal(cosine_knn(x, 9, query_keys=keys, chunk_size=16)[1], brute_force(x, 9, query_keys=keys))
    queries, gallery = x[:30], x[30:]
    found = cosine_knn(queries, 9, gallery, keys[:30], keys[30:], chunk_size=16)[1]
    assert torch.equal(found, brute_force(queries, 9, gallery, keys[:30], keys[30:]))


def test_k_equal_to_the_gallery_size_ranks_everything():
    x = random_points(40, seed=4)
    assert torch.equal(cosine_knn(x, 39, chunk_size=16)[1], brute_force(x, 39))


@pytest.mark.parametrize(
    ("tiles", "groups", "k"), [(1, 40, 3), (1, 42, 10), (1, 41, 11), (1, 40, 40), (3, 40, 10), (3, 10, 29)]
)
def test_a_first_threshold_is_reached_by_k_items_and_is_at_most_the_k_th_best(tiles, groups, k):
    # One tile: unions of 4 groups; of 4 with 2 groups left out; of 2 with 1 left out (41 // 4 < 11); single groups.
    # Three tiles: unions of 6 groups in each (3 unions of 12 per tile are fewer than 10); single groups.
    generator = torch.Generator().manual_seed(tiles + groups + k)
    parts = [torch.randn(50, groups * 8, generator=generator) for _ in range(tiles)]
    maxima = [knn._group_maxima(part, 8, torch.empty(part.numel() // 8)) for part in parts]
    threshold = knn._first_threshold(maxima, k)
    items = torch.cat(parts, dim=1)
    assert ((items >= threshold[:, None]).sum(dim=1) >= k).all()
    assert (threshold <= items.topk(k, dim=1).values[:, -1]).all()
    if groups // 2 * tiles < k:
        assert torch.equal(threshold, torch.cat(maxima, dim=1).topk(k, dim=1).values[:, -1])


def test_a_query_s_first_threshold_comes_from_its_first_tiles_at_once(monkeypatch, path):
    # 100 queries, 90 items, tiles of 16: 7 rows of 6 tiles; each row's first offer holds three tiles in torch, one
    # with the scan, later ones one.
    offers, offer = [], knn._Neighbours.offer

    def counted(self, tiles, *args):
        offers.append(len(tiles))
        return offer(self, tiles, *args)

    monkeypatch.setattr(knn._Neighbours, "offer", counted)
    queries, gallery = random_points(100), random_points(90, seed=1)
    assert torch.equal(cosine_knn(queries, 10, gallery, chunk_size=16)[1], brute_force(queries, 10, gallery))
    assert offers == ([3, 1, 1, 1] if path == "torch" else [1] * 6) * 7


def test_rows_normalised_once_search_exactly_like_the_raw_embeddings():
    queries, gallery = random_points(30, seed=8), random_points(50, seed=9)
    unit_queries, unit_gallery = knn.normalize(queries), knn.normalize(gallery)
    for raw, unit in (((queries,), (unit_queries,)), ((queries, gallery), (unit_queries, unit_gallery))):
        expected = cosine_knn(*raw[:1], 5, *raw[1:], chunk_size=16)
        found = cosine_knn(*unit[:1], 5, *unit[1:], chunk_size=16, normalized=True)
        assert torch.equal(found[0], expected[0]) and torch.equal(found[1], expected[1])
    with pytest.raises(ValueError, match="`gallery` must be contiguous float32 rows of `normalize`.*dtype torch.float64"):
        cosine_knn(unit_queries, 5, unit_gallery.double(), normalized=True)
    with pytest.raises(ValueError, match="`queries` must be contiguous float32 rows.*not contiguous"):
        cosine_knn(knn.normalize(queries.T).T, 5, normalized=True)
    with pytest.raises(ValueError, match="`gallery` must be rows of unit length when `normalized` is True"):
        cosine_knn(unit_queries, 5, 2 * unit_gallery, normalized=True)
    # normalize leaves an all-zero row at zero, and such rows are accepted.
    unit_gallery[3] = 0.0
    cosine_knn(unit_queries, 5, unit_gallery, normalized=True)


def test_keys_order_as_score_then_lower_position_and_decode_exactly():
    scores = torch.tensor([float("-inf"), -1.0, -1e-30, -0.0, 0.0, 1e-30, 0.5, 1.0, 1.0])
    positions = torch.tensor([0, 1, 2, 3, 4, 5, 6, 8, 7])
    keys = knn.ranking_keys(scores, positions)
    # -0.0 equals 0.0, so it ties with it and the lower position (3) ranks first: higher key.
    order = keys.argsort(descending=True)
    assert positions[order].tolist() == [7, 8, 6, 5, 3, 4, 2, 1, 0]
    assert torch.equal(knn.key_scores(keys), scores + 0.0)


@pytest.mark.parametrize("where", ["queries", "gallery"])
def test_non_finite_embeddings_are_value_errors(where):
    queries, gallery = torch.randn(4, 3), torch.randn(6, 3)
    {"queries": queries, "gallery": gallery}[where][1, 2] = float("nan")
    with pytest.raises(ValueError, match=f"`{where}` must be finite, found NaN or inf"):
        cosine_knn(queries, 2, gallery, chunk_size=4)


# Powers of two near the ends of the float32 and float64 ranges: the embeddings scale exactly, so the rows of
# normalize, and with them the search, must come out bitwise as at scale 1. Under F.normalize rows below its eps
# (1e-12) were shorter than 1 and ranked by dot product, and from 1e19 on float32 squared norms overflowed to inf.
FAR_SCALES = [
    *((torch.float32, scale) for scale in (2.0**-100, 2.0**-50, 2.0**64, 2.0**127)),  # 7.9e-31 ... 3.0e38 at most
    *((torch.float64, scale) for scale in (2.0**-1000, 2.0**1000)),  # 1e300 is beyond float32: normalised first
]


@pytest.mark.parametrize(("dtype", "scale"), FAR_SCALES, ids=[f"{d}-{s:.1e}"[6:] for d, s in FAR_SCALES])
def test_embeddings_of_any_finite_magnitude_rank_as_at_scale_one(dtype, scale):
    x = random_points(100, seed=10).to(dtype)
    x = x / x.abs().max() * 1.75  # 1.75 * 2**127 = 3.0e38
    expected = cosine_knn(x, 7, chunk_size=16), cosine_knn(x[:30], 5, x[30:], chunk_size=16)
    found = cosine_knn(x * scale, 7, chunk_size=16), cosine_knn(x[:30] * scale, 5, x[30:] * scale, chunk_size=16)
    for (scores, indices), (expected_scores, expected_indices) in zip(found, expected):
        assert torch.equal(indices, expected_indices) and torch.equal(scores, expected_scores)
    assert torch.equal(cosine_knn(x * scale, 7, chunk_size=16)[1], brute_force(x, 7))


def test_normalize_keeps_an_empty_set_empty():
    assert knn.normalize(torch.zeros(0, 4, dtype=torch.float64)).shape == (0, 4)


def test_bad_arguments_are_value_errors():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"`queries` must have shape \(N, D\), got shape \(4,\)"):
        cosine_knn(x[:, 0], 1)
    with pytest.raises(ValueError, match=r"`gallery` must have the embedding dimension of `queries` \(3\)"):
        cosine_knn(x, 1, torch.randn(5, 2))
    with pytest.raises(ValueError, match=r"`query_keys` must have shape \(4,\), one key per item, got \(3,\)"):
        cosine_knn(x, 1, query_keys=torch.arange(3))
    with pytest.raises(ValueError, match=r"`gallery_keys` must have shape \(5,\), one key per item"):
        cosine_knn(x, 1, torch.randn(5, 3), torch.arange(4), torch.arange(6))
    with pytest.raises(ValueError, match="`k` must be a positive integer, got 0"):
        cosine_knn(x, 0)
    with pytest.raises(ValueError, match="`k` must be between 1 and the gallery size 4"):
        cosine_knn(x, 5)
    with pytest.raises(ValueError, match="`gallery_keys` must be None"):
        cosine_knn(x, 1, gallery_keys=torch.arange(4))
    with pytest.raises(ValueError, match="`query_keys` and `gallery_keys` must be given together"):
        cosine_knn(torch.randn(2, 3), 1, torch.randn(4, 3), query_keys=torch.arange(2))
    with pytest.raises(ValueError, match="`chunk_size` must be a positive integer, got 0"):
        cosine_knn(x, 1, chunk_size=0)
    with pytest.raises(ValueError, match="`chunk_size` must be a positive integer, got 16.0"):
        cosine_knn(x, 1, chunk_size=16.0)
