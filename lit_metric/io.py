"""The embedding file format: what ``lit-metric predict`` writes (through
:class:`~lit_metric.callbacks.prediction_writer.EmbeddingWriter`) and what search galleries are read from.

A file holds ``embeddings`` ``(N, D)`` float32 and, when known, ``labels`` ``(N,)``, ``indexes`` ``(N,)`` (dataset
positions) and ``paths`` (``N`` strings). ``.pt`` files hold a dict of tensors (``paths`` a list of str) for
:func:`torch.load`; ``.npz`` files hold NumPy arrays (``paths`` a str array, no pickled objects) for
:func:`numpy.load`. :func:`load_embeddings` reads both the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["check_embedding_path", "load_embeddings", "save_embeddings"]

_SUFFIXES = (".pt", ".npz")


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


def load_embeddings(path: str | Path) -> dict[str, Any]:
    """Read a file of :func:`save_embeddings`: ``embeddings`` ``(N, D)`` and, if written, ``labels`` ``(N,)`` and
    ``indexes`` ``(N,)`` as tensors and ``paths`` as a list of ``N`` str, whether the file is ``.pt`` or ``.npz``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"`path` {str(path)!r} is not a file")
    if check_embedding_path("path", path).suffix == ".pt":
        return torch.load(path, weights_only=True)
    with np.load(path) as arrays:
        return {name: arrays[name].tolist() if name == "paths" else torch.from_numpy(arrays[name]) for name in arrays.files}
