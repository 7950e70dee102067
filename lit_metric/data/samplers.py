"""Class-balanced P x K sampling, sharded across processes."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DistributedSampler

from lit_metric import distributed

__all__ = ["PKSampler", "check_pk_labels"]


def check_pk_labels(
    labels: torch.Tensor,
    classes_per_batch: int,
    samples_per_class: int,
    replacement: bool,
    class_names: Sequence[str] | None = None,
    source: str = "`labels`",
) -> torch.Tensor:
    """Raise a ValueError, naming the classes, when ``labels`` cannot fill batches of P classes x K samples.

    Args:
        labels: ``(N,)`` integer labels.
        classes_per_batch: P.
        samples_per_class: K.
        replacement: whether classes with fewer than K samples are drawn with replacement (and so allowed).
        class_names: ``class_names[label]`` names a class in the message; the label itself when ``None``.
        source: what ``labels`` are, for the message, e.g. "the training split".

    Returns:
        The number of samples of each class, in ascending label order.
    """
    classes, counts = torch.unique(labels, return_counts=True)
    if len(classes) < classes_per_batch:
        raise ValueError(
            f"`classes_per_batch` ({classes_per_batch}) exceeds the number of classes in {source} ({len(classes)})"
        )
    if not replacement and bool((counts < samples_per_class).any()):
        small = [
            f"{c if class_names is None else class_names[c]} ({n})"
            for c, n in zip(classes.tolist(), counts.tolist())
            if n < samples_per_class
        ]
        raise ValueError(
            f"classes {', '.join(small[:10])} of {source} have fewer than `samples_per_class` = {samples_per_class} "
            "samples; lower `samples_per_class` or allow `replacement`"
        )
    return counts


class PKSampler(DistributedSampler):
    """Yields dataset indices in batches of ``classes_per_batch`` (P) classes x ``samples_per_class`` (K) samples.

    Use it as ``DataLoader(dataset, sampler=sampler, batch_size=sampler.batch_size, drop_last=True)``. Every
    process draws the same global list of batches from ``seed + epoch`` and takes every ``num_replicas``-th one, so
    the batches of the ranks are disjoint and class-balanced. It is a :class:`~torch.utils.data.DistributedSampler`
    so that Lightning, with ``use_distributed_sampler`` at its default, keeps it instead of wrapping it, and calls
    :meth:`set_epoch` each epoch to reshuffle.

    The world size and rank that are not given are read from ``torch.distributed`` each time the sampler is
    iterated, not when it is built: a sampler built before Lightning starts its processes (a ``DataLoader`` passed to
    ``Trainer.fit`` under ``ddp`` or ``ddp_spawn``) still shards by the processes it ends up in.

    Within an epoch, every sample is used at most once, but for the repeats that ``replacement`` pads a class of
    fewer than K samples with, all within that class's one batch. Every epoch has the same number of batches, the
    most that the classes' groups of K can fill with P distinct classes each; samples of a class that do not fill a
    group of K, the few groups over, and the last batches that cannot go one to every rank are left out of that
    epoch: the documented ``drop_last`` that keeps every rank's batches full and equal in number, so no rank waits
    at a collective for a batch that never comes.

    :meth:`resume` starts the next iteration partway through an epoch, where a checkpoint left it;
    :class:`~lit_metric.data.PKDataLoader` calls it when Lightning restores a checkpoint.

    Args:
        labels: the class of every dataset item, in dataset order.
        classes_per_batch: P, distinct classes in each batch.
        samples_per_class: K, samples of each class in each batch.
        num_replicas: number of processes; defaults to the world size of the process group at iteration, or 1.
        rank: this process's rank; defaults to the rank in the process group at iteration, or 0.
        seed: seed of the shuffle, shared by all processes.
        replacement: pad classes with fewer than K samples with repeats of their own samples, so that they can be
            used; classes of K samples or more are drawn without repeats all the same.
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
        counts = check_pk_labels(labels, classes_per_batch, samples_per_class, replacement)
        if num_replicas is not None and num_replicas < 1:
            raise ValueError(f"`num_replicas` must be >= 1, got {num_replicas}")
        if rank is not None and rank < 0:
            raise ValueError(f"`rank` must be >= 0, got {rank}")
        if rank is not None and num_replicas is not None and rank >= num_replicas:
            raise ValueError(f"`rank` must be in [0, {num_replicas}), got {rank}")
        self.classes_per_batch = classes_per_batch
        self.samples_per_class = samples_per_class
        self._num_replicas = num_replicas
        self._rank = rank
        self.seed = seed
        self.replacement = replacement
        self.epoch = 0
        self._start = 0
        self._cache: tuple[tuple[int, int], list[torch.Tensor]] | None = None
        # One sort instead of a comparison of all labels per class, which is quadratic on data sets of many classes.
        self._members = list(torch.argsort(labels, stable=True).split(counts.tolist()))
        self._num_batches = self._max_batches()

    @property
    def num_replicas(self) -> int:
        """The number of processes the batches are sharded over."""
        if self._num_replicas is not None:
            return self._num_replicas
        return distributed.world_size()

    @property
    def rank(self) -> int:
        """This process's shard."""
        if self._rank is not None:
            return self._rank
        return distributed.rank()

    @property
    def batch_size(self) -> int:
        return self.classes_per_batch * self.samples_per_class

    def global_batches(self) -> list[torch.Tensor]:
        """All batches of this epoch, for all ranks: a list of ``(P * K,)`` index tensors."""
        key = (self.epoch, self.num_replicas)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self._draw_batches())
        return self._cache[1]

    def _draw_batches(self) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        groups = [self._class_groups(members, generator) for members in self._members]
        remaining = self._groups_to_use(torch.tensor([len(g) for g in groups]), generator)
        batches = []
        for left in range(self._num_batches, 0, -1):
            # A class with a group for every batch left must be in each of them; the other classes are drawn in
            # proportion to their remaining groups, which spreads large classes over the whole epoch.
            forced = torch.nonzero(remaining == left).flatten()
            weights = remaining.float().index_fill_(0, forced, 0.0)
            free = self.classes_per_batch - len(forced)
            drawn = torch.multinomial(weights, free, generator=generator) if free else forced[:0]
            chosen = torch.cat([forced, drawn])
            batches.append(torch.cat([groups[c].pop() for c in chosen.tolist()]))
            remaining[chosen] -= 1
        per_rank = len(batches) // self.num_replicas
        return batches[: per_rank * self.num_replicas]

    def _class_groups(self, members: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
        """A class's samples shuffled into groups of K; a class of fewer than K samples, which only ``replacement``
        allows, is one group of all its samples padded with random repeats of them."""
        k = self.samples_per_class
        picks = members[torch.randperm(len(members), generator=generator)]
        if len(picks) < k:
            picks = torch.cat([picks, picks[torch.randint(len(picks), (k - len(picks),), generator=generator)]])
        return list(picks[: len(picks) // k * k].view(-1, k))

    def _groups_per_class(self, size: int) -> int:
        k = self.samples_per_class
        return max(size // k, 1) if self.replacement else size // k

    def _max_batches(self) -> int:
        """The most batches of P distinct classes that the class groups fill: the largest ``n`` with
        ``sum(min(groups_c, n)) >= P * n`` (no class can be in a batch twice)."""
        groups = torch.tensor([self._groups_per_class(len(members)) for members in self._members])
        low, high = 0, int(groups.sum()) // self.classes_per_batch
        while low < high:
            middle = (low + high + 1) // 2
            if int(groups.clamp(max=middle).sum()) >= self.classes_per_batch * middle:
                low = middle
            else:
                high = middle - 1
        return low

    def _groups_to_use(self, groups: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Groups per class to use this epoch: at most one per batch, and exactly P per batch in total, so that every
        epoch has the same number of batches. The fewer than P groups over are dropped from random classes."""
        groups = groups.clamp(max=self._num_batches)
        for _ in range(int(groups.sum()) - self.classes_per_batch * self._num_batches):
            groups[torch.multinomial(groups.float(), 1, generator=generator)] -= 1
        return groups

    def __iter__(self) -> Iterator[int]:
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"`rank` must be in [0, {self.num_replicas}), got {self.rank}")
        self._check_batches_per_rank()
        batches = self.global_batches()[self.rank :: self.num_replicas][self._start :]
        # Only the iteration that resumes starts partway; the epochs after it are whole.
        self._start = 0
        return iter(torch.cat(batches).tolist())

    @property
    def batches_per_rank(self) -> int:
        """The batches each process gets in an epoch."""
        self._check_batches_per_rank()
        return self._num_batches // self.num_replicas

    @property
    def resume_point(self) -> int:
        """The batch of this process's epoch that the next iteration starts from: 0 but after :meth:`resume`."""
        return self._start

    def __len__(self) -> int:
        return self.batches_per_rank * self.batch_size

    def _check_batches_per_rank(self) -> None:
        # An empty epoch would make Lightning skip training with no more than a warning.
        if self._num_batches < self.num_replicas:
            raise ValueError(
                f"the labels fill {self._num_batches} batches of `classes_per_batch` x `samples_per_class` = "
                f"{self.classes_per_batch} x {self.samples_per_class}, fewer than the {self.num_replicas} processes "
                "that each need one; lower either"
            )

    def set_epoch(self, epoch: int) -> None:
        # A resume point belongs to its epoch: moving to another one drops it.
        if epoch != self.epoch:
            self._start = 0
        self.epoch = epoch

    def resume(self, epoch: int, batches_done: int) -> None:
        """Make the next iteration yield ``epoch`` from this process's batch ``batches_done`` on, the batches a run
        interrupted there had still to train on; the iterations after it yield whole epochs.

        Args:
            epoch: the epoch the interrupted run was in.
            batches_done: batches of that epoch this process had trained on, from 0 to :attr:`batches_per_rank`; a
                finished epoch resumes at the start of the next one.
        """
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"`epoch` must be an integer >= 0, got {epoch!r}")
        per_rank = self.batches_per_rank
        if isinstance(batches_done, bool) or not isinstance(batches_done, int) or not 0 <= batches_done <= per_rank:
            raise ValueError(
                f"`batches_done` must be an integer from 0 to the {per_rank} batches of an epoch, got "
                f"{batches_done!r}; resume with the labels, `classes_per_batch`, `samples_per_class` and number of "
                "processes the run was saved with"
            )
        if batches_done == per_rank:
            epoch, batches_done = epoch + 1, 0
        self.epoch, self._start = epoch, batches_done
