"""The embedding file format: what ``lit-metric predict`` writes (through
:class:`~lit_metric.callbacks.prediction_writer.EmbeddingWriter`) and what search galleries are read from.

A file holds ``embeddings`` ``(N, D)`` float32 and, when known, ``labels`` ``(N,)``, ``indexes`` ``(N,)`` (dataset
positions) and ``paths`` (``N`` strings). ``.pt`` files hold a dict of tensors (``paths`` a list of str) for
:func:`torch.load`; ``.npz`` files hold NumPy arrays (``paths`` a str array, no pickled objects) for
:func:`numpy.load`. :func:`load_embeddings` reads both the same way.

A sharded export is one such file per process plus a JSON *manifest* beside them, which lists the shard files
(relative to its folder) with their numbers of rows, and the embedding width::

    {"format": "lit_metric embedding shards", "version": 1, "dimension": 64,
     "shards": [{"file": "gallery-00000-of-00002.pt", "rows": 270}, {"file": "gallery-00001-of-00002.pt", "rows": 270}]}

Its items are the rows of the shards in manifest order; each item is in one shard only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "ShardManifest",
    "check_embedding_path",
    "load_embeddings",
    "load_manifest",
    "load_shard",
    "save_embeddings",
    "save_manifest",
    "shard_path",
]

_SUFFIXES = (".pt", ".npz")
_MANIFEST_FORMAT, _MANIFEST_VERSION = "lit_metric embedding shards", 1


def check_embedding_path(name: str, path: str | Path) -> Path:
    """``path`` as a :class:`~pathlib.Path`; a ValueError naming ``name`` unless it ends in ``.pt`` or ``.npz``."""
    path = Path(path)
    if path.suffix not in _SUFFIXES:
        raise ValueError(f"`{name}` must end in .pt or .npz, got {str(path)!r}")
    return path


def save_embeddings(export: dict[str, Any], path: str | Path) -> None:
    """Write ``export`` (``embeddings`` ``(N, D)`` and optionally ``labels`` ``(N,)``, ``indexes`` ``(N,)`` tensors
    and ``paths``, ``N`` str) to a ``.pt`` or ``.npz`` file, making its parent folders."""
    path = check_embedding_path("path", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".pt":
        torch.save(export, path)
    else:
        arrays = {name: np.asarray(value) if name == "paths" else value.numpy() for name, value in export.items()}
        np.savez(path, **arrays)


def load_embeddings(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """Read a file of :func:`save_embeddings`: ``embeddings`` ``(N, D)`` and, if written, ``labels`` ``(N,)`` and
    ``indexes`` ``(N,)`` as tensors and ``paths`` as a list of ``N`` str, whether the file is ``.pt`` or ``.npz``.
    With ``mmap`` the tensors of a ``.pt`` file are mapped from the file, read when used (``.npz`` files are read
    whole)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"`path` {str(path)!r} is not a file")
    if check_embedding_path("path", path).suffix == ".pt":
        return torch.load(path, weights_only=True, mmap=mmap)
    with np.load(path) as arrays:
        return {name: arrays[name].tolist() if name == "paths" else torch.from_numpy(arrays[name]) for name in arrays.files}


@dataclass(frozen=True)
class ShardManifest:
    """A sharded export: the ``files`` of its shards, their numbers of ``rows`` and the embedding ``dimension``."""

    path: Path
    files: tuple[Path, ...]
    rows: tuple[int, ...]
    dimension: int


def shard_path(manifest_path: str | Path, rank: int, world_size: int, suffix: str = ".pt") -> Path:
    """The file of process ``rank``'s shard of a sharded export: ``<stem>-<rank>-of-<world_size><suffix>`` beside
    the manifest."""
    path = Path(manifest_path)
    return path.with_name(f"{path.stem}-{rank:05d}-of-{world_size:05d}{suffix}")


def save_manifest(path: str | Path, files: list[Path], rows: list[int], dimension: int) -> None:
    """Write the manifest of the shard ``files`` (beside it) with their numbers of ``rows`` and the embedding
    ``dimension`` to the ``.json`` file ``path``."""
    path = _check_manifest_path(path)
    shards = [{"file": Path(file).name, "rows": count} for file, count in zip(files, rows)]
    document = {"format": _MANIFEST_FORMAT, "version": _MANIFEST_VERSION, "dimension": dimension, "shards": shards}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1) + "\n")


def load_manifest(path: str | Path) -> ShardManifest:
    """Read a manifest of :func:`save_manifest`, checking that it is one and that its shard files exist.

    Raises:
        FileNotFoundError: naming the manifest or a shard file that is missing.
        ValueError: naming the manifest when it is not one of this format.
    """
    path = _check_manifest_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"`manifest` {str(path)!r} is not a file")
    try:
        document = json.loads(path.read_text())
        if document["format"] != _MANIFEST_FORMAT or document["version"] != _MANIFEST_VERSION:
            raise ValueError
        files = tuple(path.parent / check_embedding_path("file", shard["file"]) for shard in document["shards"])
        rows, dimension = tuple(int(shard["rows"]) for shard in document["shards"]), int(document["dimension"])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"`manifest` {str(path)!r} must be a manifest of embedding shards ({_MANIFEST_FORMAT!r}, version "
            f"{_MANIFEST_VERSION}) with their files and rows"
        ) from error
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"`manifest` {str(path)!r} lists the shard {str(file)!r}, which is not a file")
    return ShardManifest(path, files, rows, dimension)


def load_shard(manifest: ShardManifest, shard: int) -> dict[str, Any]:
    """Shard number ``shard`` of a sharded export, as :func:`load_embeddings` reads it (a ``.pt`` shard mapped from
    its file), checked against the manifest.

    Raises:
        ValueError: naming the manifest and the file when the file does not hold the rows and width it lists.
    """
    export = load_embeddings(manifest.files[shard], mmap=True)
    expected, found = (manifest.rows[shard], manifest.dimension), tuple(export["embeddings"].shape)
    if found != expected:
        raise ValueError(
            f"`manifest` {str(manifest.path)!r} does not match its shard {str(manifest.files[shard])!r}: it lists "
            f"{expected[0]} rows of dimension {expected[1]}, the file holds embeddings of shape {found}"
        )
    return export


def _check_manifest_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix != ".json":
        raise ValueError(f"`manifest` must end in .json, got {str(path)!r}")
    return path
