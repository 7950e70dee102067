"""The LightningModule that trains an embedding network with a pair-based criterion and evaluates retrieval."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lit_metric.callbacks.pair_miner import PairMiner
from lit_metric.functional.deviance import cosine_similarity
from lit_metric.losses import BinomialDevianceLoss
from lit_metric.metrics import RetrievalMetrics

__all__ = ["MetricLearningModule"]


class MetricLearningModule(L.LightningModule):
    """Trains ``embedding_net`` with ``criterion`` on mined pairs and logs retrieval metrics.

    Batches are dicts with at least ``"image"`` and ``"label"``; evaluation batches also carry the dataset
    ``"index"`` and, for re-ID, ``"camera"``, ``"is_query"`` and ``"is_gallery"``. Each step of the work is its
    own method (:meth:`embed`, :meth:`gather_reference`, :meth:`similarity`, :meth:`mine`) so that a subclass
    changes one thing at a time.

    Args:
        embedding_net: maps a batch of images to ``(B, D)`` embeddings.
        criterion: loss with ``from_similarity(similarity, m, w)``; defaults to ``BinomialDevianceLoss()``.
        optimizer: builds the optimizer from the parameters (LightningCLI's ``OptimizerCallable``).
        scheduler: builds an LR scheduler from the optimizer, or ``None``.
        metrics: retrieval metric for validation and test (each gets its own copy); defaults to
            ``RetrievalMetrics()``.
    """

    def __init__(
        self,
        embedding_net: nn.Module,
        criterion: nn.Module | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        metrics: RetrievalMetrics | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.embedding_net = embedding_net
        self.criterion = criterion if criterion is not None else BinomialDevianceLoss()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        metrics = metrics if metrics is not None else RetrievalMetrics()
        self.val_metrics = metrics.clone()
        self.test_metrics = metrics.clone()
        self._default_miner = PairMiner()

    def forward(self, images: Tensor) -> Tensor:
        return self.embed(images)

    def embed(self, images: Tensor) -> Tensor:
        """``(B, ...)`` images to ``(B, D)`` embeddings."""
        return self.embedding_net(images)

    def gather_reference(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """References that the local anchors are compared with: the batch itself on one process.

        Returns:
            ``(reference_embeddings (R, D), reference_labels (R,), anchor_index (B,))``, where ``anchor_index`` is the
            position of each local anchor among the references.
        """
        return embeddings, labels, torch.arange(len(labels), device=labels.device)

    def similarity(self, embeddings: Tensor, reference_embeddings: Tensor) -> Tensor:
        """``(B, R)`` cosine similarity in float32, also under mixed precision."""
        if reference_embeddings is embeddings:
            return cosine_similarity(embeddings)
        return cosine_similarity(embeddings, reference_embeddings)

    @property
    def miner(self) -> PairMiner:
        """The :class:`PairMiner` among the trainer's callbacks, or the paper's all-pairs default."""
        if self._trainer is not None:
            for callback in self.trainer.callbacks:
                if isinstance(callback, PairMiner):
                    return callback
        return self._default_miner

    def mine(
        self, similarity: Tensor, labels: Tensor, reference_labels: Tensor, anchor_index: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``(M, W)``, each ``(B, R)``, from the miner for a detached ``(B, R)`` similarity."""
        return self.miner.mine(similarity, labels, reference_labels, anchor_index)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        labels = batch["label"]
        embeddings = self.embed(batch["image"])
        reference, reference_labels, anchor_index = self.gather_reference(embeddings, labels)
        similarity = self.similarity(embeddings, reference)
        m, w = self.mine(similarity.detach(), labels, reference_labels, anchor_index)
        loss = self.criterion.from_similarity(similarity, m, w)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(labels))
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._update_metrics(self.val_metrics, batch)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._update_metrics(self.test_metrics, batch)

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self.embed(batch["image"])

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val", self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test", self.test_metrics)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        config = {"scheduler": scheduler}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = "val/map@r"
        return {"optimizer": optimizer, "lr_scheduler": config}

    def _update_metrics(self, metrics: RetrievalMetrics, batch: dict[str, Tensor]) -> None:
        metrics.update(
            self.embed(batch["image"]),
            batch["label"],
            batch["index"],
            is_query=batch.get("is_query"),
            is_gallery=batch.get("is_gallery"),
            cameras=batch.get("camera"),
        )

    def _log_metrics(self, stage: str, metrics: RetrievalMetrics) -> None:
        values = metrics.compute()
        metrics.reset()
        self.log_dict({f"{stage}/{name}": value.float() for name, value in values.items()})
