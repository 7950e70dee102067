"""Class-balanced P x K sampling, sharded across processes."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

__all__ = ["PKSampler"]


class PKSampler(DistributedSampler):
    """Yields dataset indices in batches of ``classes_per_batch`` (P) classes x ``samples_per_class`` (K) samples.

    Use it as ``DataLoader(dataset, sampler=sampler, batch_size=sampler.batch_size, drop_last=True)``. Every
    process draws the same global list of batches from ``seed + epoch`` and takes every ``num_replicas``-th one, so
    the batches of the ranks are disjoint and class-balanced, and every rank gets the same number of batches. It is
    a :class:`~torch.utils.data.DistributedSampler` so that Lightning, with ``use_distributed_sampler`` at its
    default, keeps it instead of wrapping it, and calls :meth:`set_epoch` each epoch to reshuffle.

    Within an epoch, every sample is used at most once (unless ``replacement``); samples of a class that do not fill
    a group of K are left out of that epoch.

    Args:
        labels: the class of every dataset item, in dataset order.
        classes_per_batch: P, distinct classes in each batch.
        samples_per_class: K, samples of each class in each batch.
        num_replicas: number of processes; defaults to the world size of the process group, or 1.
        rank: this process's rank; defaults to the rank in the process group, or 0.
        seed: seed of the shuffle, shared by all processes.
        replacement: draw with replacement within a class, so that classes with fewer than K samples can be used.
    """

    def __init__(
        self,
        labels: Sequence[int] | torch.Tensor,
        classes_per_batch: int,
        samples_per_class: int,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
        replacement: bool = False,
    ) -> None:
        labels = torch.as_tensor(labels)
        if labels.ndim != 1 or labels.is_floating_point():
            raise ValueError(f"`labels` must be a 1-D sequence of integers, got shape {tuple(labels.shape)}")
        if classes_per_batch < 1 or samples_per_class < 1:
            raise ValueError(
                f"`classes_per_batch` and `samples_per_class` must be >= 1, got {classes_per_batch} and {samples_per_class}"
            )
        classes, counts = torch.unique(labels, return_counts=True)
        if len(classes) < classes_per_batch:
            raise ValueError(
                f"`classes_per_batch` ({classes_per_batch}) exceeds the number of classes in `labels` ({len(classes)})"
            )
        if not replacement and bool((counts < samples_per_class).any()):
            small = classes[counts < samples_per_class].tolist()
            raise ValueError(
                f"classes {small[:10]} have fewer than `samples_per_class` = {samples_per_class} samples; "
                "lower `samples_per_class` or set `replacement=True`"
            )
        if num_replicas is None:
            num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if not 0 <= rank < num_replicas:
            raise ValueError(f"`rank` must be in [0, {num_replicas}), got {rank}")
        self.classes_per_batch = classes_per_batch
        self.samples_per_class = samples_per_class
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.replacement = replacement
        self.epoch = 0
        self._cache: tuple[int, list[torch.Tensor]] | None = None
        self._members = [torch.nonzero(labels == c).flatten() for c in classes]

    @property
    def batch_size(self) -> int:
        return self.classes_per_batch * self.samples_per_class

    def global_batches(self) -> list[torch.Tensor]:
        """All batches of this epoch, for all ranks: a list of ``(P * K,)`` index tensors."""
        if self._cache is None or self._cache[0] != self.epoch:
            self._cache = (self.epoch, self._draw_batches())
        return self._cache[1]

    def _draw_batches(self) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        k = self.samples_per_class
        groups = []
        for members in self._members:
            if self.replacement:
                count = max(len(members) // k, 1)
                picks = members[torch.randint(len(members), (count * k,), generator=generator)]
            else:
                picks = members[torch.randperm(len(members), generator=generator)]
                picks = picks[: len(picks) // k * k]
            groups.append(list(picks.view(-1, k)))
        batches = []
        remaining = torch.tensor([len(g) for g in groups], dtype=torch.float)
        while int((remaining > 0).sum()) >= self.classes_per_batch:
            # Drawing classes in proportion to their remaining groups spreads large classes over the whole epoch.
            chosen = torch.multinomial(remaining, self.classes_per_batch, generator=generator)
            batches.append(torch.cat([groups[c].pop() for c in chosen.tolist()]))
            remaining[chosen] -= 1
        per_rank = len(batches) // self.num_replicas
        return batches[: per_rank * self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        batches = self.global_batches()[self.rank :: self.num_replicas]
        return iter(torch.cat(batches).tolist() if batches else [])

    def __len__(self) -> int:
        return len(self.global_batches()) // self.num_replicas * self.batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
