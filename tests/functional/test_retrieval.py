"""Specification of the retrieval core: exact search, the tie and exclusion rules, and every metric against
plain-loop references, torchmetrics' retrieval functions and pytorch-metric-learning."""

from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from torchmetrics.functional.retrieval import (
    retrieval_average_precision,
    retrieval_hit_rate,
    retrieval_precision,
    retrieval_r_precision,
)

from lit_metric.functional.knn import cosine_knn
from lit_metric.functional.retrieval import (
    average_precision,
    cosine_average_precision,
    exact_mean,
    exact_sum,
    hit_rate_at_k,
    map_at_r,
    precision_at_k,
    r_precision,
    retrieval_metrics,
)

ALL = ("recall", "precision", "map_at_r", "r_precision", "map")
# Every metric under re-ID's names: the hit rate as cmc@K.
REID = ("cmc", "precision", "map_at_r", "r_precision", "map")


def reference_rankings(x, labels, is_query=None, is_gallery=None, cameras=None):
    """Per query, by plain loops: its valid gallery items ranked by (-similarity, position), and its class status."""
    n = len(labels)
    is_query = [True] * n if is_query is None else is_query.tolist()
    is_gallery = [True] * n if is_gallery is None else is_gallery.tolist()
    x = F.normalize(x.double(), dim=1)
    out = []
    for q in range(n):
        if not is_query[q]:
            continue
        others = [g for g in range(n) if is_gallery[g] and g != q]
        valid = [
            g for g in others
            if cameras is None or not (labels[g] == labels[q] and cameras[g] == cameras[q])
        ]
        ranking = sorted(valid, key=lambda g: (-float(x[q] @ x[g]), g))
        singleton = not any(labels[g] == labels[q] for g in others)
        out.append((q, ranking, [bool(labels[g] == labels[q]) for g in ranking], singleton))
    return out


def reference_metrics(rankings, ks, hit_rate="recall"):
    sums, scored, skipped, singletons = {}, 0, 0, 0
    for _, _, match, singleton in rankings:
        r = sum(match)
        if r == 0:
            singletons += singleton
            skipped += not singleton
            continue
        scored += 1
        values = {}
        for k in ks:
            values[f"{hit_rate}@{k}"] = float(any(match[:k]))
            values[f"precision@{k}"] = sum(match[:k]) / k
        values["r_precision"] = sum(match[:r]) / r
        values["map@r"] = sum(sum(match[: i + 1]) / (i + 1) for i in range(r) if match[i]) / r
        values["map"] = sum(sum(match[: i + 1]) / (i + 1) for i in range(len(match)) if match[i]) / r
        for name, value in values.items():
            sums[name] = sums.get(name, 0.0) + value
    out = {name: total / scored for name, total in sums.items()}
    out.update(num_queries=scored, num_skipped_queries=skipped, num_singleton_queries=singletons)
    return out


def assert_metrics_equal(actual, expected):
    assert set(actual) == set(expected)
    for name, value in expected.items():
        assert actual[name].item() == pytest.approx(value, abs=1e-6), name


