"""Lightning callbacks, one job each."""

from lit_metric.callbacks.backbone_freeze import BackboneFreeze
from lit_metric.callbacks.pair_miner import PairMiner
from lit_metric.callbacks.pictures import RetrievalPictures
from lit_metric.callbacks.prediction_writer import EmbeddingWriter

__all__ = ["BackboneFreeze", "EmbeddingWriter", "PairMiner", "RetrievalPictures"]
