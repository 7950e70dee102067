"""lit_metric: deep metric learning as a first-class citizen of PyTorch Lightning."""

from lit_metric.callbacks import PairMiner
from lit_metric.losses import BinomialDevianceLoss
from lit_metric.metrics import RetrievalMetrics
from lit_metric.module import MetricLearningModule
from lit_metric.networks import ConvEmbedder

__all__ = ["BinomialDevianceLoss", "ConvEmbedder", "MetricLearningModule", "PairMiner", "RetrievalMetrics"]
__version__ = "0.1.0"
