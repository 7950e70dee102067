"""CrossBatchMemory: a FIFO of the last M rows whose embeddings, labels and indexes stay lined up, its state and its
refusal of bad input."""

from __future__ import annotations

import doctest

import pytest
import torch

import lit_metric.memory
from lit_metric.memory import CrossBatchMemory


def rows(start, count, width=3):
    """``count`` rows numbered from ``start``: embedding ``[n, n, ...]``, label ``n % 5``, index ``n``."""
    numbers = torch.arange(start, start + count)
    return numbers[:, None].float().expand(count, width), numbers % 5, numbers


def test_the_memory_keeps_the_last_size_rows_oldest_first_with_their_labels_and_indexes_across_wrap_around():
    memory, appended, start = CrossBatchMemory(size=7), [], 0
    # Batches smaller than, equal to and larger than the memory, so that it wraps around at every offset.
    for count in [3, 2, 4, 1, 7, 5, 9, 2, 6]:
        memory.append(*rows(start, count))
        appended += list(range(start, start + count))
        start += count
        expected = appended[-7:]
        assert memory.indexes.tolist() == expected
        assert memory.labels.tolist() == [n % 5 for n in expected]
        assert memory.embeddings[:, 0].tolist() == [float(n) for n in expected]
        assert memory.embeddings.shape == (len(expected), 3)


def test_tensors_read_before_an_append_keep_their_rows():
    memory = CrossBatchMemory(size=4)
    memory.append(*rows(0, 4))
    embeddings, labels, indexes = memory.embeddings, memory.labels, memory.indexes
    memory.append(*rows(4, 2))
    assert indexes.tolist() == [0, 1, 2, 3] and labels.tolist() == [0, 1, 2, 3]
    assert embeddings[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_embeddings_are_stored_detached_and_labels_of_any_integer_width_as_int64():
    memory = CrossBatchMemory(size=8)
    embeddings = torch.randn(2, 3, requires_grad=True)
    memory.append(embeddings, torch.tensor([1, 2], dtype=torch.int32), torch.tensor([0, 1], dtype=torch.int16))
    memory.append(torch.randn(2, 3).half(), torch.tensor([3, 4], dtype=torch.uint8), torch.tensor([2, 3]))
    assert not memory.embeddings.requires_grad and memory.embeddings.dtype == torch.float32
    assert memory.labels.dtype == memory.indexes.dtype == torch.int64
    assert memory.labels.tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize("size", [0, -3, 2.5, True, None])
def test_a_size_that_is_not_a_positive_integer_is_named(size):
    with pytest.raises(ValueError, match=rf"`memory_size` must be a positive integer, got {size!r}"):
        CrossBatchMemory(size)


def test_embeddings_of_another_width_are_refused_not_silently_dropped():
    memory = CrossBatchMemory(size=8)
    memory.append(*rows(0, 2, width=3))
    with pytest.raises(ValueError, match=r"the memory holds embeddings of width 3, got embeddings of width 5"):
        memory.append(*rows(2, 2, width=5))
    assert len(memory) == 2


@pytest.mark.parametrize(
    "labels, indexes, message",
    [
        (torch.tensor([0.0, 1.0]), torch.arange(2), r"`labels` must be an integer tensor, got dtype torch.float32"),
        (torch.tensor([0, 1]), torch.arange(2.0), r"`indexes` must be an integer tensor, got dtype torch.float32"),
        (torch.tensor([0, 1, 2]), torch.arange(2), r"`labels` must have shape \(2,\), one per embedding, got 3"),
        (torch.tensor([[0, 1]]), torch.arange(2), r"`labels` must have shape \(2,\), one per embedding, got shape"),
    ],
)
def test_labels_and_indexes_must_be_one_integer_per_embedding(labels, indexes, message):
    with pytest.raises(ValueError, match=message):
        CrossBatchMemory(size=4).append(torch.zeros(2, 3), labels, indexes)


def test_the_state_dict_restores_the_rows_and_refuses_another_size():
    memory = CrossBatchMemory(size=5)
    memory.append(*rows(0, 7))
    restored = CrossBatchMemory(size=5)
    restored.load_state_dict(memory.state_dict())
    for name in ("embeddings", "labels", "indexes"):
        assert torch.equal(getattr(restored, name), getattr(memory, name))
    restored.append(*rows(7, 1))
    assert restored.indexes.tolist() == [3, 4, 5, 6, 7]
    with pytest.raises(ValueError, match=r"the checkpoint's memory holds up to 5 rows, but `memory_size` is 6"):
        CrossBatchMemory(size=6).load_state_dict(memory.state_dict())


def test_clear_empties_the_memory_and_frees_its_width():
    memory = CrossBatchMemory(size=4)
    memory.append(*rows(0, 3, width=3))
    memory.clear()
    assert len(memory) == 0
    memory.append(*rows(0, 2, width=6))
    assert memory.embeddings.shape == (2, 6)


def test_the_docstring_example_runs():
    result = doctest.testmod(lit_metric.memory)
    assert result.attempted > 0 and result.failed == 0
