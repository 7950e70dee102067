"""Data modules, data sets and samplers that yield lit_metric's batch format, and image decoding."""

from lit_metric.data.retrieval_benchmarks import BenchmarkDataModule
from lit_metric.data.datasets import TensorImageDataset
from lit_metric.data.digits import DigitsDataModule
from lit_metric.data.image_folder import ImageFileDataset, ImageFolderDataModule
from lit_metric.data.loaders import PKDataLoader
from lit_metric.data.reid import ReIDDataModule
from lit_metric.data.samplers import PKSampler
from lit_metric.data.transforms import load_image

__all__ = [
    "BenchmarkDataModule",
    "DigitsDataModule",
    "ImageFileDataset",
    "ImageFolderDataModule",
    "PKDataLoader",
    "PKSampler",
    "ReIDDataModule",
    "TensorImageDataset",
    "load_image",
]
