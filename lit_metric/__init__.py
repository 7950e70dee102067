"""lit_metric: deep metric learning as a first-class citizen of PyTorch Lightning."""

import os

# OpenMP threads that spin while waiting for work slow torch down 26x on cores that other processes share (other jobs,
# DataLoader workers, faiss's own OpenMP runtime), in benchmarks/openmp.py; passive threads sleep instead. The
# runtimes read the policy when they load, so it is set before torch is imported, and only if the user has not.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