def random_set(n=60, d=6, classes=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(classes, (n,), generator=g)
    x = torch.randn(classes, d, generator=g)[labels] + torch.randn(n, d, generator=g, dtype=torch.float64)
    return x, labels, g


def test_hand_worked_metrics():
    # Two queries over a ranked list of five; True marks a relevant neighbour.
    match = torch.tensor([[True, False, True, False, False], [False, True, True, True, False]])
    relevant = torch.tensor([2, 4])
    assert hit_rate_at_k(match, 1).tolist() == [1.0, 0.0]
    assert precision_at_k(match, 4).tolist() == [0.5, 0.75]
    assert r_precision(match, relevant).tolist() == [0.5, 0.75]
    # Query 0: (1/1) / 2. Query 1, first four: (1/2 + 2/3 + 3/4) / 4.
    assert map_at_r(match, relevant).tolist() == pytest.approx([0.5, (1 / 2 + 2 / 3 + 3 / 4) / 4])


def test_hand_worked_leave_one_out_with_duplicate_and_singleton():
    x = torch.tensor([[1.0, 0], [1.0, 0], [0.8, 0.6], [0, 1.0], [0.6, 0.8]])
    labels = torch.tensor([0, 0, 1, 1, 2])
    out = retrieval_metrics(x, labels, metrics=ALL, k=(1, 2))
    # 0 -> 1 (duplicate, same class, similarity 1) then 2; 1 -> 0 then 2; 2 -> 0, 1, 4, 3 (its match is last);
    # 3 -> 4 then 2; item 4 is the only one of class 2 and is not scored.
    assert out["num_singleton_queries"] == 1 and out["num_queries"] == 4
    assert out["recall@1"] == pytest.approx(2 / 4)
    assert out["recall@2"] == pytest.approx(3 / 4)
    assert out["precision@2"] == pytest.approx((1 / 2 + 1 / 2 + 0 + 1 / 2) / 4)
    assert out["map@r"] == pytest.approx(2 / 4)
    assert out["map"] == pytest.approx((1 + 1 + 1 / 4 + 1 / 2) / 4)
    assert_metrics_equal(out, reference_metrics(reference_rankings(x, labels), (1, 2)))


def test_hand_worked_camera_exclusion():
    # Queries 0-2, gallery 3-7. Identity 5 seen by camera 0 in the gallery is excluded for query 0, whose
    # true neighbour in rank is therefore item 4.
    x = torch.tensor([[1.0, 0], [0, 1.0], [1.0, 1.0], [1.0, 0], [0.6, 0.8], [0.8, 0.6], [0, 1.0], [1.0, 0.1]])
    labels = torch.tensor([5, 6, 7, 5, 5, 8, 6, 9])
    cameras = torch.tensor([0, 1, 0, 0, 1, 0, 1, 1])
    is_query = torch.arange(8) < 3
    out = retrieval_metrics(x, labels, is_query=is_query, cameras=cameras, metrics=REID, k=(1, 3))
    # Query 0 ranks 7, 5, 4 (item 3 excluded): first match at rank 3. Query 1's only match shares its
    # camera: skipped. Query 2 has no identity-7 item in the gallery: singleton.
    assert out["num_queries"] == 1 and out["num_skipped_queries"] == 1 and out["num_singleton_queries"] == 1
    assert out["cmc@1"] == 0 and out["cmc@3"] == 1
    assert out["map"] == pytest.approx(1 / 3) and out["map@r"] == 0
    expected = reference_metrics(reference_rankings(x, labels, is_query, ~is_query, cameras), (1, 3), "cmc")
    assert_metrics_equal(out, expected)


@pytest.mark.parametrize("mode", ["leave_one_out", "query_gallery", "reid"])
@pytest.mark.parametrize("chunk_size", [5, 4096])
def test_random_sets_equal_plain_loop_reference(mode, chunk_size):
    # Small classes, so that some queries lose every match to the camera rule and some have none at all.
    x, labels, g = random_set(n=70, classes=25, seed=1)
    is_query = is_gallery = cameras = None
    if mode != "leave_one_out":
        is_query = torch.rand(70, generator=g) < 0.4
        # Some items are both: they must not retrieve themselves.
        is_gallery = ~is_query | (torch.rand(70, generator=g) < 0.3)
    if mode == "reid":
        cameras = torch.randint(2, (70,), generator=g)
    ks = (1, 3, 10)
    metrics, hit_rate = (REID, "cmc") if mode == "reid" else (ALL, "recall")
    out = retrieval_metrics(x, labels, is_query, is_gallery, cameras, metrics=metrics, k=ks, chunk_size=chunk_size)
    expected = reference_metrics(reference_rankings(x, labels, is_query, is_gallery, cameras), ks, hit_rate)
    assert_metrics_equal(out, expected)
    if mode == "reid":
        assert expected["num_skipped_queries"] > 0 and expected["num_singleton_queries"] > 0


# Powers of two near the ends of each dtype's range (float16: 2e-7, among its subnormals, and 0.9 of its largest).
FAR_SCALES = [
    *((torch.float32, scale) for scale in (2.0**-100, 2.0**-50, 2.0**64, 2.0**127)),
    *((torch.float16, scale) for scale in (2.0**-23, 2.0**15)),
    *((torch.bfloat16, scale) for scale in (2.0**-100, 2.0**100)),
    *((torch.float64, scale) for scale in (2.0**-1000, 2.0**1000)),
]


@pytest.mark.parametrize(("dtype", "scale"), FAR_SCALES, ids=[f"{d}-{s:.1e}"[6:] for d, s in FAR_SCALES])
def test_metrics_at_any_finite_magnitude_equal_those_of_the_same_values_at_scale_one(dtype, scale):
    # At 1e-15 F.normalize left float32 rows shorter than 1 and MAP@R came out 0.043 instead of 0.031.
    x, labels, _ = random_set(n=80, classes=8, seed=5)
    embeddings = (x / x.abs().max() * 1.75 * scale).to(dtype)
    # Dividing by a power of two is exact: the same values at magnitude 1, in float32 at least.
    at_one = embeddings.to(torch.promote_types(dtype, torch.float32)) / scale
    is_query = torch.arange(80) % 3 == 0
    for roles in ({}, {"is_query": is_query}):
        out = retrieval_metrics(embeddings, labels, metrics=ALL, **roles)
        expected = retrieval_metrics(at_one, labels, metrics=ALL, **roles)
        assert {name: value.item() for name, value in out.items()} == {
            name: value.item() for name, value in expected.items()
        }


def test_autocast_does_not_round_the_similarities():
    # Under CPU autocast a plain matrix product is bfloat16, which reorders near-ties; every metric stays exact.
    x, labels, _ = random_set(n=300, classes=30, seed=4)
    x = x.float()
    expected = retrieval_metrics(x, labels, metrics=ALL)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (x @ x.T).dtype == torch.bfloat16
        out = retrieval_metrics(x, labels, metrics=ALL)
    assert {name: value.item() for name, value in out.items()} == {name: value.item() for name, value in expected.items()}


@pytest.mark.parametrize("chunk_size", [16, 8192])
@pytest.mark.parametrize("queries", [3, 90])
def test_full_ranking_average_precision_ranks_exact_duplicates_by_position(chunk_size, queries):
    # 90 copies of 6 vectors: every similarity ties with others. Products of some shapes round duplicates apart, which
    # must not reorder them; the reference is the search's ranking, ties by position.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 64, generator=g)[torch.randint(6, (90,), generator=g)]
    labels = torch.randint(4, (90,), generator=g)
    gallery = slice(None) if queries == 90 else slice(queries, None)
    keys = torch.arange(90)
    _, neighbours = cosine_knn(x[:queries], len(x[gallery]) - (queries == 90), x[gallery], keys[:queries], keys[gallery])
    match = labels[gallery][neighbours] == labels[:queries, None]
    ranks = torch.arange(1, match.shape[1] + 1, dtype=torch.float64)
    expected = (match.cumsum(1) / ranks * match).sum(1) / match.sum(1)
    ap = cosine_average_precision(
        x[:queries], labels[:queries], x[gallery], labels[gallery], keys[:queries], keys[gallery], chunk_size
    )
    torch.testing.assert_close(ap, expected, rtol=0, atol=1e-12, equal_nan=True)


def test_per_query_scores_equal_torchmetrics_functional():
    x, labels, _ = random_set(n=40, classes=6, seed=2)
    x[7] = x[3]  # an exact duplicate
    rankings = reference_rankings(x, labels)
    _, neighbours = cosine_knn(x, 39)
    match = labels[neighbours] == labels[:, None]
    relevant = match.sum(dim=1)
    ours = {
        "hit": hit_rate_at_k(match, 4), "precision": precision_at_k(match, 4),
        "r_precision": r_precision(match, relevant), "map@r": map_at_r(match, relevant),
    }
    for q, ranking, target, _ in rankings:
        assert neighbours[q].tolist() == ranking
        # torchmetrics treats a score <= 0 as not retrieved (PR #3160), so raw cosines would drop every
        # negative-similarity item; strictly positive scores decreasing with rank give the same list intact.
        preds = torch.arange(len(ranking), 0, -1, dtype=torch.float32)
        target = torch.tensor(target)
        r = int(target.sum())
        assert ours["hit"][q] == retrieval_hit_rate(preds, target, top_k=4)
        assert ours["precision"][q].item() == pytest.approx(retrieval_precision(preds, target, top_k=4).item())
        assert ours["r_precision"][q].item() == pytest.approx(retrieval_r_precision(preds, target).item())
        # torchmetrics' AP@R averages over the hits in the top R; MAP@R divides by R, i.e. also by R-precision.
        map_r = retrieval_average_precision(preds, target, top_k=r) * retrieval_r_precision(preds, target)
        assert ours["map@r"][q].item() == pytest.approx(map_r.item(), abs=1e-6)
    full = retrieval_metrics(x, labels, metrics=("map",), k=(1,))
    expected_map = torch.stack([
        retrieval_average_precision(torch.arange(len(t), 0, -1, dtype=torch.float32), torch.tensor(t))
        for _, _, t, _ in rankings
    ]).mean()
    assert full["map"].item() == pytest.approx(expected_map.item(), abs=1e-6)


def test_map_at_r_and_r_precision_equal_pytorch_metric_learning():
    from pytorch_metric_learning.distances import CosineSimilarity
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    g = torch.Generator().manual_seed(3)
    labels = torch.randint(40, (400,), generator=g)
    labels[:3] = torch.tensor([100, 101, 102])  # singleton classes, left out by both
    x = torch.randn(103, 32, generator=g)[labels.clamp(max=102)] + 1.2 * torch.randn(400, 32, generator=g)
    calculator = AccuracyCalculator(
        include=("mean_average_precision_at_r", "r_precision"), k="max_bin_count", knn_func=CustomKNN(CosineSimilarity())
    )
    # With no reference set, pml searches the queries against themselves and drops each query's own index.
    expected = calculator.get_accuracy(x, labels)
    out = retrieval_metrics(x, labels, metrics=("map_at_r", "r_precision"), k=(1,), chunk_size=128)
    assert out["map@r"].item() == pytest.approx(expected["mean_average_precision_at_r"], abs=1e-6)
    assert out["r_precision"].item() == pytest.approx(expected["r_precision"], abs=1e-6)
    assert out["num_singleton_queries"] == 3


def test_bad_input_is_rejected_with_a_clear_message():
    x, labels = torch.randn(4, 3), torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match="gallery must hold at least one item"):
        retrieval_metrics(x, labels, is_query=torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="gallery must hold at least one item"):
        retrieval_metrics(x[:1], labels[:1], k=(1,))
    with pytest.raises(ValueError, match=r"every `k` must be at most the gallery size 3, got k=8"):
        retrieval_metrics(x, labels, k=(1, 8))
    with pytest.raises(ValueError, match=r"`k` must be at most the gallery size 2"):
        retrieval_metrics(x, labels, is_query=torch.tensor([True, True, False, False]), k=(3,))
    with pytest.raises(ValueError, match="`is_query` must select at least one item"):
        retrieval_metrics(x, labels, is_query=torch.zeros(4, dtype=torch.bool))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"embeddings": torch.zeros(0, 3), "labels": torch.zeros(0, dtype=torch.long)},
         r"`embeddings` must hold at least one item, got shape \(0, 3\)"),
        ({"is_gallery": torch.ones(4, dtype=torch.bool)},
         r"`is_gallery` must leave at least one item out as a query \(`is_query` is its complement\), got every item"),
    ],
)
def test_no_query_is_blamed_on_what_left_none(kwargs, match):
    # Both used to say "`is_query` must select at least one item", though no `is_query` was given.
    arguments = {"embeddings": torch.randn(4, 3), "labels": torch.tensor([0, 0, 1, 1]), "k": (1,), **kwargs}
    with pytest.raises(ValueError, match=match):
        retrieval_metrics(**arguments)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"metrics": ("recal",)}, r"`metrics` must be a non-empty subset of .*got \('recal',\)"),
        ({"metrics": ("recall", "cmc")}, "`metrics` must hold 'recall' or 'cmc', not both: they are one hit rate"),
        ({"k": ()}, "`k` must be a non-empty sequence of positive integers"),
        ({"k": (0, 1)}, "`k` must be a non-empty sequence of positive integers"),
        ({"labels": torch.tensor([0, 0, 1])}, r"`labels` must have shape \(4,\) to match `embeddings`, got shape \(3,\)"),
        ({"labels": torch.zeros(4, 1, dtype=torch.long)}, r"`labels` must have shape \(4,\)"),
        ({"labels": torch.tensor([0.0, 0.0, 1.0, 1.0])}, "`labels` must be an integer tensor, got dtype torch.float32"),
        ({"labels": torch.tensor([True, True, False, False])}, "`labels` must be an integer tensor, got dtype torch.bool"),
        ({"is_query": torch.tensor([1, 0, 0, 0])}, "`is_query` must be a bool tensor, got dtype torch.int64"),
        ({"is_gallery": torch.ones(3, dtype=torch.bool)}, r"`is_gallery` must have shape \(4,\) to match `embeddings`"),
        ({"cameras": torch.tensor([0, 1, 0])}, r"`cameras` must have shape \(4,\) to match `embeddings`"),
        ({"cameras": torch.tensor([0.0, 1.0, 0.0, 1.0])}, "`cameras` must be an integer tensor"),
        ({"embeddings": torch.full((4, 3), float("nan"))}, "`embeddings` must be finite"),
        ({"embeddings": torch.ones(4, 3, dtype=torch.long)}, "`embeddings` must be a floating-point tensor"),
    ],
)
def test_the_functional_checks_its_options_like_the_metric(kwargs, match):
    arguments = {"embeddings": torch.randn(4, 3), "labels": torch.tensor([0, 0, 1, 1]), "k": (1,), **kwargs}
    with pytest.raises(ValueError, match=match):
        retrieval_metrics(**arguments)


