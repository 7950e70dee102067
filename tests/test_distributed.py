"""Specification of lit_metric.distributed: on one process every helper gives that process's answer; on two gloo
processes with batches of different sizes, the gathers return every process's rows in rank order, gradients come
back summed over processes, sums are global, and the dataset-order gather drops DistributedSampler's padding."""

import pytest
import torch

from lit_metric import distributed

from _ddp import run_processes

# Five items on two processes: DistributedSampler gives rank 0 items 0, 2, 4 and pads rank 1's 1, 3 with item 0.
SHARDS = ([[4, 0], [2]], [[1, 3, 0]])


def shard_batches(rank):
    return [{"indexes": torch.tensor(batch), "paths": [f"{i}.png" for i in batch]} for batch in SHARDS[rank]]


def _every_helper(rank, world_size):
    rows = (torch.arange(3 * (rank + 1) * 2, dtype=torch.float32).view(-1, 2) + 100 * rank).requires_grad_()
    sizes = distributed.gather_sizes(len(rows), rows.device)
    gathered = distributed.gather_rows_with_grad(rows, sizes)
    # Each process's loss weights every gathered row by (its rank + 1), so each row's full gradient is 1 + 2 = 3.
    (gathered.sum() * (rank + 1)).backward()
    return {
        "world_size": distributed.world_size(),
        "rank": distributed.rank(),
        "sizes": sizes,
        "rows": rows.detach(),
        "gathered": gathered.detach(),
        "gathered_labels": distributed.gather_rows(torch.full((len(rows),), rank), sizes),
        "grad": rows.grad,
        "sum": distributed.sum_over_processes(torch.tensor([1, rank])),
        "objects": distributed.gather_objects({"rank": rank}),
        "in_dataset_order": distributed.gather_in_dataset_order(shard_batches(rank)),
        # Rank 0 sends 5 rows in blocks of 2, rank 1 none.
        "blocks": [(owner, start, block[0].tolist()) for owner, start, block in distributed.blocks_of_every_process(
            [torch.arange(5 * (1 - rank))], 2
        )],
        "gathered_to_1": distributed.gather_to(torch.tensor([rank]), 1),
        "summed_to_0": distributed.sum_to(torch.tensor([1, rank]), 0),
        # Item 0 on both processes (labels 7 and 7), item 2 on both with different labels (5 and 6).
        "first_copies": distributed.first_copies_across_processes(
            torch.tensor([[0, 2, 4], [1, 0, 2]][rank]), torch.tensor([[7, 5, 1], [3, 7, 6]][rank])[:, None]
        ),
        "error": _error_of(lambda: distributed.raise_on_every_process("`x` is wrong" if rank == 1 else None)),
        "setting": _error_of(lambda: distributed.check_same_on_every_process({"width": 4, "k": rank})),
    }


def _error_of(call):
    try:
        call()
    except ValueError as error:
        return str(error)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    return run_processes(_every_helper, tmp_path_factory.mktemp("distributed"))


def test_on_one_process_every_helper_gives_the_process_s_own_answer():
    rows = torch.rand(3, 2, requires_grad=True)
    assert (distributed.world_size(), distributed.rank()) == (1, 0)
    assert distributed.gather_sizes(3, rows.device) == [3]
    assert distributed.gather_rows_with_grad(rows, [3]) is rows
    assert distributed.sum_over_processes(rows) is rows
    assert distributed.gather_objects("value") == ["value"]


def test_processes_know_their_rank_and_the_world_size(two_processes):
    assert [(result["world_size"], result["rank"]) for result in two_processes] == [(2, 0), (2, 1)]


def test_rows_of_different_sizes_are_gathered_in_rank_order_on_every_process(two_processes):
    expected = torch.cat([result["rows"] for result in two_processes])
    for result in two_processes:
        assert result["sizes"] == [3, 6]
        assert torch.equal(result["gathered"], expected)
        assert result["gathered_labels"].tolist() == [0] * 3 + [1] * 6


def test_the_gradient_of_gathered_rows_is_summed_over_processes_and_returned_to_their_owner(two_processes):
    for result in two_processes:
        assert torch.equal(result["grad"], torch.full_like(result["rows"], 3.0))


def test_sums_and_objects_are_those_of_every_process(two_processes):
    for result in two_processes:
        assert result["sum"].tolist() == [2, 1]
        assert result["objects"] == [{"rank": 0}, {"rank": 1}]


def test_the_dataset_order_gather_holds_every_item_once_in_index_order_on_every_process(two_processes):
    for result in two_processes:
        assert result["in_dataset_order"]["indexes"].tolist() == [0, 1, 2, 3, 4]
        assert result["in_dataset_order"]["paths"] == [f"{i}.png" for i in range(5)]


def test_on_one_process_the_dataset_order_gather_orders_and_deduplicates_too():
    joined = distributed.gather_in_dataset_order(shard_batches(0) + shard_batches(1))
    assert joined["indexes"].tolist() == [0, 1, 2, 3, 4]
    assert distributed.gather_in_dataset_order([]) == {}


def test_first_occurrences_are_the_first_position_of_each_index_in_index_order():
    assert distributed.first_occurrences(torch.tensor([3, 1, 3, 0, 1])).tolist() == [3, 1, 0]


def test_blocks_of_rows_reach_every_process_from_their_owner_in_rank_order(two_processes):
    for result in two_processes:
        assert result["blocks"] == [(0, 0, [0, 1]), (0, 2, [2, 3]), (0, 4, [4])]


def test_results_are_gathered_or_summed_on_one_process_only(two_processes):
    assert [result["gathered_to_1"] for result in two_processes] == [None, [torch.tensor([0]), torch.tensor([1])]]
    assert two_processes[0]["summed_to_0"].tolist() == [2, 1] and two_processes[1]["summed_to_0"] is None


def test_the_first_copy_of_each_index_over_processes_is_kept_and_conflicts_are_named_on_every_process(two_processes):
    keep = [result["first_copies"][0].tolist() for result in two_processes]
    assert keep == [[True, True, True], [True, False, False]]
    # Index 2 has labels 5 and 6: the conflict is (index 2, column 0) on both processes.
    assert [result["first_copies"][1] for result in two_processes] == [(2, 0), (2, 0)]


def test_an_error_or_a_differing_setting_on_one_process_is_raised_on_every_process(two_processes):
    assert [result["error"] for result in two_processes] == ["`x` is wrong (on rank 1)"] * 2
    assert [result["setting"] for result in two_processes] == ["`k` must be the same on every process, got 0 on rank "
                                                               "0, 1 on rank 1"] * 2


def test_on_one_process_copies_are_found_among_its_own_items():
    keep, conflict = distributed.first_copies_across_processes(torch.tensor([3, 1, 3]), torch.tensor([[0], [1], [0]]))
    assert keep.tolist() == [True, True, False] and conflict is None
    assert distributed.first_copies(torch.tensor([3, 1, 3]), torch.tensor([[0], [1], [2]]))[1] == (3, 0)
