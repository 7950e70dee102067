"""The data loaders every data module builds: P x K class-balanced training batches and ordered evaluation."""

from __future__ import annotations

from torch.utils.data import DataLoader, Dataset

from lit_metric.data.samplers import PKSampler

__all__ = ["eval_loader", "pk_train_loader"]


def pk_train_loader(
    dataset: Dataset,
    classes_per_batch: int,
    samples_per_class: int,
    replacement: bool,
    seed: int,
    num_workers: int,
) -> DataLoader:
    """Training loader of P x K class-balanced batches of a data set with a ``labels`` tensor."""
    sampler = PKSampler(
        dataset.labels,
        classes_per_batch=classes_per_batch,
        samples_per_class=samples_per_class,
        seed=seed,
        replacement=replacement,
    )
    return DataLoader(
        dataset,
        sampler=sampler,
        batch_size=sampler.batch_size,
        drop_last=True,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )


def eval_loader(dataset: Dataset, batch_size: int, num_workers: int) -> DataLoader:
    """Evaluation loader in data set order."""
    return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, persistent_workers=num_workers > 0)
