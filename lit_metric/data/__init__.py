"""Data modules, data sets, samplers and transforms that yield lit_metric's batch format."""

from lit_metric.data.datasets import TensorImageDataset
from lit_metric.data.digits import DigitsDataModule
from lit_metric.data.image_folder import ImageFileDataset, ImageFolderDataModule
from lit_metric.data.reid import ReIDDataModule
from lit_metric.data.samplers import PKSampler
from lit_metric.data.transforms import Normalize, RandomAugment, load_image

__all__ = [
    "DigitsDataModule",
    "ImageFileDataset",
    "ImageFolderDataModule",
    "Normalize",
    "PKSampler",
    "RandomAugment",
    "ReIDDataModule",
    "TensorImageDataset",
    "load_image",
]
