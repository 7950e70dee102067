"""lit_metric: deep metric learning as a first-class citizen of PyTorch Lightning."""

from lit_metric.callbacks import BackboneFreeze, EmbeddingWriter, PairMiner, RetrievalPictures
from lit_metric.io import load_embeddings, save_embeddings
from lit_metric.losses import BinomialDevianceLoss
from lit_metric.metrics import RetrievalMetrics
from lit_metric.module import MetricLearningModule
from lit_metric.networks import BackboneEmbedder, ConvEmbedder, PartEmbedder
from lit_metric.search import EmbeddingIndex, nearest

__all__ = [
    "BackboneEmbedder",
    "BackboneFreeze",
    "BinomialDevianceLoss",
    "ConvEmbedder",
    "EmbeddingIndex",
    "EmbeddingWriter",
    "MetricLearningModule",
    "PartEmbedder",
    "PairMiner",
    "RetrievalMetrics",
    "RetrievalPictures",
    "load_embeddings",
    "nearest",
    "save_embeddings",
]
__version__ = "0.1.0"
