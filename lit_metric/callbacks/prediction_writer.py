"""The embedding-export callback: ``lit-metric predict`` writes the embeddings, labels, dataset indices and file
paths of the predict set to one ``.pt`` or ``.npz`` file of :mod:`lit_metric.io`, which
:func:`~lit_metric.io.load_embeddings` reads back."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from lit_metric.distributed import gather_in_dataset_order
from lit_metric.functional._checks import describe
from lit_metric.io import check_embedding_path, save_embeddings

__all__ = ["EmbeddingWriter"]


class EmbeddingWriter(BasePredictionWriter):
    """Writes what ``predict_step`` returns, with the batches' ``"label"``, ``"index"`` and ``"path"``, to one file.

    The file holds ``embeddings`` ``(N, D)`` float32, and, when the batches carry them, ``labels`` ``(N,)``,
    ``indexes`` ``(N,)`` (dataset positions) and ``paths`` (``N`` strings). With indexes the rows are in dataset
    order, once per item; under DDP every process's rows are gathered to rank 0 first, and the duplicates that
    ``DistributedSampler`` pads in are dropped, so the file is the one a single process writes. Without indexes the
    rows keep the order of the batches (and, under DDP, of the ranks).

    The file format, ``.pt`` for :func:`torch.load` or ``.npz`` for :func:`numpy.load`, is :mod:`lit_metric.io`'s;
    :func:`~lit_metric.io.load_embeddings` reads both the same way.

    Args:
        output_path: the file to write; its suffix, ``.pt`` or ``.npz``, picks the format. Parent folders are made.
            ``None`` writes ``embeddings.pt`` into the trainer's ``default_root_dir``, which ``lit-metric predict``
            sets to the checkpoint's run folder.
    """

    def __init__(self, output_path: str | Path | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_path = check_embedding_path("output_path", output_path) if output_path is not None else None
        self._rows: list[dict[str, Any]] = []

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._rows = []

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Tensor,
        batch_indices: Sequence[int] | None,
        batch: dict[str, Any],
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        if dataloader_idx != 0:
            raise ValueError("EmbeddingWriter writes one predict dataloader; got a batch from dataloader_idx > 0")
        if not isinstance(prediction, Tensor) or prediction.ndim != 2:
            raise ValueError(
                f"`predict_step` must return (B, D) embeddings for EmbeddingWriter, got {describe(prediction, 'shape')}"
            )
        rows: dict[str, Any] = {"embeddings": prediction.detach().float().cpu()}
        for key, name in (("label", "labels"), ("index", "indexes")):
            if key in batch:
                rows[name] = batch[key].detach().cpu()
        if "path" in batch:
            rows["paths"] = [str(path) for path in batch["path"]]
        self._rows.append(rows)

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        export = gather_in_dataset_order(self._rows)
        self._rows = []
        if trainer.is_global_zero and export:
            path = self.output_path or Path(trainer.default_root_dir) / "embeddings.pt"
            save_embeddings(export, path)
            rank_zero_info(f"Embeddings of {len(export['embeddings'])} items written to {path}")

