"""Lightning callbacks, one job each."""

from lit_metric.callbacks.pair_miner import PairMiner

__all__ = ["PairMiner"]
