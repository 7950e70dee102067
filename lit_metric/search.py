"""Search by example: the nearest gallery items of new images, embedded by a trained checkpoint.

The gallery is embedded once (from images, a data set, a data loader or a file that ``lit-metric predict`` wrote with
:class:`~lit_metric.callbacks.prediction_writer.EmbeddingWriter`, read by :func:`~lit_metric.io.load_embeddings`)
and checked once; each search embeds the query images with the same
model and ranks the gallery with :func:`~lit_metric.functional.knn.cosine_knn`, the exact search that the
retrieval metrics use, so ties and ranking order are the same as in evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lit_metric.data.transforms import load_image
from lit_metric.functional._checks import check_k, check_matrix, describe
from lit_metric.functional.knn import cosine_knn, normalize
from lit_metric.io import load_embeddings
from lit_metric.module import MetricLearningModule

__all__ = ["EmbeddingIndex", "Neighbours", "embed_batches", "embed_images", "nearest"]

Gallery = Tensor | Dataset | DataLoader | str | Path


@dataclass(frozen=True)
class Neighbours:
    """The ``k`` nearest gallery items of ``Q`` queries, best first.

    Attributes:
        scores: ``(Q, k)`` cosine similarities.
        indices: ``(Q, k)`` gallery positions.
        labels: ``(Q, k)`` gallery labels, or ``None`` when the gallery has none.
        paths: ``Q`` lists of ``k`` gallery file paths, or ``None`` when the gallery has none.
    """

    scores: Tensor
    indices: Tensor
    labels: Tensor | None = None
    paths: list[list[str]] | None = None


class EmbeddingIndex:
    """A gallery of embeddings and the model that made them, searched with new images.

    Args:
        model: a trained :class:`~lit_metric.MetricLearningModule` (or subclass); its :meth:`embed` maps the query
            images to embeddings comparable with ``embeddings``.
        embeddings: ``(N, D)`` gallery embeddings.
        labels: ``(N,)`` gallery labels, if known.
        paths: ``N`` gallery file paths, if known.
        image_shape: ``(C, H, W)`` that query images must have, if known (it is when the gallery was embedded
            from images).

    The index holds a unit-length float32 copy of the gallery (``N x D x 4`` bytes), made and checked once, so that
    a search normalises and checks only its queries.
    """

    def __init__(
        self,
        model: MetricLearningModule,
        embeddings: Tensor,
        labels: Tensor | None = None,
        paths: Sequence[str] | None = None,
        image_shape: Sequence[int] | None = None,
    ) -> None:
        check_matrix("embeddings", embeddings)
        n = len(embeddings)
        if labels is not None and tuple(labels.shape) != (n,):
            raise ValueError(f"`labels` must have shape ({n},) to match `embeddings`, got {describe(labels, 'shape')}")
        if paths is not None and len(paths) != n:
            raise ValueError(f"`paths` must hold {n} paths to match `embeddings`, got {len(paths)}")
        self.model = model.eval()
        self.embeddings = embeddings
        self.unit_embeddings = normalize(embeddings)
        self.labels = labels.to(embeddings.device) if labels is not None else None
        self.paths = [str(path) for path in paths] if paths is not None else None
        self.image_shape = tuple(image_shape) if image_shape is not None else None

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint_path: str | Path,
        gallery: Gallery,
        labels: Tensor | None = None,
        paths: Sequence[str] | None = None,
        module_class: type[MetricLearningModule] = MetricLearningModule,
        batch_size: int = 256,
        map_location: str | torch.device = "cpu",
        weights_only: bool = True,
    ) -> EmbeddingIndex:
        """Load the model of ``checkpoint_path`` and embed ``gallery`` with it.

        Args:
            checkpoint_path: a Lightning checkpoint of ``module_class``. Checkpoints of ``lit-metric fit`` record
                their module class, so a subclass is rebuilt as that subclass once its module is imported.
            gallery: ``(N, C, H, W)`` images; a data set of item dicts or a data loader of batch dicts with
                ``"image"`` and optionally ``"label"`` and ``"path"``; or a ``.pt``/``.npz`` file written by
                :class:`~lit_metric.callbacks.prediction_writer.EmbeddingWriter` with this checkpoint.
            labels: ``(N,)`` labels of gallery images given as a tensor.
            paths: ``N`` file paths of gallery images given as a tensor.
            module_class: the class to load when the checkpoint does not record one.
            batch_size: images embedded at once.
            map_location: device of the model and the embeddings.
            weights_only: read the checkpoint as tensors and plain data only, so that a malicious file cannot run
                code; ``False`` unpickles any object, for trusted files only (see
                :meth:`~lit_metric.MetricLearningModule.load_from_checkpoint`). Embedding files are always read so.
        """
        path = Path(checkpoint_path)
        if not path.is_file():
            raise FileNotFoundError(f"`checkpoint_path` {str(path)!r} does not exist or is not a file")
        if not isinstance(gallery, Tensor) and (labels is not None or paths is not None):
            # A data set, loader or file brings its own labels and paths; ignoring the given ones would be silent.
            raise ValueError(
                "`labels` and `paths` are for a gallery of image tensors; a data set, data loader or file gallery "
                f"carries its own, got a {type(gallery).__name__} gallery"
            )
        model = module_class.load_from_checkpoint(path, map_location=map_location, weights_only=weights_only)
        if isinstance(gallery, (str, Path)):
            export = load_embeddings(gallery)
            return cls(model, export["embeddings"].to(map_location), export.get("labels"), export.get("paths"))
        if isinstance(gallery, Tensor):
            _check_images(gallery, "gallery")
            return cls(model, embed_images(model, gallery, batch_size), labels, paths, gallery.shape[1:])
        loader = gallery if isinstance(gallery, DataLoader) else DataLoader(gallery, batch_size=batch_size)
        return cls(model, **embed_batches(model, loader))

    def search(self, images: Tensor, k: int = 5) -> Neighbours:
        """The ``k`` nearest gallery items of each of the ``(Q, C, H, W)`` query images."""
        check_k(k, len(self.embeddings))
        _check_images(images, "images", self.image_shape)
        return self.search_embeddings(embed_images(self.model, images), k)

    def search_files(self, paths: Sequence[str | Path], k: int = 5) -> Neighbours:
        """The ``k`` nearest gallery items of each image file in ``paths``, read and normalised as the model's
        :attr:`~lit_metric.MetricLearningModule.preprocessing` says (the one its checkpoint records).

        Raises:
            ValueError: naming ``paths`` when the model declares no preprocessing; then prepare the images as in
                training and call :meth:`search`.
        """
        settings = self.model.preprocessing
        if settings is None:
            raise ValueError(
                "`paths`: the model declares no preprocessing to read them with; prepare the images as in training "
                "and call `search`"
            )
        images = torch.stack([load_image(path, settings["channels"], settings["image_size"]) for path in paths])
        mean, std = (torch.tensor(settings[key], dtype=torch.float32).view(-1, 1, 1) for key in ("mean", "std"))
        return self.search((images.float() / 255 - mean) / std, k)

    def search_embeddings(self, queries: Tensor, k: int = 5) -> Neighbours:
        """The ``k`` nearest gallery items of each of the ``(Q, D)`` query embeddings."""
        check_k(k, len(self.embeddings))
        dimension = self.embeddings.shape[1]
        check_matrix("queries", queries, f"(Q, {dimension})")
        if queries.shape[1] != dimension:
            raise ValueError(f"`queries` must have shape (Q, {dimension}) like the gallery, got {describe(queries, 'shape')}")
        unit_queries = normalize(queries.to(self.embeddings.device), "queries")
        # Both are checked already: the gallery when the index was built, the queries above and by normalize.
        scores, indices = cosine_knn(unit_queries, k, self.unit_embeddings, normalized=True, validate_args=False)
        labels = self.labels[indices] if self.labels is not None else None
        paths = [[self.paths[i] for i in row] for row in indices.tolist()] if self.paths is not None else None
        return Neighbours(scores, indices, labels, paths)


def nearest(checkpoint_path: str | Path, gallery: Gallery, images: Tensor, k: int = 5, **kwargs: Any) -> Neighbours:
    """The ``k`` nearest ``gallery`` items of ``(Q, C, H, W)`` ``images``, in one call; see
    :meth:`EmbeddingIndex.from_checkpoint` for ``gallery`` and ``kwargs``, ``weights_only=True`` among them."""
    return EmbeddingIndex.from_checkpoint(checkpoint_path, gallery, **kwargs).search(images, k)


def embed_images(model: MetricLearningModule, images: Tensor, batch_size: int = 256) -> Tensor:
    """``(N, D)`` embeddings of ``(N, C, H, W)`` images, in eval mode and without gradients."""
    model.eval()
    with torch.no_grad():
        return torch.cat([model.embed(chunk.to(model.device)) for chunk in images.split(batch_size)])


def embed_batches(model: MetricLearningModule, loader: DataLoader) -> dict[str, Any]:
    """Embeddings of a loader of batch dicts, with the ``labels`` and ``paths`` of the batches when they have them."""
    model.eval()
    embeddings, labels, paths = [], [], []
    with torch.no_grad():
        for batch in loader:
            embeddings.append(model.embed(batch["image"].to(model.device)))
            labels.append(batch.get("label"))
            paths.append(batch.get("path"))
    if not embeddings:
        raise ValueError("`loader` must yield at least one batch, got none")
    return {
        "embeddings": torch.cat(embeddings),
        "labels": torch.cat(labels) if all(x is not None for x in labels) else None,
        "paths": [str(p) for chunk in paths for p in chunk] if all(x is not None for x in paths) else None,
        "image_shape": tuple(batch["image"].shape[1:]),
    }


def _check_images(images: Any, name: str, image_shape: tuple[int, ...] | None = None) -> None:
    expected = "(N, C, H, W)" if image_shape is None else f"(N, {', '.join(map(str, image_shape))})"
    if (
        not isinstance(images, Tensor)
        or images.ndim != 4
        or len(images) == 0
        or (image_shape is not None and tuple(images.shape[1:]) != image_shape)
    ):
        raise ValueError(f"`{name}` must be a non-empty tensor of shape {expected}, got {describe(images, 'shape')}")
