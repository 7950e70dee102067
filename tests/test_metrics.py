"""Specification of RetrievalMetrics: batching, de-duplication, validation and equality under 2-process DDP."""

import re

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DistributedSampler
from torchmetrics import Metric

import lit_metric.metrics
from lit_metric.functional.retrieval import retrieval_metrics
from lit_metric.metrics import RetrievalMetrics

from _ddp import run_processes

ALL = ("recall", "precision", "map_at_r", "r_precision", "map")


def make_data(n=45, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(8, (n,), generator=g)
    x = torch.randn(8, 5, generator=g)[labels] + torch.randn(n, 5, generator=g)
    return x, labels, torch.rand(n, generator=g) < 0.3, torch.randint(3, (n,), generator=g)


def feed(metric, x, labels, order, is_query=None, cameras=None, batch=7):
    for start in range(0, len(order), batch):
        i = order[start : start + batch]
        metric.update(
            x[i], labels[i], i,
            is_query=None if is_query is None else is_query[i],
            cameras=None if cameras is None else cameras[i],
        )


def assert_same(actual, expected):
    assert actual.keys() == expected.keys()
    for name in expected:
        assert torch.equal(actual[name], expected[name]), name


def test_batched_updates_with_padding_duplicates_equal_one_functional_call():
    x, labels, is_query, cameras = make_data()
    # Shuffled order plus repeated indices, as DistributedSampler padding produces.
    order = torch.cat([torch.randperm(45, generator=torch.Generator().manual_seed(1)), torch.tensor([3, 10])])
    metric = RetrievalMetrics(metrics=ALL, k=(1, 5))
    feed(metric, x, labels, order)
    assert_same(metric.compute(), retrieval_metrics(x, labels, metrics=ALL, k=(1, 5)))

    metric = RetrievalMetrics(metrics=ALL, k=(1, 5))
    feed(metric, x, labels, order, is_query, cameras)
    expected = retrieval_metrics(x, labels, is_query=is_query, cameras=cameras, metrics=ALL, k=(1, 5))
    assert_same(metric.compute(), expected)
    metric.reset()
    no_update = pytest.raises(ValueError, match="`update` must be called with at least one item .*, got no update")
    with no_update, pytest.warns(UserWarning, match="before the"):
        metric.compute()


def test_keys_are_log_names():
    x, labels, _, _ = make_data()
    metric = RetrievalMetrics(metrics=ALL, k=(1, 2))
    metric.update(x, labels, torch.arange(45))
    out = metric.compute()
    assert {"recall@1", "precision@2", "map@r", "r_precision", "map", "num_queries"} <= out.keys()
    assert all(re.fullmatch(r"[a-z_]+(@(\d+|r))?", name) for name in out)
    assert all(value.dtype == torch.float32 and value.ndim == 0 for value in out.values())


def test_the_hit_rate_is_logged_once_as_recall_by_default_or_as_cmc_for_re_id():
    x, labels, is_query, cameras = make_data()
    default = RetrievalMetrics(k=(1, 2))
    default.update(x, labels, torch.arange(45))
    names = default.compute().keys()
    assert "recall@1" in names and not any(name.startswith("cmc@") for name in names)
    reid = RetrievalMetrics(metrics=("cmc", "map"), k=(1, 2))
    reid.update(x, labels, torch.arange(45), is_query=is_query, cameras=cameras)
    out = reid.compute()
    expected = retrieval_metrics(x, labels, is_query=is_query, cameras=cameras, metrics=("recall",), k=(1, 2))
    assert out["cmc@2"] == expected["recall@2"] and not any(name.startswith("recall@") for name in out)
    with pytest.raises(ValueError, match="`metrics` must hold 'recall' or 'cmc', not both"):
        RetrievalMetrics(metrics=("recall", "cmc"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"embeddings": torch.randn(4, 3, dtype=torch.float64).long()}, r"`embeddings` must be a floating-point"),
        ({"embeddings": [[0.0, 1.0]] * 4}, r"`embeddings` must be a torch.Tensor, got list"),
        ({"labels": [0, 1, 1, 0]}, r"`labels` must be an integer tensor, got list"),
        ({"embeddings": torch.randn(4)}, r"`embeddings` must have shape \(N, D\)"),
        ({"embeddings": torch.tensor([[0.0, float("nan")]] * 4)}, "`embeddings` must be finite"),
        ({"embeddings": torch.tensor([[0.0, float("inf")]] * 4)}, "`embeddings` must be finite"),
        ({"labels": torch.tensor([0, 1, 1])}, r"`labels` must have shape \(4,\) to match `embeddings`"),
        ({"labels": torch.tensor([0.0, 1, 1, 0])}, "`labels` must be an integer tensor"),
        ({"indexes": torch.arange(5)}, r"`indexes` must have shape \(4,\)"),
        ({"is_query": torch.tensor([1, 0, 0, 1])}, "`is_query` must be a bool tensor"),
        ({"is_gallery": torch.ones(3, dtype=torch.bool)}, r"`is_gallery` must have shape \(4,\)"),
        ({"cameras": torch.tensor([0, 1, -1, 0])}, "`cameras` must be non-negative"),
    ],
)
def test_update_rejects_bad_input(kwargs, message):
    args = {"embeddings": torch.randn(4, 2), "labels": torch.tensor([0, 0, 1, 1]), "indexes": torch.arange(4)}
    with pytest.raises(ValueError, match=message):
        RetrievalMetrics().update(**{**args, **kwargs})


