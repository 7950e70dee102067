"""The embedding-export callback: ``lit-metric predict`` writes the embeddings, labels, dataset indices and file
paths of the predict set to one ``.pt`` or ``.npz`` file of :mod:`lit_metric.io`, which
:func:`~lit_metric.io.load_embeddings` reads back, or to one file per process and a manifest."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from lit_metric.distributed import gather_in_dataset_order, gather_objects, shard_in_dataset_order
from lit_metric.functional._checks import describe
from lit_metric.io import save_embeddings, save_manifest, shard_path

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

    A sharded export gathers nothing: with an ``output_path`` ending in ``.json`` every process writes its own rows,
    once per item and in dataset order, to ``<stem>-<rank>-of-<world size>.pt`` beside it, and rank 0 writes there
    the manifest of :mod:`lit_metric.io` that lists them; a copy that ``DistributedSampler`` pads in is left to the
    process of lowest rank that holds the item. :class:`~lit_metric.search.EmbeddingIndex` opens the manifest.

    Args:
        output_path: the file to write; its suffix, ``.pt`` or ``.npz``, picks the format, and ``.json`` a sharded
            export. Parent folders are made. ``None`` writes ``embeddings.pt`` into the trainer's
            ``default_root_dir``, which ``lit-metric predict`` sets to the checkpoint's run folder.
    """

    def __init__(self, output_path: str | Path | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_path = None if output_path is None else Path(output_path)
        if self.output_path is not None and self.output_path.suffix not in (".pt", ".npz", ".json"):
            raise ValueError(
                f"`output_path` must end in .pt or .npz, or in .json for a sharded export, got {str(output_path)!r}"
            )
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
        rows, self._rows = self._rows, []
        if self.output_path is not None and self.output_path.suffix == ".json":
            self._write_shards(trainer, rows)
            return
        export = gather_in_dataset_order(rows)
        if trainer.is_global_zero and export:
            path = self.output_path or Path(trainer.default_root_dir) / "embeddings.pt"
            save_embeddings(export, path)
            rank_zero_info(f"Embeddings of {len(export['embeddings'])} items written to {path}")

    def _write_shards(self, trainer: L.Trainer, rows: list[dict[str, Any]]) -> None:
        shard = shard_in_dataset_order(rows)
        path = shard_path(self.output_path, trainer.global_rank, trainer.world_size)
        if shard:
            save_embeddings(shard, path)
        mine = (path, *shard["embeddings"].shape) if shard else None
        # After the gather every shard is written, so the manifest never lists a file that is not there yet.
        shards = [written for written in gather_objects(mine) if written is not None]
        if trainer.is_global_zero and shards:
            files, rows_per_shard, dimensions = zip(*shards)
            save_manifest(self.output_path, list(files), list(rows_per_shard), dimensions[0])
            items = sum(rows_per_shard)
            rank_zero_info(f"Embeddings of {items} items written to {len(files)} shards of {self.output_path}")

