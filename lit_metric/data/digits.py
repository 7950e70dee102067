"""The embedded default data set: scikit-learn's bundled 8x8 handwritten digits, with no download."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import lightning as L
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader

from lit_metric.data.datasets import TensorImageDataset
from lit_metric.data.loaders import eval_loader, pk_train_loader

__all__ = ["DigitsDataModule"]


class DigitsDataModule(L.LightningDataModule):
    """The 1,797 8x8 digits of ``sklearn.datasets.load_digits`` as ``(1, 8, 8)`` images in ``[0, 1]``.

    The default ``"stratified"`` split holds out ``holdout_fraction`` of the images of every class (seeded), and
    retrieval is evaluated on the held-out images. ``"class_disjoint"`` trains on the classes not in
    ``holdout_classes`` and evaluates on those; it is not the default because with ten classes, training on five
    was measured to give embeddings that retrieve the other five worse than raw pixels do.

    The held-out set serves validation, test and predict alike. Training batches are P x K class-balanced.

    Args:
        split: ``"stratified"`` or ``"class_disjoint"``.
        holdout_fraction: share of each class held out by the stratified split.
        holdout_classes: the digits held out by the class-disjoint split.
        classes_per_batch: P, classes in each training batch.
        samples_per_class: K, samples of each class in each training batch.
        eval_batch_size: batch size for validation, test and predict.
        num_workers: data loader workers.
        seed: seed of the split and of the sampler.
    """

    def __init__(
        self,
        split: Literal["stratified", "class_disjoint"] = "stratified",
        holdout_fraction: float = 0.3,
        holdout_classes: Sequence[int] = (5, 6, 7, 8, 9),
        classes_per_batch: int = 10,
        samples_per_class: int = 16,
        eval_batch_size: int = 512,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if split not in ("stratified", "class_disjoint"):
            raise ValueError(f"`split` must be 'stratified' or 'class_disjoint', got {split!r}")
        if not 0 < holdout_fraction < 1:
            raise ValueError(f"`holdout_fraction` must be in (0, 1), got {holdout_fraction}")
        if split == "class_disjoint" and not set() < set(holdout_classes) < set(range(10)):
            raise ValueError(
                f"`holdout_classes` must be a non-empty proper subset of the digits 0-9, got {list(holdout_classes)}"
            )
        self.save_hyperparameters()
        self.train_set: TensorImageDataset | None = None
        self.holdout_set: TensorImageDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.holdout_set is not None:
            return
        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        labels = torch.tensor(digits.target, dtype=torch.long)
        if self.hparams.split == "stratified":
            train_idx, holdout_idx = train_test_split(
                torch.arange(len(labels)).numpy(),
                test_size=self.hparams.holdout_fraction,
                stratify=labels.numpy(),
                random_state=self.hparams.seed,
            )
            train_idx, holdout_idx = torch.as_tensor(train_idx), torch.as_tensor(holdout_idx)
        else:
            held = torch.isin(labels, torch.tensor(list(self.hparams.holdout_classes)))
            train_idx, holdout_idx = torch.nonzero(~held).flatten(), torch.nonzero(held).flatten()
        self.train_set = TensorImageDataset(images[train_idx], labels[train_idx])
        self.holdout_set = TensorImageDataset(images[holdout_idx], labels[holdout_idx])

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        return pk_train_loader(
            self.train_set, hp.classes_per_batch, hp.samples_per_class, replacement=False, seed=hp.seed,
            num_workers=hp.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        return self._holdout_loader()

    def test_dataloader(self) -> DataLoader:
        return self._holdout_loader()

    def predict_dataloader(self) -> DataLoader:
        return self._holdout_loader()

    def _holdout_loader(self) -> DataLoader:
        return eval_loader(self.holdout_set, self.hparams.eval_batch_size, self.hparams.num_workers)
