"""Search by example: the nearest gallery items of new images, embedded by a trained checkpoint.

The gallery is embedded once (from images, a data set, a data loader or a file that ``lit-metric predict`` wrote with
:class:`~lit_metric.callbacks.prediction_writer.EmbeddingWriter`, read by :func:`~lit_metric.io.load_embeddings`)
and checked once, or, exported in shards, read shard by shard (:class:`ShardedEmbeddingIndex`); each
search prepares the query images as the checkpoint records (:func:`prepare_images`), embeds
them with the same model and ranks the gallery with :func:`~lit_metric.functional.knn.cosine_knn`, the exact search
that the retrieval metrics use, so ties and ranking order are the same as in evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lit_metric.data.image_folder import transforms_for
from lit_metric.data.transforms import image_tensor, load_image
from lit_metric.distributed import rank, world_size
from lit_metric.functional._checks import check_finite, check_k, check_matrix, check_positive_int, describe
from lit_metric.functional.knn import (
    cosine_knn,
    empty_key,
    normalize,
    ranked_keys,
    ranking_keys,
    search_tiles,
    tile_side,
)
from lit_metric.functional.sharded import sharded_neighbours
from lit_metric.io import load_embeddings, load_manifest, load_shard
from lit_metric.module import MetricLearningModule

__all__ = [
    "EmbeddingIndex",
    "Neighbours",
    "ShardedEmbeddingIndex",
    "embed_batches",
    "embed_images",
    "nearest",
    "prepare_images",
]

Gallery = Tensor | Dataset | DataLoader | str | Path
Example = str | Path | Image.Image | np.ndarray | Tensor
Queries = Example | Sequence[Example]


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
        preprocessing: how :meth:`search` prepares query examples (``channels``, ``image_size``, ``mean``,
            ``std``, as :func:`prepare_images` takes them); ``None`` takes the model's
            :attr:`~lit_metric.MetricLearningModule.preprocessing`, which a checkpoint records.

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
        preprocessing: Mapping[str, Any] | None = None,
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
        self.preprocessing = dict(preprocessing) if preprocessing is not None else model.preprocessing

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
                :class:`~lit_metric.callbacks.prediction_writer.EmbeddingWriter` with this checkpoint, or the
                ``.json`` manifest of its sharded export, searched shard by shard (:class:`ShardedEmbeddingIndex`).
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
        if isinstance(gallery, (str, Path)) and Path(gallery).suffix == ".json":
            return ShardedEmbeddingIndex(model, gallery)
        if isinstance(gallery, (str, Path)):
            export = load_embeddings(gallery)
            return cls(model, export["embeddings"].to(map_location), export.get("labels"), export.get("paths"))
        if isinstance(gallery, Tensor):
            _check_images(gallery, "gallery")
            return cls(model, embed_images(model, gallery, batch_size), labels, paths, gallery.shape[1:])
        loader = gallery if isinstance(gallery, DataLoader) else DataLoader(gallery, batch_size=batch_size)
        return cls(model, **embed_batches(model, loader))

    def __len__(self) -> int:
        """The number of gallery items."""
        return len(self.embeddings)

    def search(self, images: Queries, k: int = 5, preprocess: bool | None = None) -> Neighbours:
        """The ``k`` nearest gallery items of each query image.

        Args:
            images: one query image or several, in any of the forms :func:`prepare_images` takes: file paths, PIL
                images, uint8 arrays or tensors, float arrays, or a list of them; or a float tensor already
                prepared as the model takes it, ``(Q, C, H, W)`` or one ``(C, H, W)`` image.
            k: neighbours of each query.
            preprocess: ``None`` prepares every form but float tensors, which are taken as prepared; ``True``
                prepares float tensors too, as pixels in ``[0, 1]``; ``False`` takes only prepared float tensors.

        Raises:
            ValueError: naming ``images`` when they are of none of these forms, when they must be prepared but
                the index has no :attr:`preprocessing`, or when their shape is not the gallery images' shape.
        """
        check_k(k, len(self))
        prepared = isinstance(images, Tensor) and images.is_floating_point() and not preprocess
        if preprocess is False and not prepared:
            raise ValueError(
                "`images` must be a floating-point tensor of prepared images with `preprocess=False`, got "
                f"{describe(images)}"
            )
        if prepared:
            images = images.unsqueeze(0) if images.ndim == 3 else images
        else:
            images = prepare_images(images, self.preprocessing)
        _check_images(images, "images", self.image_shape)
        return self.search_embeddings(embed_images(self.model, images), k)

    def search_files(self, paths: Sequence[str | Path], k: int = 5) -> Neighbours:
        """The ``k`` nearest gallery items of each image file in ``paths``, read and prepared as :meth:`search`
        prepares them."""
        return self.search(prepare_images(list(paths), self.preprocessing, "paths"), k)

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


class ShardedEmbeddingIndex(EmbeddingIndex):
    """An :class:`EmbeddingIndex` over a sharded export (an
    :class:`~lit_metric.callbacks.prediction_writer.EmbeddingWriter` with a ``.json`` output), which no process
    holds whole.

    In one process (``across_processes=False``) every search streams the shards from their files, one at a time:
    memory holds one shard's unit rows (``N_s x D x 4`` bytes) besides the queries and their neighbours, and each
    search reads the whole gallery, so search many queries per call. Across processes (``True``) each process of
    ``torch.distributed`` loads shards ``rank``, ``rank + P``, ... once, and every search is a collective call
    (:func:`~lit_metric.functional.sharded.sharded_neighbours`) that every process makes with its own queries, none
    included.

    The rankings are those of an index of the single-file export: ties rank by dataset index when the shards hold
    indexes (by position otherwise). ``indices`` are positions in the shards' concatenation in manifest order;
    ``labels`` and ``paths`` are read from the shards that hold the neighbours.

    Args:
        model: as :class:`EmbeddingIndex`.
        manifest: the ``.json`` manifest of the export (:func:`~lit_metric.io.load_manifest`).
        across_processes: search with every process of ``torch.distributed``, each holding some shards.
        chunk_size: tiles of similarities are at most ``chunk_size`` on a side.

    Raises:
        ValueError: naming the manifest when it does not match its files.
    """

    def __init__(
        self,
        model: MetricLearningModule,
        manifest: str | Path,
        across_processes: bool = False,
        chunk_size: int = 8192,
    ) -> None:
        check_positive_int("chunk_size", chunk_size)
        self.model = model.eval()
        self.manifest = load_manifest(manifest)
        self.across_processes, self.chunk_size, self.image_shape = across_processes, chunk_size, None
        self.preprocessing = model.preprocessing
        self.starts = [sum(self.manifest.rows[:shard]) for shard in range(len(self.manifest.rows))]
        if across_processes:
            none = torch.empty(0, dtype=torch.long)
            mine = [self._shard(shard) for shard in range(rank(), len(self.manifest.files), world_size())]
            mine = mine or [(torch.empty(0, self.manifest.dimension), none, none)]
            self.units, self.ties, self.positions = (torch.cat(parts) for parts in zip(*mine))

    def __len__(self) -> int:
        return sum(self.manifest.rows)

    def search_embeddings(self, queries: Tensor, k: int = 5) -> Neighbours:
        """The ``k`` nearest gallery items of each of the ``(Q, D)`` query embeddings; across processes, a
        collective call in which ``Q`` may be 0."""
        check_k(k, len(self))
        dimension = self.manifest.dimension
        if not isinstance(queries, Tensor) or queries.ndim != 2 or queries.shape[1] != dimension:
            raise ValueError(
                f"`queries` must have shape (Q, {dimension}) like the gallery, got {describe(queries, 'shape')}"
            )
        if self.across_processes:
            scores, _, positions = sharded_neighbours(
                queries, k, self.units, self.ties, gallery_values=self.positions[:, None], chunk_size=self.chunk_size
            )
            positions = positions[..., 0]
        else:
            check_matrix("queries", queries, f"(Q, {dimension})")
            scores, positions = self._stream(normalize(queries, "queries"), k)
        labels, paths = self._metadata(positions)
        return Neighbours(scores, positions, labels, paths)

    def _stream(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """``(scores, positions)`` of the ``k`` best of the unit ``queries`` over the shards, read one by one."""
        # Products of the shape of a search of the whole gallery, so that the scores are those of a single file.
        tiles = tile_side(len(queries), self.chunk_size), tile_side(len(self), self.chunk_size)
        best = torch.full((len(queries), k), empty_key(), dtype=torch.long)
        positions = torch.full((len(queries), k), -1, dtype=torch.long)
        for shard in range(len(self.manifest.files)):
            units, ties, shard_positions = self._shard(shard)
            scores, found = search_tiles(queries, min(k, len(units)), units, None, None, *tiles)
            keys = torch.where(found >= 0, ranking_keys(scores, ties[found]), empty_key())
            candidates = torch.cat([best, keys], dim=1)
            top = candidates.topk(k, dim=1).indices
            positions = torch.cat([positions, shard_positions[found]], dim=1).gather(1, top)
            best = candidates.gather(1, top)
        return ranked_keys(best)[0], positions

    def _shard(self, shard: int) -> tuple[Tensor, Tensor, Tensor]:
        """The unit rows of a shard in tie order, their tie order (dataset indexes, or positions) and positions."""
        export = load_shard(self.manifest, shard)
        check_finite("embeddings", export["embeddings"])
        positions = torch.arange(self.starts[shard], self.starts[shard] + len(export["embeddings"]))
        ties = export.get("indexes", positions)
        # A shard's search breaks ties by position in the shard, which must then be tie order.
        order = ties.argsort()
        return normalize(export["embeddings"][order]), ties[order], positions[order]

    def _metadata(self, positions: Tensor) -> tuple[Tensor | None, list[list[str]] | None]:
        """The labels and paths of the neighbours at ``(Q, k)`` positions, read from the shards that hold them."""
        shard_of = torch.searchsorted(torch.tensor(self.starts), positions, right=True) - 1
        labels, paths = torch.full_like(positions, -1), [["" for _ in row] for row in positions.tolist()]
        has_labels = has_paths = True
        for shard in shard_of.unique().tolist():
            at = (shard_of == shard).nonzero().unbind(1)
            export = load_shard(self.manifest, shard)
            rows = positions[at] - self.starts[shard]
            has_labels = has_labels and "labels" in export
            has_paths = has_paths and "paths" in export
            if has_labels:
                labels[at] = export["labels"][rows].long()
            if has_paths:
                for query, slot, row in zip(*(part.tolist() for part in at), rows.tolist()):
                    paths[query][slot] = export["paths"][row]
        return labels if has_labels else None, paths if has_paths else None


def nearest(
    checkpoint_path: str | Path,
    gallery: Gallery,
    images: Queries,
    k: int = 5,
    preprocess: bool | None = None,
    **kwargs: Any,
) -> Neighbours:
    """The ``k`` nearest ``gallery`` items of each query image, in one call; see :meth:`EmbeddingIndex.search` for
    ``images`` and ``preprocess``, and :meth:`EmbeddingIndex.from_checkpoint` for ``gallery`` and ``kwargs``,
    ``weights_only=True`` among them."""
    return EmbeddingIndex.from_checkpoint(checkpoint_path, gallery, **kwargs).search(images, k, preprocess)


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


def prepare_images(images: Queries, preprocessing: Mapping[str, Any] | None, name: str = "images") -> Tensor:
    """Query images as the ``(Q, C, H, W)`` float32 batch that the model takes, prepared as the image data modules
    prepare evaluation images (:class:`~lit_metric.data.ImageFileDataset`): decoded to 8 bits and turned upright
    (:func:`~lit_metric.data.transforms.image_tensor`), converted to ``channels``, resized to ``image_size``,
    scaled to ``[0, 1]`` and normalised with ``mean`` and ``std``.

    Args:
        images: one image or a batch of them, each

            - an image file path or a PIL image;
            - a numpy array ``(H, W, C)`` or ``(H, W)``, as PIL, imageio and matplotlib give them, or
              ``(Q, H, W, C)``;
            - a tensor ``(C, H, W)`` or ``(H, W)``, as torchvision gives them, or ``(Q, C, H, W)``;
            - or a list of single images of these forms.

            Arrays and tensors hold uint8 pixels in ``[0, 255]`` or floating-point pixels in ``[0, 1]``, which are
            rounded to 8 bits as an image file stores them; ``C`` is 1, 3 or 4 (RGBA).
        preprocessing: ``channels``, ``image_size`` (``None`` keeps each image's size), ``mean`` and ``std``
            (``None``: no normalisation), as :attr:`~lit_metric.MetricLearningModule.preprocessing` holds them.
        name: the argument that errors name.

    Raises:
        ValueError: naming ``name`` (and the image's position in a batch) when ``preprocessing`` is ``None``, when
            an image is of none of these forms or its pixels are out of range, when a file cannot be read, or when
            images differ in size and ``image_size`` is ``None``.
    """
    if preprocessing is None:
        raise ValueError(
            f"`{name}`: the model records no preprocessing (channels, image_size, mean, std) to prepare them with; "
            "prepare them as in training and pass a float tensor (Q, C, H, W)"
        )
    channels, size = preprocessing["channels"], preprocessing["image_size"]
    size = tuple(size) if size is not None else None
    examples, batched = _examples(images, name)
    pixels = []
    for i, example in enumerate(examples):
        where = f"`{name}[{i}]`" if batched else f"`{name}`"
        if isinstance(example, (str, Path)):
            pixels.append(load_image(example, channels, size))
            continue
        image = example if isinstance(example, Image.Image) else _as_pil(example, where)
        try:
            pixels.append(image_tensor(image, channels, size))
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from error
    shapes = sorted({tuple(p.shape) for p in pixels})
    if len(shapes) > 1:
        raise ValueError(f"`{name}` must share one size, as the preprocessing sets no `image_size`; got {shapes}")
    batch = torch.stack(pixels).float() / 255
    _, normalize = transforms_for(None, preprocessing["mean"], preprocessing["std"])
    for transform in normalize:
        batch = transform(batch)
    return batch


def _examples(images: Queries, name: str) -> tuple[list[Example], bool]:
    """The single images of ``images``, and whether they came as a batch."""
    if isinstance(images, (str, Path, Image.Image)):
        return [images], False
    if isinstance(images, (np.ndarray, Tensor)) and images.ndim in (2, 3, 4):
        if images.ndim == 4 and len(images) == 0:
            raise ValueError(f"`{name}` must hold at least one image, got shape {tuple(images.shape)}")
        return (list(images), True) if images.ndim == 4 else ([images], False)
    single = (str, Path, Image.Image, np.ndarray, Tensor)
    if isinstance(images, (list, tuple)) and images and all(isinstance(image, single) for image in images):
        return list(images), True
    raise ValueError(
        f"`{name}` must be an image file path, a PIL image, an array or tensor of pixels with 2 to 4 dimensions, "
        f"or a non-empty list of single images; got {describe(images, 'shape')}"
    )


def _as_pil(pixels: np.ndarray | Tensor, where: str) -> Image.Image:
    """One image's pixels, ``(H, W, C)`` for arrays and ``(C, H, W)`` for tensors, as an 8-bit PIL image."""
    layout = "(H, W, C) or (H, W)" if isinstance(pixels, np.ndarray) else "(C, H, W) or (H, W)"
    shape = tuple(pixels.shape)
    if isinstance(pixels, Tensor):
        pixels = pixels.detach().cpu()
        pixels = (pixels.float() if pixels.is_floating_point() else pixels).numpy()
        pixels = pixels.transpose(1, 2, 0) if pixels.ndim == 3 else pixels
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] not in (1, 3, 4)):
        raise ValueError(f"{where} must be one image of shape {layout}, with C 1, 3 or 4; got shape {shape}")
    if np.issubdtype(pixels.dtype, np.floating):
        if not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 1:
            raise ValueError(
                f"{where}: floating-point pixels must be finite and in [0, 1], got [{pixels.min()}, {pixels.max()}]"
            )
        pixels = np.rint(pixels * 255).astype(np.uint8)  # 8 bits, as an image file stores them
    elif pixels.dtype != np.uint8:
        raise ValueError(
            f"{where} must hold uint8 pixels (0-255) or floating-point ones (0-1), got dtype {pixels.dtype}"
        )
    return Image.fromarray(pixels[..., 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels)


def _check_images(images: Any, name: str, image_shape: tuple[int, ...] | None = None) -> None:
    expected = "(N, C, H, W)" if image_shape is None else f"(N, {', '.join(map(str, image_shape))})"
    if (
        not isinstance(images, Tensor)
        or images.ndim != 4
        or len(images) == 0
        or (image_shape is not None and tuple(images.shape[1:]) != image_shape)
    ):
        raise ValueError(f"`{name}` must be a non-empty tensor of shape {expected}, got {describe(images, 'shape')}")
