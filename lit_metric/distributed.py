"""The one home of lit_metric's ``torch.distributed`` code: process lookups, gathers (one with gradients), sums over
processes, and the dataset-order gather that drops the duplicates ``DistributedSampler`` pads in.

Every helper also works on a single process, without a process group, where it returns the one process's answer.
The gathers and sums are collective calls under ``torch.distributed``: every process must make them, in the same
order, or the others wait forever.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "first_occurrences",
    "gather_in_dataset_order",
    "gather_objects",
    "gather_rows",
    "gather_rows_with_grad",
    "gather_sizes",
    "rank",
    "sum_over_processes",
    "world_size",
]


def world_size() -> int:
    """Number of processes of ``torch.distributed``, 1 when it is not initialised."""
    return dist.get_world_size() if _initialised() else 1


def rank() -> int:
    """This process's rank in ``torch.distributed``, 0 when it is not initialised."""
    return dist.get_rank() if _initialised() else 0


def gather_sizes(size: int, device: torch.device) -> list[int]:
    """Every process's ``size`` (e.g. its batch size), in rank order; ``[size]`` on one process."""
    if world_size() == 1:
        return [size]
    sizes = [torch.zeros((), dtype=torch.long, device=device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor(size, device=device))
    return [int(s) for s in sizes]


def gather_rows(tensor: Tensor, sizes: list[int]) -> Tensor:
    """Every process's rows, concatenated in rank order, without gradient.

    Args:
        tensor: ``(sizes[rank], ...)`` rows of this process.
        sizes: every process's number of rows, from :func:`gather_sizes`. Rows are padded to the largest for the
            collective, so no process waits on a shape that never comes, and the padding is dropped.

    Returns:
        ``(sum(sizes), ...)`` rows; ``tensor`` itself on one process.
    """
    if world_size() == 1:
        return tensor
    padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
    padded[: len(tensor)] = tensor
    gathered = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(gathered, padded)
    return torch.cat([rows[:size] for rows, size in zip(gathered, sizes)])


def gather_rows_with_grad(tensor: Tensor, sizes: list[int]) -> Tensor:
    """:func:`gather_rows` through which gradients flow back to every process's own rows.

    Each process's loss depends on every process's rows, so a row's full gradient is the sum over processes of the
    gradient of its copy: the backward pass sums the ``(sum(sizes), ...)`` gradient over processes and hands each
    process the part of its own ``(sizes[rank], ...)`` rows.
    """
    if world_size() == 1:
        return tensor
    return _GatherRowsWithGrad.apply(tensor, sizes)


class _GatherRowsWithGrad(torch.autograd.Function):
    """An all-reduce of the ``(R, D)`` gradient sums it on every backend (gloo has no reduce-scatter); embeddings
    are small next to the ``(B, R)`` similarity, so the extra traffic does not matter."""

    @staticmethod
    def forward(ctx, tensor: Tensor, sizes: list[int]) -> Tensor:
        ctx.start = sum(sizes[: rank()])
        ctx.size = len(tensor)
        return gather_rows(tensor, sizes)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.start : ctx.start + ctx.size], None


def sum_over_processes(tensor: Tensor) -> Tensor:
    """``tensor`` (any shape) summed elementwise over the processes; ``tensor`` itself on one process."""
    if world_size() == 1:
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor)
    return tensor


def gather_objects(value: Any, group: Any | None = None) -> list[Any]:
    """Every process's picklable ``value``, in rank order, within ``group`` (default: all processes); ``[value]``
    without a process group."""
    if not _initialised():
        return [value]
    everyone: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(everyone, value, group=group)
    return everyone


def first_occurrences(indexes: Tensor) -> Tensor:
    """Positions of the first item of each dataset index, in index order: what is left of a ``(N,)`` index tensor
    once the duplicates that ``DistributedSampler`` pads in are dropped; ``(U,)`` for ``U`` distinct indexes."""
    unique, inverse = torch.unique(indexes, return_inverse=True)
    positions = torch.arange(len(indexes), device=indexes.device)
    return torch.full_like(unique, len(indexes)).scatter_reduce_(0, inverse, positions, "amin")


def gather_in_dataset_order(batches: list[dict[str, Any]]) -> dict[str, Any]:
    """This process's batches joined with every other process's, ordered by dataset index, each index once.

    Args:
        batches: dicts of ``(B, ...)`` tensors and ``B``-long lists, with the same keys; ``"indexes"`` holds
            dataset positions. Keys missing from some batch are dropped.

    Returns:
        One dict of ``(N, ...)`` tensors and ``N``-long lists; without ``"indexes"``, in batch then rank order.
        Every process gets the whole result; a process without batches still takes part.
    """
    rows = _joined(batches)
    if world_size() > 1:
        rows = _joined([shard for shard in gather_objects(rows) if shard])
    if "indexes" not in rows:
        return rows
    # DistributedSampler pads with repeated items: the first row of each index is kept.
    first = first_occurrences(rows["indexes"])
    return {
        name: [value[i] for i in first.tolist()] if isinstance(value, list) else value[first]
        for name, value in rows.items()
    }


def _initialised() -> bool:
    return dist.is_available() and dist.is_initialized()


def _joined(batches: list[dict[str, Any]]) -> dict[str, Any]:
    """One dict of the batch dicts, tensors concatenated and lists chained; keys present in every batch only."""
    if not batches:
        return {}
    joined = {}
    for name in sorted(set.intersection(*(set(batch) for batch in batches))):
        parts = [batch[name] for batch in batches]
        joined[name] = [item for part in parts for item in part] if isinstance(parts[0], list) else torch.cat(parts)
    return joined
