"""The retrieval-pictures callback: after validation, draws what the embedding retrieves and how it lays out the
classes, writes the pictures as PNG files and logs them to W&B when the trainer has a ``WandbLogger``.

Figures are built as :class:`matplotlib.figure.Figure` objects, not through ``pyplot``, so drawing needs no display
and leaves the user's matplotlib backend alone."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import lightning as L
import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import WandbLogger
from matplotlib.figure import Figure
from sklearn.manifold import TSNE
from threadpoolctl import threadpool_limits
from torch import Tensor

from lit_metric.distributed import gather_in_dataset_order
from lit_metric.functional._checks import check_positive_int
from lit_metric.functional.knn import cosine_knn
from lit_metric.functional.norms import unit_rows
from lit_metric.functional.retrieval import exclusion_keys, resolve_roles

__all__ = ["RetrievalPictures", "draw_projection", "draw_retrieval_grid", "project_2d", "retrieval_examples"]

_CORRECT, _WRONG = "tab:green", "tab:red"
_PROJECTIONS = {"pca": "PCA", "tsne": "t-SNE"}
# Batch keys of the query/gallery protocol and the names retrieval_examples takes them by.
_ROLES = {"is_query": "is_query", "is_gallery": "is_gallery", "camera": "cameras"}


class RetrievalPictures(L.Callback):
    """Draws a retrieval grid and a 2-D projection of the validation embeddings every ``every_n_epochs`` epochs.

    During validation it keeps the embeddings that ``validation_step`` returns, with the labels and dataset
    indices (never the images); at the end it picks ``num_queries`` queries spread over the validation set,
    finds their ``k`` nearest gallery items with :func:`~lit_metric.functional.knn.cosine_knn` under the
    retrieval metric's rules (leave-one-out, or query/gallery with same-camera matches excluded), and loads the
    images it shows from the validation data set by their ``"index"``, which must be the position in that data
    set. Under DDP the processes' items are gathered and de-duplicated by index, so the pictures match those of
    one process.

    Pictures are written to ``dirpath`` as ``retrieval_grid-epochNNN.png`` and ``embedding_projection-epochNNN.png``
    and, with a ``WandbLogger``, logged as ``val/retrieval_grid`` and ``val/embedding_projection``.

    Args:
        num_queries: rows of the retrieval grid.
        k: neighbours shown for each query.
        every_n_epochs: draw after the validation of every ``every_n_epochs``-th epoch and of the last epoch
            (never during the sanity check).
        projection: ``"pca"`` (fast, linear) or ``"tsne"`` (slower, shows clusters better).
        max_points: at most this many items (evenly spaced) in the projection, to keep it readable and fast.
        dirpath: folder of the PNG files; ``None`` uses ``<save_dir>/<name>/<version>/pictures`` of the first
            logger (next to ModelCheckpoint's ``checkpoints``), or ``<default_root_dir>/pictures`` without one.
        seed: seed of t-SNE.
    """

    def __init__(
        self,
        num_queries: int = 8,
        k: int = 5,
        every_n_epochs: int = 1,
        projection: Literal["pca", "tsne"] = "pca",
        max_points: int = 2000,
        dirpath: str | Path | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        counts = {"num_queries": num_queries, "k": k, "every_n_epochs": every_n_epochs, "max_points": max_points}
        for name, value in counts.items():
            check_positive_int(name, value)
        if projection not in _PROJECTIONS:
            raise ValueError(f"`projection` must be 'pca' or 'tsne', got {projection!r}")
        self.num_queries = num_queries
        self.k = k
        self.every_n_epochs = every_n_epochs
        self.projection = projection
        self.max_points = max_points
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.seed = seed
        self._batches: list[dict[str, Tensor]] = []

    def _drawing(self, trainer: L.Trainer) -> bool:
        epochs_done = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and epochs_done == trainer.max_epochs
        return not trainer.sanity_checking and (epochs_done % self.every_n_epochs == 0 or last)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._batches = []

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: dict[str, Any],
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if dataloader_idx != 0 or not self._drawing(trainer):
            return
        # The embeddings that validation_step computed for the metric; embedding the batch again would double the work.
        if not isinstance(outputs, Tensor) or outputs.ndim != 2 or len(outputs) != len(batch["label"]):
            raise ValueError(
                "RetrievalPictures needs `validation_step` to return the batch's (B, D) embeddings, as "
                f"MetricLearningModule does; got {type(outputs).__name__}"
            )
        kept = {"embeddings": outputs, "labels": batch["label"], "indexes": batch["index"]}
        kept.update({name: batch[key] for key, name in _ROLES.items() if key in batch})
        self._batches.append({name: value.detach().cpu() for name, value in kept.items()})

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._drawing(trainer):
            return
        # Every process joins the gather, also one that saw no batch, or the others would wait for it forever.
        items = gather_in_dataset_order(self._batches)
        self._batches = []
        if trainer.is_global_zero and items:
            self._log(trainer, self._figures(trainer, items))

    def _figures(self, trainer: L.Trainer, items: dict[str, Tensor]) -> dict[str, Figure]:
        dataloader = trainer.val_dataloaders
        # Several loaders come as a list or a dict; the module's metric, and so these items, are of the first.
        if isinstance(dataloader, Mapping):
            dataloader = next(iter(dataloader.values()))
        dataset = (dataloader[0] if isinstance(dataloader, (list, tuple)) else dataloader).dataset
        labels, indexes = items["labels"], items["indexes"]
        queries, neighbours = retrieval_examples(
            items["embeddings"], labels, self.num_queries, self.k,
            items.get("is_query"), items.get("is_gallery"), items.get("cameras"),
        )
        grid = draw_retrieval_grid(
            [dataset[int(indexes[i])]["image"] for i in queries],
            labels[queries],
            [[None if j < 0 else dataset[int(indexes[j])]["image"] for j in row] for row in neighbours],
            [[None if j < 0 else int(labels[j]) for j in row] for row in neighbours],
        )
        spread = torch.linspace(0, len(labels) - 1, min(self.max_points, len(labels))).round().long()
        points = project_2d(items["embeddings"][spread], self.projection, self.seed)
        title = f"{_PROJECTIONS[self.projection]} of validation embeddings"
        return {"retrieval_grid": grid, "embedding_projection": draw_projection(points, labels[spread], title)}

    def _log(self, trainer: L.Trainer, figures: dict[str, Figure]) -> None:
        folder = self.dirpath if self.dirpath is not None else _default_dirpath(trainer)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {}
        for key, figure in figures.items():
            paths[key] = folder / f"{key}-epoch{trainer.current_epoch:03d}.png"
            figure.savefig(paths[key], dpi=100)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                for key, path in paths.items():
                    logger.log_image(key=f"val/{key}", images=[str(path)], step=trainer.global_step)


def retrieval_examples(
    embeddings: Tensor,
    labels: Tensor,
    num_queries: int,
    k: int,
    is_query: Tensor | None = None,
    is_gallery: Tensor | None = None,
    cameras: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Queries spread evenly over the query items and their nearest gallery items, under the retrieval metric's rules.

    Without ``is_query`` and ``is_gallery`` every item is both (leave-one-out); given one, the other is its
    complement. An item never retrieves itself and, with ``cameras``, nor an item of the same label and camera.

    Args:
        embeddings: ``(N, D)`` embeddings.
        labels: ``(N,)`` integer labels.
        num_queries: how many queries (fewer if there are fewer query items).
        k: how many neighbours (fewer if the gallery is smaller).
        is_query: ``(N,)`` bool.
        is_gallery: ``(N,)`` bool.
        cameras: ``(N,)`` integer camera ids.

    Returns:
        ``(queries (Q,), neighbours (Q, k'))``: item positions in rank order; ``-1`` marks a slot left empty by
        the exclusions.
    """
    is_query, is_gallery = resolve_roles(is_query, is_gallery, len(labels), labels.device)
    query_items, gallery_items = is_query.nonzero().squeeze(1), is_gallery.nonzero().squeeze(1)
    picks = torch.linspace(0, len(query_items) - 1, min(num_queries, len(query_items))).round().long()
    queries = query_items[picks]
    keys = exclusion_keys(labels, cameras)
    _, found = cosine_knn(
        embeddings[queries], min(k, len(gallery_items)), embeddings[gallery_items], keys[queries], keys[gallery_items]
    )
    return queries, torch.where(found >= 0, gallery_items[found.clamp(min=0)], -1)


def draw_retrieval_grid(
    query_images: list[Tensor],
    query_labels: Tensor,
    neighbour_images: list[list[Tensor | None]],
    neighbour_labels: list[list[int | None]],
) -> Figure:
    """One row per query: the query, then its neighbours in rank order framed green (same label) or red.

    Args:
        query_images: ``Q`` images ``(C, H, W)`` with ``C`` 1 or 3, in any value range.
        query_labels: ``(Q,)`` labels.
        neighbour_images: ``Q`` lists of ``k`` images; ``None`` leaves a slot blank.
        neighbour_labels: their labels.
    """
    rows, columns = len(query_images), 1 + max((len(row) for row in neighbour_images), default=0)
    figure = Figure(figsize=(1.3 * columns, 1.4 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    for r, (image, label) in enumerate(zip(query_images, query_labels.tolist())):
        _show(axes[r, 0], image, f"query {label}", "black")
        for c, (neighbour, neighbour_label) in enumerate(zip(neighbour_images[r], neighbour_labels[r]), start=1):
            if neighbour is None:
                axes[r, c].axis("off")
                continue
            _show(axes[r, c], neighbour, str(neighbour_label), _CORRECT if neighbour_label == label else _WRONG)
        for c in range(1 + len(neighbour_images[r]), columns):
            axes[r, c].axis("off")
    figure.suptitle("Nearest neighbours by cosine similarity (green: same label)")
    return figure


def project_2d(embeddings: Tensor, method: Literal["pca", "tsne"] = "pca", seed: int = 0) -> Tensor:
    """``(N, D)`` embeddings to ``(N, 2)`` points, after L2 normalisation (the geometry cosine retrieval sees)."""
    x = unit_rows(embeddings, torch.float32)
    if method == "tsne" and len(x) > 3:
        perplexity = min(30.0, (len(x) - 1) / 3)
        # scikit-learn's OpenMP threads and torch's spin against each other: one thread was measured 10-100x faster.
        with threadpool_limits(1, user_api="openmp"):
            points = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x.numpy())
        return torch.from_numpy(points).float()
    centred = x - x.mean(dim=0)
    # The top two right singular vectors are the principal axes; an exact SVD is cheap at these sizes.
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    points = centred @ vh[:2].T
    return F.pad(points, (0, 2 - points.shape[1]))


def draw_projection(points: Tensor, labels: Tensor, title: str = "") -> Figure:
    """Scatter of ``(N, 2)`` points coloured by their ``(N,)`` labels; a legend when there are at most 20 labels."""
    figure = Figure(figsize=(6, 5), layout="constrained")
    ax = figure.subplots()
    classes = labels.unique()
    colours = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
    for i, label in enumerate(classes.tolist()):
        chosen = labels == label
        ax.scatter(*points[chosen].T.numpy(), s=8, color=colours(i % colours.N), label=str(label))
    if len(classes) <= 20:
        ax.legend(title="label", fontsize="small", markerscale=2, loc="center left", bbox_to_anchor=(1, 0.5))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    return figure


def _show(ax, image: Tensor, title: str, frame: str) -> None:
    ax.imshow(_displayable(image), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8, color=frame)
    for spine in ax.spines.values():
        spine.set_edgecolor(frame)
        spine.set_linewidth(3)


def _displayable(image: Tensor) -> np.ndarray:
    """``(C, H, W)`` image, normalised or not, as ``(H, W)`` or ``(H, W, 3)`` in ``[0, 1]`` (min-max per image)."""
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"images must have shape (1, H, W) or (3, H, W), got shape {tuple(image.shape)}")
    x = image.detach().float().cpu()
    low, high = x.min(), x.max()
    x = (x - low) / (high - low) if high > low else torch.zeros_like(x)
    return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()


def _default_dirpath(trainer: L.Trainer) -> Path:
    """``<save_dir>/<name>/<version>/pictures`` of the first logger, as ModelCheckpoint places ``checkpoints``."""
    if not trainer.loggers:
        return Path(trainer.default_root_dir) / "pictures"
    logger = trainer.loggers[0]
    version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
    return Path(logger.save_dir or trainer.default_root_dir, str(logger.name), version, "pictures")
