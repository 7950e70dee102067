"""The embedding-export callback: ``lit-metric predict`` writes the embeddings, labels, dataset indices and file
paths of the predict set to one ``.pt`` or ``.npz`` file, and :func:`load_embeddings` reads either back."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor

from lit_metric.functional.retrieval import first_occurrences

__all__ = ["EmbeddingWriter", "gather_in_dataset_order", "load_embeddings", "save_embeddings"]

_SUFFIXES = (".pt", ".npz")


class EmbeddingWriter(BasePredictionWriter):
    """Writes what ``predict_step`` returns, with the batches' ``"label"``, ``"index"`` and ``"path"``, to one file.

    The file holds ``embeddings`` ``(N, D)`` float32, and, when the batches carry them, ``labels`` ``(N,)``,
    ``indexes`` ``(N,)`` (dataset positions) and ``paths`` (``N`` strings). With indexes the rows are in dataset
    order, once per item; under DDP every process's rows are gathered to rank 0 first, and the duplicates that
    ``DistributedSampler`` pads in are dropped, so the file is the one a single process writes. Without indexes the
    rows keep the order of the batches (and, under DDP, of the ranks).

    ``.pt`` files hold a dict of tensors (``paths`` a list of str) for :func:`torch.load`; ``.npz`` files hold
    NumPy arrays (``paths`` a str array) for :func:`numpy.load`. :func:`load_embeddings` reads both the same way.

    Args:
        output_path: the file to write; its suffix, ``.pt`` or ``.npz``, picks the format. Parent folders are made.
    """

    def __init__(self, output_path: str | Path = "embeddings.pt") -> None:
        super().__init__(write_interval="batch")
        self.output_path = Path(output_path)
        if self.output_path.suffix not in _SUFFIXES:
            raise ValueError(f"`output_path` must end in .pt or .npz, got {str(output_path)!r}")
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
                f"`predict_step` must return (B, D) embeddings for EmbeddingWriter, got {_describe(prediction)}"
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
            save_embeddings(export, self.output_path)


def gather_in_dataset_order(batches: list[dict[str, Any]]) -> dict[str, Any]:
    """This process's batches joined with every other process's, ordered by dataset index, each index once.

    Args:
        batches: dicts of ``(B, ...)`` tensors and ``B``-long lists, with the same keys; ``"indexes"`` holds
            dataset positions. Keys missing from some batch are dropped.

    Returns:
        One dict of ``(N, ...)`` tensors and ``N``-long lists; without ``"indexes"``, in batch then rank order.
        Under ``torch.distributed`` this is a collective call, every process gets the whole result.
    """
    rows = _joined(batches)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        shards: list[dict[str, Any] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(shards, rows)
        rows = _joined([shard for shard in shards if shard])
    if "indexes" not in rows:
        return rows
    # DistributedSampler pads with repeated items: the first row of each index is kept.
    first = first_occurrences(rows["indexes"])
    return {
        name: [value[i] for i in first.tolist()] if isinstance(value, list) else value[first]
        for name, value in rows.items()
    }


def save_embeddings(export: dict[str, Any], path: str | Path) -> None:
    """Write ``export`` (``embeddings`` and optionally ``labels``, ``indexes``, ``paths``) as ``.pt`` or ``.npz``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".pt":
        torch.save(export, path)
    else:
        arrays = {name: np.asarray(value) if name == "paths" else value.numpy() for name, value in export.items()}
        np.savez(path, **arrays)


def load_embeddings(path: str | Path) -> dict[str, Any]:
    """Read a file of :class:`EmbeddingWriter`: ``embeddings`` ``(N, D)`` and, if written, ``labels`` ``(N,)`` and
    ``indexes`` ``(N,)`` as tensors and ``paths`` as a list of ``N`` str, whether the file is ``.pt`` or ``.npz``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"`path` {str(path)!r} is not a file")
    if path.suffix == ".pt":
        return torch.load(path, weights_only=True)
    if path.suffix == ".npz":
        with np.load(path) as arrays:
            return {
                name: arrays[name].tolist() if name == "paths" else torch.from_numpy(arrays[name])
                for name in arrays.files
            }
    raise ValueError(f"`path` must end in .pt or .npz, got {str(path)!r}")


def _joined(batches: list[dict[str, Any]]) -> dict[str, Any]:
    """One dict of the batch dicts, tensors concatenated and lists chained; keys present in every batch only."""
    if not batches:
        return {}
    joined = {}
    for name in sorted(set.intersection(*(set(batch) for batch in batches))):
        parts = [batch[name] for batch in batches]
        joined[name] = [item for part in parts for item in part] if isinstance(parts[0], list) else torch.cat(parts)
    return joined


def _describe(x: Any) -> str:
    return f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