def test_exact_sum_is_the_exact_sum_in_any_order_and_over_any_split():
    g = torch.Generator().manual_seed(0)
    # Values of many magnitudes, as per-query metrics have, where float sums round differently in each order.
    values = torch.cat([torch.rand(500, generator=g, dtype=torch.float64) ** 20, torch.tensor([0.0, 1.0, 1e-300])])
    expected = sum(map(Fraction, values.tolist()))
    assert exact_sum(values) == expected == exact_sum(values.flip(0))
    assert exact_sum(values[:123]) + exact_sum(values[123:]) == expected
    assert exact_mean(expected, len(values)) == torch.tensor(float(expected / len(values))).float()
    assert exact_mean(Fraction(0), 0).isnan()


def test_average_precision_from_ranks_is_the_plain_definition_and_independent_of_the_other_queries():
    # Query 0: relevant items at ranks 1, 3, 7; query 1: none; query 2: one at rank 2.
    query, rank = torch.tensor([0, 0, 0, 2]), torch.tensor([1, 3, 7, 2])
    ap = average_precision(query, rank, 3)
    assert ap[0] == (1 / 1 + 2 / 3 + 3 / 7) / 3 and ap[1].isnan() and ap[2] == 1 / 2
    assert torch.equal(average_precision(query[:3], rank[:3], 1), ap[:1])
    assert torch.equal(average_precision(query[3:] - 2, rank[3:], 1), ap[2:])