def test_items_with_equal_indexes_must_be_copies():
    # Colliding indexes (per-batch arange, say) would drop different items as if they were DistributedSampler padding.
    x, labels, _, _ = make_data()
    metric = RetrievalMetrics()
    metric.update(x[:10], labels[:10], torch.arange(10))
    metric.update(x[10:20], labels[10:20] + 100, torch.arange(10))
    with pytest.raises(ValueError, match="items with equal `indexes` must be copies of one item, got two with index 0 "
                       "and different `labels`"):
        metric.compute()


def test_copies_with_equal_indexes_may_differ_in_the_last_bits_but_not_in_direction():
    x, labels, _, _ = make_data()
    metric = RetrievalMetrics(metrics=ALL)
    metric.update(x, labels, torch.arange(45))
    # Embedded in another batch: another kernel, other last bits; and a scaled copy, which points the same way.
    metric.update(torch.stack([x[3] * (1 + 1e-6), x[10] * 1e-30]), labels[[3, 10]], torch.tensor([3, 10]))
    assert_same(metric.compute(), retrieval_metrics(x, labels, metrics=ALL))
    metric.update(x[7:8] + 0.1 * x[8:9], labels[7:8], torch.tensor([7]))
    with pytest.raises(ValueError, match=r"items with equal `indexes` must be copies of one item, got two with index 7 "
                       r"and `embeddings` whose unit rows are 0\.\d+ apart, more than the 0.001"):
        metric.compute()


def test_items_out_of_index_order_without_copies_are_scored_as_given():
    # A DDP gather interleaves the processes' items: indexes out of order, none repeated.
    x, labels, _, _ = make_data()
    order = torch.randperm(45, generator=torch.Generator().manual_seed(0))
    metric = RetrievalMetrics(metrics=ALL)
    metric.update(x[order], labels[order], order)
    assert_same(metric.compute(), retrieval_metrics(x, labels, metrics=ALL))


def test_compute_after_updates_without_items_says_that_no_item_came():
    # It used to blame `is_query`, which no update had given.
    metric = RetrievalMetrics()
    for _ in range(2):
        metric.update(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="`update` must be called with at least one item before `compute`, got "
                       "updates without items"):
        metric.compute()


def test_one_metric_name_is_one_metric_not_a_sequence_of_letters():
    x, labels, _, _ = make_data()
    metric = RetrievalMetrics(metrics="map_at_r", k=(1,))
    assert metric.metrics == ("map_at_r",)
    metric.update(x, labels, torch.arange(45))
    out = metric.compute()
    assert set(out) == {"map@r", "num_queries", "num_skipped_queries", "num_singleton_queries"}
    assert_same(out, retrieval_metrics(x, labels, metrics=("map_at_r",), k=(1,)))
    assert_same(retrieval_metrics(x, labels, metrics="map_at_r", k=(1,)), out)


