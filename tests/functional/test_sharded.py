"""Specification of lit_metric.functional.sharded: on 2 and 3 gloo processes, each holding an uneven shard of the
items (one of them none), the sharded search and metrics equal the single-process ones bitwise, for random and
clustered embeddings with exact duplicates and exact ties, leave-one-out, query/gallery and with cameras; bad input on
one process is a named error on every process."""

import pytest
import torch

from lit_metric.functional.knn import cosine_knn
from lit_metric.functional.retrieval import retrieval_metrics
from lit_metric.functional.sharded import sharded_knn, sharded_neighbours, sharded_retrieval_metrics

from _ddp import run_processes

K = (1, 3, 5)
# Every metric; cmc is recall@K under its re-ID name, and the two are not asked for together.
ALL = ("recall", "precision", "map_at_r", "r_precision", "map")
SETUPS = ("leave-one-out", "query/gallery", "cameras")


def make_items(kind, n=70, seed=0):
    """Embeddings, labels, query flags, cameras and the process of each item (never process 2)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(7, (n,), generator=g)
    if kind == "random":
        x = torch.randn(n, 6, generator=g)
    else:
        x = torch.randn(7, 6, generator=g)[labels] + 0.3 * torch.randn(n, 6, generator=g)
        # Exact duplicates spread over the processes, and one-hot rows whose similarities tie exactly (0 or 1).
        x[20:30] = x[3]
        x[40:52] = torch.eye(6).repeat(2, 1)
    owner = torch.randint(2, (n,), generator=g)
    return x, labels, torch.rand(n, generator=g) < 0.3, torch.randint(3, (n,), generator=g), owner


def setup_arguments(setup, is_query, cameras):
    return {"leave-one-out": {}, "query/gallery": {"is_query": is_query}, "cameras": {"cameras": cameras,
                                                                                       "is_query": is_query}}[setup]


def _search_everything(rank, world_size):
    out = {}
    for kind in ("random", "clustered"):
        x, labels, is_query, cameras, owner = make_items(kind)
        # Each process holds its items in an order of its own, not in dataset order.
        mine = (owner == rank).nonzero().squeeze(1).flip(0)
        for setup in SETUPS:
            local = {name: value[mine] for name, value in setup_arguments(setup, is_query, cameras).items()}
            out[kind, setup] = sharded_retrieval_metrics(
                x[mine], labels[mine], mine, metrics=ALL, k=K, chunk_size=16, **local
            )
        # Queries of this process (rank 2 has none) against every shard, with exclusion keys: labels.
        queries = mine[:9]
        out[kind, "knn"] = sharded_neighbours(
            x[queries], 8, x[mine], mine, labels[queries], labels[mine], labels[mine, None], chunk_size=16
        )
    return out


@pytest.fixture(scope="module", params=[2, 3], ids=["2 processes", "3 processes"])
def processes(request, tmp_path_factory):
    world_size = request.param
    return world_size, run_processes(_search_everything, tmp_path_factory.mktemp("sharded"), world_size=world_size)


@pytest.mark.parametrize("kind", ["random", "clustered"])
@pytest.mark.parametrize("setup", SETUPS)
def test_sharded_metrics_equal_single_process_metrics_bitwise_on_every_process(processes, kind, setup):
    _, results = processes
    x, labels, is_query, cameras, _ = make_items(kind)
    expected = retrieval_metrics(
        x, labels, metrics=ALL, k=K, chunk_size=16, **setup_arguments(setup, is_query, cameras)
    )
    for result in results:
        got = result[kind, setup]
        assert list(got) == list(expected)
        for name in expected:
            assert torch.equal(got[name], expected[name]), name


@pytest.mark.parametrize("kind", ["random", "clustered"])
def test_sharded_search_equals_the_single_process_search_of_the_whole_gallery(processes, kind):
    world_size, results = processes
    x, labels, _, _, owner = make_items(kind)
    for rank, result in enumerate(results[:2]):
        queries = (owner == rank).nonzero().squeeze(1).flip(0)[:9]
        expected_scores, positions = cosine_knn(x[queries], 8, x, labels[queries], labels, chunk_size=16)
        scores, ids, values = result[kind, "knn"]
        assert torch.equal(scores, expected_scores) and torch.equal(ids, positions)
        assert torch.equal(values[..., 0], torch.where(positions >= 0, labels[positions], -1))
    if world_size == 3:
        # A process without queries or items takes part and gets its empty answer.
        assert [tuple(part.shape) for part in results[2][kind, "knn"]] == [(0, 8), (0, 8), (0, 8, 1)]


def test_on_one_process_the_sharded_search_is_the_search_of_a_gallery_in_id_order():
    x, labels, is_query, cameras, _ = make_items("clustered")
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))
    scores, ids = sharded_knn(x[:10], 6, x[order], order, chunk_size=16)
    expected_scores, expected_ids = cosine_knn(x[:10], 6, x, chunk_size=16)
    assert torch.equal(scores, expected_scores) and torch.equal(ids, expected_ids)
    got = sharded_retrieval_metrics(x[order], labels[order], order, is_query[order], cameras=cameras[order])
    expected = retrieval_metrics(x, labels, is_query, cameras=cameras)
    assert all(torch.equal(got[name], expected[name]) for name in expected)


def _bad_input(rank, world_size, problem):
    x, labels, _, _, _ = make_items("random", n=20)
    indexes = torch.arange(10) + 10 * rank
    x, labels = x[indexes], labels[indexes]
    options = {"k": (1,)}
    if rank == 1:
        if problem == "width":
            x = x[:, :4]
        elif problem == "k":
            options = {"k": (1, 2)}
        elif problem == "nan":
            x[3, 1] = float("nan")
        elif problem == "index":
            indexes = indexes + 2**32
    try:
        sharded_retrieval_metrics(x, labels, indexes, **options)
    except ValueError as error:
        return str(error)
    return None


@pytest.mark.parametrize(
    "problem, message",
    [
        ("width", "`embedding dimension` must be the same on every process, got 6 on rank 0, 4 on rank 1"),
        ("k", "`k` must be the same on every process, got (1,) on rank 0, (1, 2) on rank 1"),
        ("nan", "`embeddings` must be finite, found NaN or inf (on rank 1)"),
        ("index", "`indexes` must lie in [0, 4294967295) to break ties in a sharded search"),
    ],
)
def test_bad_input_on_one_process_is_a_named_error_on_every_process(tmp_path, problem, message):
    for error in run_processes(_bad_input, tmp_path, problem):
        assert error is not None and error.startswith(message)


def _mixed_dtypes(rank, world_size):
    x, labels, _, _, owner = make_items("clustered")
    mine = (owner == rank).nonzero().squeeze(1)
    # bfloat16 on one process, float64 on the other: both are scored as the widest, float64.
    dtype = torch.bfloat16 if rank == 0 else torch.float64
    return sharded_retrieval_metrics(x[mine].to(dtype), labels[mine], mine, k=K, chunk_size=16)


def test_dtypes_are_promoted_to_the_widest(tmp_path):
    x, labels, _, _, owner = make_items("clustered")
    x = torch.where((owner == 0)[:, None], x.bfloat16().double(), x.double())
    expected = retrieval_metrics(x, labels, k=K, chunk_size=16)
    for result in run_processes(_mixed_dtypes, tmp_path):
        assert all(torch.equal(result[name], expected[name]) for name in expected)


def test_one_metric_may_be_named_alone_as_in_retrieval_metrics():
    x, labels, _, _, _ = make_items("clustered")
    got = sharded_retrieval_metrics(x, labels, torch.arange(len(x)), metrics="map", k=(1,))
    assert list(got) == ["map", "num_queries", "num_skipped_queries", "num_singleton_queries"]
    assert torch.equal(got["map"], retrieval_metrics(x, labels, metrics="map", k=(1,))["map"])
