"""The one home of lit_metric's ``torch.distributed`` code: process lookups, gathers (one with gradients), sums over
processes, the dataset-order gather that drops the duplicates ``DistributedSampler`` pads in, and the pieces of
sharded evaluation: rows sent block by block from their owner, results gathered or summed back to it, settings that
every process must share, and the copies of an item found across processes without gathering them.

Every helper also works on a single process, without a process group, where it returns the one process's answer.
The gathers and sums are collective calls under ``torch.distributed``: every process must make them, in the same
order, or the others wait forever.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "blocks_of_every_process",
    "check_same_on_every_process",
    "first_copies",
    "first_copies_across_processes",
    "first_occurrences",
    "first_of_each",
    "gather_to",
    "gather_in_dataset_order",
    "gather_objects",
    "gather_rows",
    "gather_rows_with_grad",
    "gather_sizes",
    "rank",
    "raise_on_every_process",
    "shard_in_dataset_order",
    "sum_over_processes",
    "sum_to",
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


def blocks_of_every_process(tensors: Sequence[Tensor], block_rows: int) -> Iterator[tuple[int, int, list[Tensor]]]:
    """Every process's rows, block by block, on every process: ``(owner, start, block)`` for rows ``start`` to
    ``start + block_rows`` of the owner's ``tensors``, broadcast from it, owner by owner in rank order.

    Args:
        tensors: ``(N_p, ...)`` tensors of this process with equal ``N_p`` (which may differ between processes, and be
            0); their trailing shapes and dtypes must be the same on every process.
        block_rows: rows per block, ``>= 1``.
    """
    sizes = gather_sizes(len(tensors[0]), tensors[0].device)
    for owner, size in enumerate(sizes):
        for start in range(0, size, block_rows):
            rows = min(block_rows, size - start)
            if owner == rank():
                block = [tensor[start : start + rows].contiguous() for tensor in tensors]
            else:
                block = [tensor.new_empty((rows, *tensor.shape[1:])) for tensor in tensors]
            if world_size() > 1:
                for part in block:
                    dist.broadcast(part, owner)
            yield owner, start, block


def gather_to(tensor: Tensor, owner: int) -> list[Tensor] | None:
    """Every process's ``tensor`` (one shape on all of them), in rank order, on process ``owner``; ``None`` on the
    others. ``[tensor]`` on one process."""
    if world_size() == 1:
        return [tensor]
    gathered = [torch.empty_like(tensor) for _ in range(world_size())] if rank() == owner else None
    dist.gather(tensor.contiguous(), gathered, dst=owner)
    return gathered


def sum_to(tensor: Tensor, owner: int) -> Tensor | None:
    """``tensor`` (one shape on every process) summed elementwise over the processes, on process ``owner``; ``None``
    on the others. ``tensor`` itself on one process."""
    if world_size() == 1:
        return tensor
    tensor = tensor.clone()
    dist.reduce(tensor, dst=owner)
    return tensor if rank() == owner else None


def raise_on_every_process(error: str | None) -> None:
    """Raise a ValueError on every process when any process has an ``error`` message, so that a process that finds
    bad input does not leave the others waiting in a collective; the message says which rank found it."""
    errors = [(where, message) for where, message in enumerate(gather_objects(error)) if message is not None]
    if errors:
        where, message = errors[0]
        raise ValueError(message if world_size() == 1 else f"{message} (on rank {where})")


def check_same_on_every_process(settings: dict[str, Any], group: Any | None = None) -> None:
    """Raise a ValueError on every process of ``group`` (default: all), naming the first setting that differs, unless
    they all have the same ``settings`` (picklable values, such as a metric's options or an embedding width)."""
    everyone = gather_objects(settings, group)
    for name in settings:
        values = [process_settings[name] for process_settings in everyone]
        if any(value != values[0] for value in values):
            described = ", ".join(f"{value!r} on rank {where}" for where, value in enumerate(values))
            raise ValueError(f"`{name}` must be the same on every process, got {described}")


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


def first_of_each(indexes: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`first_occurrences` of ``(N,)`` ``indexes``, ``(U,)``, and the ``(N,)`` position of each item's first
    occurrence, its own position for a first one."""
    first = first_occurrences(indexes)
    return first, first[torch.unique(indexes, return_inverse=True)[1]]


def first_copies(indexes: Tensor, values: Tensor) -> tuple[Tensor, tuple[int, int] | None]:
    """:func:`first_occurrences` of ``(N,)`` ``indexes`` and the first ``(index, column)`` at which copies of an
    item differ in the ``(N, C)`` ``values`` (``None`` when they are all alike): items with equal index must be copies,
    as ``DistributedSampler`` pads them in, or dropping all but one of them would lose items silently."""
    first, copy_of = first_of_each(indexes)
    differs = (values[copy_of] != values).nonzero()
    if len(differs) == 0:
        return first, None
    row, column = differs[0].tolist()
    return first, (int(indexes[row]), column)


def first_copies_across_processes(indexes: Tensor, values: Tensor) -> tuple[Tensor, tuple[int, int] | None]:
    """:func:`first_copies` over the items of every process, without gathering them: ``(N_p,)`` bool, which of this
    process's items to keep so that every dataset index is kept once (its first copy in rank order), and the first
    conflict found, the same on every process.

    Each index is checked by process ``index % P``: the items travel to it once (``all_to_all``) and its verdicts
    back, so a process sends and receives about ``N_p x (C + 1)`` integers, not the ``N x C`` of a gather.
    """
    size = world_size()
    if size == 1:
        first, conflict = first_copies(indexes, values)
        return torch.zeros(len(indexes), dtype=torch.bool, device=indexes.device).index_fill_(0, first, True), conflict
    checker = indexes % size
    order = checker.argsort(stable=True)
    send = torch.bincount(checker, minlength=size)
    receive = torch.empty_like(send)
    dist.all_to_all_single(receive, send)
    send, receive = send.tolist(), receive.tolist()
    rows = torch.cat([indexes[:, None], values], dim=1)[order].contiguous()
    arrived = rows.new_empty((sum(receive), rows.shape[1]))
    dist.all_to_all_single(arrived, rows, receive, send)
    # Arrived in rank order, each process's items in their own order: the first of equal indexes is the first copy.
    first, conflict = first_copies(arrived[:, 0], arrived[:, 1:])
    verdicts = torch.zeros(len(arrived), dtype=torch.long, device=indexes.device).index_fill_(0, first, 1)
    returned = verdicts.new_empty(len(indexes))
    dist.all_to_all_single(returned, verdicts, send, receive)
    keep = torch.empty_like(returned).index_copy_(0, order, returned).bool()
    conflicts = [found for found in gather_objects(conflict) if found is not None]
    return keep, min(conflicts) if conflicts else None


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


def shard_in_dataset_order(batches: list[dict[str, Any]]) -> dict[str, Any]:
    """This process's batches joined and ordered by dataset index, without the items that a process of lower rank
    also holds (the copies ``DistributedSampler`` pads in): this process's shard of the data set, gathering nothing.

    Args:
        batches: as :func:`gather_in_dataset_order`. Without ``"indexes"`` the rows keep their batch order.

    Returns:
        One dict of ``(N_p, ...)`` tensors and ``N_p``-long lists; ``{}`` without batches. A collective call with
        indexes: every process makes it, one without batches too.
    """
    rows = _joined(batches)
    # A process without batches does not know whether the others have indexes: it asks them.
    if not any(gather_objects("indexes" in rows if rows else None)):
        return rows
    indexes = rows.get("indexes", torch.empty(0, dtype=torch.long))
    keep, _ = first_copies_across_processes(indexes, indexes.new_empty(len(indexes), 0))
    kept = keep.nonzero().squeeze(1)
    order = kept[indexes[kept].argsort()].tolist()
    return {
        name: [value[i] for i in order] if isinstance(value, list) else value[order] for name, value in rows.items()
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