def test_flags_must_be_given_in_every_update_or_in_none():
    x, labels, _, _ = make_data()
    metric = RetrievalMetrics()
    metric.update(x[:10], labels[:10], torch.arange(10), is_query=torch.ones(10, dtype=torch.bool))
    with pytest.raises(ValueError, match="`is_query` or `is_gallery` must be given in every update or in none"):
        metric.update(x[10:20], labels[10:20], torch.arange(10, 20))
    metric.reset()
    metric.update(x[10:20], labels[10:20], torch.arange(10, 20))


def test_cut_offs_may_come_from_any_iterable():
    metric = RetrievalMetrics(metrics=iter(["recall"]), k=(cut for cut in (2, 1)))
    assert metric.metrics == ("recall",) and metric.k == (1, 2)


def test_compute_and_constructor_reject_bad_setups():
    x, labels = torch.randn(4, 2), torch.tensor([0, 0, 1, 1])
    metric = RetrievalMetrics(k=(1,))
    metric.update(x, labels, torch.arange(4), is_gallery=torch.zeros(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="gallery must hold at least one item"):
        metric.compute()
    metric = RetrievalMetrics(k=(1, 4))
    metric.update(x, labels, torch.arange(4))
    with pytest.raises(ValueError, match="every `k` must be at most the gallery size 3, got k=4"):
        metric.compute()
    metric = RetrievalMetrics(k=(1,))
    metric.update(x[:2], labels[:2], torch.arange(2), cameras=torch.tensor([0, 1]))
    metric.update(x[2:], labels[2:], torch.arange(2, 4))
    with pytest.raises(ValueError, match="`cameras` must be given in every update or in none"):
        metric.compute()
    with pytest.raises(ValueError, match="`embeddings` must keep the dimension of earlier updates"):
        metric.update(torch.randn(1, 3), labels[:1], torch.arange(1))
    with pytest.raises(ValueError, match="`metrics` must be a non-empty subset"):
        RetrievalMetrics(metrics=("recall", "mrr"))
    with pytest.raises(ValueError, match="`k` must be a non-empty sequence of positive integers"):
        RetrievalMetrics(k=(0, 1))
    with pytest.raises(ValueError, match="`chunk_size` must be a positive integer"):
        RetrievalMetrics(chunk_size=0)


def _ddp_worker(rank, world_size, store_path, out_path):
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world_size)
    try:
        x, labels, is_query, cameras = make_data()
        # 45 items over 2 ranks: the sampler pads rank 1 with a duplicate of an item of rank 0.
        order = torch.tensor(list(DistributedSampler(range(45), world_size, rank, shuffle=True, seed=3)))
        results = {}
        for name, flags, cams in (("loo", None, None), ("reid", is_query, cameras)):
            metric = RetrievalMetrics(metrics=ALL, k=(1, 5), chunk_size=8)
            feed(metric, x, labels, order, flags, cams, batch=4)
            results[name] = metric.compute()
        if rank == 0:
            torch.save(results, out_path)
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_equals_single_process(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "store"), str(tmp_path / "out.pt")), nprocs=2, join=True)
    results = torch.load(tmp_path / "out.pt")
    x, labels, is_query, cameras = make_data()
    for name, flags, cams in (("loo", None, None), ("reid", is_query, cameras)):
        single = RetrievalMetrics(metrics=ALL, k=(1, 5), chunk_size=8)
        feed(single, x, labels, torch.arange(45), flags, cams)
        assert_same(results[name], single.compute())


def _only_rank_zero_has_items(rank, world_size, dtype, sharded):
    x, labels, is_query, cameras = make_data()
    metric = RetrievalMetrics(metrics=ALL, k=(1, 5), chunk_size=8, sharded=sharded)
    if rank == 0:
        feed(metric, x.to(dtype), labels, torch.arange(45), is_query, cameras)
    return metric.compute()


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric RetrievalMetrics was called before")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("sharded", [False, True], ids=["gathered", "sharded"])
def test_a_process_without_items_joins_and_gets_the_common_result(tmp_path, dtype, sharded):
    x, labels, is_query, cameras = make_data()
    single = RetrievalMetrics(metrics=ALL, k=(1, 5), chunk_size=8)
    feed(single, x.to(dtype), labels, torch.arange(45), is_query, cameras)
    expected = single.compute()
    for result in run_processes(_only_rank_zero_has_items, tmp_path, dtype, sharded, world_size=2 + sharded):
        assert_same(result, expected)


