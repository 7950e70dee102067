"""The data loaders every data module builds: P x K class-balanced training batches that resume mid-epoch, and
ordered evaluation."""

from __future__ import annotations

import random
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lit_metric.data.samplers import PKSampler

__all__ = ["PKDataLoader", "eval_loader", "pk_train_loader"]


class PKDataLoader(DataLoader):
    """A :class:`~torch.utils.data.DataLoader` over a :class:`~lit_metric.data.PKSampler` whose place in the epoch
    goes into Lightning's checkpoints, so that a run resumed from a checkpoint taken after any batch trains on
    exactly the batches the interrupted run had still to train on.

    It takes the ``DataLoader``'s arguments, with ``sampler`` a ``PKSampler`` and ``batch_size`` its
    ``batch_size``. Lightning saves :meth:`state_dict` of a training loader that has one with the fit loop, and
    gives it back to :meth:`load_state_dict` before the resumed epoch begins. The state holds:

    - the epoch and the batches of it the loader has *yielded* to training, counted here rather than in the sampler,
      which worker processes read ahead of training;
    - the states of torch's, NumPy's and Python's global random generators when the checkpoint was taken, which are
      set again just before the next batch is loaded, so that augmentation (with ``num_workers=0``) and dropout
      draw what they would have drawn without the interruption.

    :func:`pk_train_loader` gives the loader a ``generator`` of its own for its workers' seeds, seeded from the global
    one when the loader is built, so that starting an iteration does not shift the random numbers that training
    draws. With ``num_workers > 0``, batches and their
    order still resume exactly, but the workers' own random generators start afresh: random augmentation done in
    workers differs from the uninterrupted run after a resume, and :meth:`load_state_dict` warns of it.
    """

    sampler: PKSampler

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, PKSampler):
            raise ValueError(f"`sampler` must be a PKSampler, got {type(self.sampler).__name__}")
        self._position = (self.sampler.epoch, 0)
        self._random_state: dict[str, Any] | None = None

    def __iter__(self) -> Iterator[Any]:
        # Read before the workers start, which take the sampler's indices at once and end its resume.
        self._position = (self.sampler.epoch, self.sampler.resume_point)
        return self._counted(super().__iter__(), *self._position)

    def _counted(self, batches: Iterator[Any], epoch: int, done: int) -> Iterator[Any]:
        if self._random_state is not None:
            _set_random_state(self._random_state)
            self._random_state = None
        for batch in batches:
            done += 1
            self._position = (epoch, done)
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """``{"epoch", "batches_done", "random_state"}``: where the training stands, for Lightning's checkpoint."""
        epoch, done = self._position
        # A state restored but not yet set again is still the one to continue from.
        random_state = self._random_state if self._random_state is not None else _random_state()
        return {"epoch": epoch, "batches_done": done, "random_state": random_state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Start the next iteration where :meth:`state_dict` left off, as Lightning does when a run resumes."""
        missing = {"epoch", "batches_done", "random_state"} - set(state_dict)
        if missing:
            raise ValueError(f"`state_dict` lacks {sorted(missing)}: it is not a PKDataLoader's state")
        self.sampler.resume(state_dict["epoch"], state_dict["batches_done"])
        self._position = (self.sampler.epoch, self.sampler.resume_point)
        self._random_state = state_dict["random_state"]
        if self.num_workers > 0:
            warnings.warn(
                f"resuming a PKDataLoader with num_workers={self.num_workers}: batches and their order resume exactly, "
                "but random numbers drawn in the worker processes (random augmentation) start afresh and differ from "
                "an uninterrupted run; num_workers=0 resumes bitwise",
                stacklevel=2,
            )


def _random_state() -> dict[str, Any]:
    """The global random generators' states, in types that ``torch.load(weights_only=True)`` reads."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": (name, keys.tolist(), position, has_gauss, cached_gaussian),
        "python": random.getstate(),
    }


def _set_random_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), position, has_gauss, cached_gaussian))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def pk_train_loader(
    dataset: Dataset,
    classes_per_batch: int,
    samples_per_class: int,
    replacement: bool,
    seed: int,
    num_workers: int,
) -> PKDataLoader:
    """Training loader of P x K class-balanced batches of a data set with a ``labels`` tensor, resumable mid-epoch."""
    sampler = PKSampler(
        dataset.labels,
        classes_per_batch=classes_per_batch,
        samples_per_class=samples_per_class,
        seed=seed,
        replacement=replacement,
    )
    return PKDataLoader(
        dataset,
        sampler=sampler,
        batch_size=sampler.batch_size,
        drop_last=True,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        # The workers' seeds come from the global generator, as `seed_everything` sets it, drawn here once rather
        # than when an epoch starts, which would shift the random numbers that a checkpoint's state continues.
        generator=torch.Generator().manual_seed(int(torch.randint(2**62, ()))),
    )


def eval_loader(dataset: Dataset, batch_size: int, num_workers: int) -> DataLoader:
    """Evaluation loader in data set order."""
    # Its own generator: evaluation between a checkpoint and the next training batch must not draw from the global
    # one, which the checkpoint's random state continues.
    return DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, persistent_workers=num_workers > 0,
        generator=torch.Generator(),
    )
