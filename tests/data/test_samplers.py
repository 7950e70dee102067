"""PKSampler: class-balanced P x K batches, disjoint across ranks, reshuffled by epoch, equal in number per rank."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from lit_metric.data import PKSampler

# Uneven class sizes: 7 classes of 5 to 17 samples.
LABELS = torch.cat([torch.full((size,), label) for label, size in enumerate([5, 9, 17, 6, 12, 8, 11])])


def rank_batches(sampler: PKSampler) -> list[list[int]]:
    indices = list(sampler)
    return [indices[i : i + sampler.batch_size] for i in range(0, len(indices), sampler.batch_size)]


def shards(world_size: int, epoch: int = 0, **kwargs) -> list[list[list[int]]]:
    options = dict(classes_per_batch=3, samples_per_class=2, seed=7) | kwargs
    samplers = [PKSampler(LABELS, num_replicas=world_size, rank=rank, **options) for rank in range(world_size)]
    for sampler in samplers:
        sampler.set_epoch(epoch)
    return [rank_batches(sampler) for sampler in samplers]


def test_every_batch_has_p_distinct_classes_of_k_samples():
    for batches in shards(world_size=2):
        for batch in batches:
            classes, counts = torch.unique(LABELS[batch], return_counts=True)
            assert len(classes) == 3 and counts.tolist() == [2, 2, 2]


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_ranks_get_disjoint_batches_of_equal_number(world_size):
    per_rank = shards(world_size)
    assert len({len(batches) for batches in per_rank}) == 1
    used = [index for batches in per_rank for batch in batches for index in batch]
    assert len(used) == len(set(used))


def test_every_epoch_has_the_same_number_of_batches_and_len_says_so():
    # 32 groups of K = 2 fill at most 10 batches of 3 distinct classes; 5 of them go to each of two ranks.
    sampler = PKSampler(LABELS, classes_per_batch=3, samples_per_class=2, num_replicas=2, rank=1)
    for epoch in range(6):
        sampler.set_epoch(epoch)
        assert len(sampler.global_batches()) == 10
        assert len(sampler) == len(list(sampler)) == 5 * 6


def test_fewer_batches_than_processes_is_a_value_error_not_an_empty_epoch():
    # 7 classes fill one batch of 7 x 5 (every class has at least 5 samples), which two processes cannot share.
    sampler = PKSampler(LABELS, classes_per_batch=7, samples_per_class=5, num_replicas=2, rank=0)
    for use in (len, iter):
        with pytest.raises(ValueError, match="fill 1 batches of .* = 7 x 5, fewer than the 2 processes"):
            use(sampler)


def test_each_epoch_reshuffles_and_the_seed_reproduces():
    assert shards(2, epoch=0) != shards(2, epoch=1)
    assert shards(2, epoch=1) == shards(2, epoch=1)
    assert shards(2, epoch=1) != shards(2, epoch=1, replacement=False, seed=8)


def test_it_is_a_distributed_sampler_that_a_dataloader_batches_as_is():
    sampler = PKSampler(LABELS, classes_per_batch=3, samples_per_class=2)
    assert isinstance(sampler, DistributedSampler)
    batches = [batch.tolist() for batch in DataLoader(LABELS, sampler=sampler, batch_size=6, drop_last=True)]
    assert batches == [LABELS[batch].tolist() for batch in rank_batches(sampler)]


def test_a_class_smaller_than_k_is_a_value_error_without_replacement():
    with pytest.raises(ValueError, match=r"classes 0 \(\d+\), 3 \(\d+\) of `labels` have fewer than `samples_per_class` = 7 samples"):
        PKSampler(LABELS, classes_per_batch=3, samples_per_class=7)


def test_with_replacement_a_class_smaller_than_k_is_drawn_with_repeats():
    sampler = PKSampler(LABELS, classes_per_batch=7, samples_per_class=7, replacement=True)
    batch = rank_batches(sampler)[0]
    assert torch.unique(LABELS[batch], return_counts=True)[1].tolist() == [7] * 7


def test_with_replacement_no_sample_of_a_class_of_at_least_k_is_used_twice_in_an_epoch():
    labels = torch.arange(50).repeat_interleave(17)
    sampler = PKSampler(labels, classes_per_batch=16, samples_per_class=4, replacement=True)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        used = list(sampler)
        # 4 groups of K from each of the 50 classes fill 12 batches of 16 classes.
        assert len(used) == len(set(used)) == 12 * 16 * 4


@pytest.mark.parametrize("world_size", [1, 2])
def test_with_replacement_classes_of_at_least_k_samples_are_drawn_as_without_it(world_size):
    for epoch in range(3):
        assert shards(world_size, epoch, replacement=True) == shards(world_size, epoch, replacement=False)


def test_with_replacement_a_class_smaller_than_k_fills_its_k_slots_with_all_its_own_samples():
    labels = torch.cat([LABELS, torch.full((3,), 7)])
    small = set(torch.nonzero(labels == 7).flatten().tolist())
    sampler = PKSampler(labels, classes_per_batch=3, samples_per_class=4, replacement=True)
    batches_with_the_small_class = 0
    for epoch in range(5):
        sampler.set_epoch(epoch)
        for batch in rank_batches(sampler):
            picks = [index for index in batch if labels[index] == 7]
            others = [index for index in batch if labels[index] != 7]
            assert len(others) == len(set(others))
            if picks:
                assert len(picks) == 4 and set(picks) == small
                batches_with_the_small_class += 1
    assert batches_with_the_small_class > 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(classes_per_batch=8), r"`classes_per_batch` \(8\) exceeds the number of classes in `labels` \(7\)"),
        (dict(samples_per_class=0), r"`classes_per_batch` and `samples_per_class` must be >= 1, got 3 and 0"),
        (dict(num_replicas=0), r"`num_replicas` must be >= 1, got 0"),
        (dict(num_replicas=2, rank=2), r"`rank` must be in \[0, 2\), got 2"),
        (dict(rank=-1), r"`rank` must be >= 0, got -1"),
    ],
)
def test_invalid_arguments_are_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PKSampler(LABELS, **{"classes_per_batch": 3, "samples_per_class": 2, **kwargs})


def test_float_labels_are_a_value_error():
    with pytest.raises(ValueError, match=r"`labels` must be a 1-D sequence of integers"):
        PKSampler(LABELS.float(), classes_per_batch=3, samples_per_class=2)


def test_resume_yields_the_rest_of_the_epoch_then_whole_epochs():
    sampler = PKSampler(LABELS, classes_per_batch=3, samples_per_class=2, num_replicas=2, rank=1, seed=7)
    whole = {epoch: shards(2, epoch)[1] for epoch in (2, 3)}
    sampler.resume(epoch=2, batches_done=3)
    assert sampler.resume_point == 3
    assert rank_batches(sampler) == whole[2][3:]
    # Lightning sets the epoch it resumes in again before iterating, which must not drop the resume point.
    sampler.resume(epoch=2, batches_done=3)
    sampler.set_epoch(2)
    assert rank_batches(sampler) == whole[2][3:]
    assert rank_batches(sampler) == whole[2]
    sampler.set_epoch(3)
    assert rank_batches(sampler) == whole[3]


def test_a_resume_point_is_dropped_when_the_epoch_changes():
    sampler = PKSampler(LABELS, classes_per_batch=3, samples_per_class=2, seed=7)
    sampler.resume(epoch=2, batches_done=3)
    sampler.set_epoch(4)
    assert sampler.resume_point == 0 and rank_batches(sampler) == shards(1, 4)[0]


def test_a_finished_epoch_resumes_at_the_start_of_the_next():
    sampler = PKSampler(LABELS, classes_per_batch=3, samples_per_class=2, seed=7)
    sampler.resume(epoch=2, batches_done=sampler.batches_per_rank)
    assert (sampler.epoch, sampler.resume_point) == (3, 0)
    assert rank_batches(sampler) == shards(1, 3)[0]


@pytest.mark.parametrize(
    "epoch, batches_done, message",
    [
        (-1, 0, r"`epoch` must be an integer >= 0, got -1"),
        (1, 11, r"`batches_done` must be an integer from 0 to the 10 batches of an epoch, got 11; resume with the"),
        (1, -1, r"`batches_done` must be an integer from 0 to the 10 batches of an epoch, got -1"),
        (1, 2.0, r"`batches_done` must be an integer from 0 to the 10 batches of an epoch, got 2.0"),
    ],
)
def test_a_resume_point_outside_the_epoch_is_a_value_error(epoch, batches_done, message):
    sampler = PKSampler(LABELS, classes_per_batch=3, samples_per_class=2)
    with pytest.raises(ValueError, match=message):
        sampler.resume(epoch, batches_done)