def _processes_disagree(rank, world_size, disagreement, sharded):
    x, labels, is_query, _ = make_data()
    metric = RetrievalMetrics(k=(1, 2) if disagreement == "k" and rank == 1 else (1,), sharded=sharded)
    width = 4 if disagreement == "width" and rank == 1 else 5
    flags = is_query[:10] if disagreement == "flags" and rank == 1 else None
    # Colliding indexes: both processes hold an item 0, with different labels.
    indexes = torch.arange(10) + (0 if disagreement == "copies" else 10 * rank)
    metric.update(x[:10, :width], labels[:10] + rank, indexes, is_query=flags)
    try:
        metric.compute()
    except ValueError as error:
        return str(error)
    return None


@pytest.mark.parametrize(
    "disagreement, message",
    [
        ("width", "`embeddings` must have one dimension in every process, got [4, 5]"),
        ("flags", "`is_query` or `is_gallery` must be given in every process or in none, got a mix"),
        ("k", "`k` must be the same on every process, got (1,) on rank 0, (1, 2) on rank 1"),
        ("copies", "items with equal `indexes` must be copies of one item, got two with index 0 and different `labels`"),
    ],
)
@pytest.mark.parametrize("sharded", [False, True], ids=["gathered", "sharded"])
def test_processes_that_disagree_are_refused_by_name_on_every_process(tmp_path, disagreement, message, sharded):
    assert run_processes(_processes_disagree, tmp_path, disagreement, sharded) == [message, message]


def _evaluate_with_padding(rank, world_size, n, sharded, threshold):
    # Whether torchmetrics' gather of the states ran: sharded evaluation leaves the items where they are.
    gathered, gather = [], Metric._sync_dist

    def watched_gather(*args, **kwargs):
        gathered.append(True)
        return gather(*args, **kwargs)

    Metric._sync_dist = watched_gather
    lit_metric.metrics.SHARDED_FROM_BYTES = threshold
    x, labels, is_query, cameras = make_data(n)
    # The sampler pads the last processes with copies of items of the first ones.
    order = torch.tensor(list(DistributedSampler(range(n), world_size, rank, shuffle=True, seed=3)))
    results = {}
    for name, flags, cams in (("loo", None, None), ("reid", is_query, cameras)):
        metric = RetrievalMetrics(metrics=ALL, k=(1, 5), chunk_size=8, sharded=sharded)
        feed(metric, x, labels, order, flags, cams, batch=4)
        results[name] = metric.compute()
    return results, bool(gathered)


@pytest.mark.parametrize("world_size, n", [(2, 45), (3, 46)])
@pytest.mark.parametrize(
    "sharded, threshold, gathers",
    [(True, 2**28, False), (None, 4 * 5 * 40, False), (None, 2**28, True)],
    ids=["sharded", "sharded from SHARDED_FROM_BYTES", "gathered below SHARDED_FROM_BYTES"],
)
def test_sharded_evaluation_equals_single_process_evaluation_and_gathers_nothing(
    tmp_path, world_size, n, sharded, threshold, gathers
):
    x, labels, is_query, cameras = make_data(n)
    results = run_processes(_evaluate_with_padding, tmp_path, n, sharded, threshold, world_size=world_size)
    for name, flags, cams in (("loo", None, None), ("reid", is_query, cameras)):
        single = RetrievalMetrics(metrics=ALL, k=(1, 5), chunk_size=8)
        feed(single, x, labels, torch.arange(n), flags, cams)
        expected = single.compute()
        for result, gathered in results:
            assert_same(result[name], expected)
            assert gathered == gathers


def test_sharding_runs_over_the_default_process_group_and_is_a_bool():
    with pytest.raises(ValueError, match="`sharded` must be True, False or None, got 'yes'"):
        RetrievalMetrics(sharded="yes")
    with pytest.raises(ValueError, match="`sharded` evaluation runs over the default process group"):
        RetrievalMetrics(sharded=True, process_group=object())
