"""The item format every lit_metric data set yields: a dict of image, label, dataset index and optional extras."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["TensorImageDataset"]


class TensorImageDataset(Dataset):
    """Images held in memory as one tensor, with their labels.

    Items are dicts ``{"image": (C, H, W), "label": (), "index": ()}``; ``index`` is the position in this data set,
    which the retrieval metric uses to drop the duplicates that distributed samplers pad in.

    Args:
        images: ``(N, C, H, W)`` float tensor.
        labels: ``(N,)`` integer tensor.
        transform: applied to each image tensor, e.g. augmentation during training.
    """

    def __init__(self, images: Tensor, labels: Tensor, transform: Callable[[Tensor], Tensor] | None = None) -> None:
        if images.ndim != 4:
            raise ValueError(f"`images` must have shape (N, C, H, W), got shape {tuple(images.shape)}")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"`labels` must have shape ({images.shape[0]},), got shape {tuple(labels.shape)}")
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return {"image": image, "label": self.labels[index], "index": torch.tensor(index)}
