"""Checkpoint files that survive kills: atomic writes in the checkpoint's own folder, and a checkpoint on exception.

:class:`AtomicCheckpointIO` writes a checkpoint to a temporary file beside its target, ``.NAME.tmp-PID``, syncs it to
disk and renames it into place with :func:`os.replace`, which is atomic on a local or network file system. A kill at
any moment leaves either the previous file or the new one, never a partial file; the rename never crosses file
systems, as a temporary file in ``$TMPDIR`` would. A save that fails removes its temporary file; one that was killed
outright (``SIGKILL``) leaves it, and the next save into that folder, or the next resume from it, removes it.

:class:`PreemptionCheckpoint` is Lightning's :class:`~lightning.pytorch.callbacks.OnExceptionCheckpoint` saving beside
``last.ckpt``: when a fit stops on an exception, ``SIGTERM`` included, the full training state goes to
``on_exception.ckpt`` in the folder of the trainer's :class:`~lightning.pytorch.callbacks.ModelCheckpoint`, from which
``fit --ckpt_path`` resumes. The ``lit-metric`` command adds both to every fit.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import lightning as L
import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import Checkpoint

__all__ = ["AtomicCheckpointIO", "PreemptionCheckpoint", "remove_partial_files"]

# What a save killed before its rename leaves: ``.NAME.tmp-PID`` (hidden, so that no ``*.ckpt`` pattern matches it).
_PARTIAL = re.compile(r"^\..+\.tmp-\d+$")


def _partial_path(path: Path) -> Path:
    """The temporary file that this process writes ``path`` to before renaming it into place."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def remove_partial_files(folder: str | Path) -> list[Path]:
    """Remove the temporary files that killed saves left in ``folder`` (not this process's own); returns them.

    One run writes into a checkpoint folder at a time: a temporary file of another process is a leftover.
    """
    own = f".tmp-{os.getpid()}"
    removed = []
    for path in Path(folder).glob(".*.tmp-*"):
        if _PARTIAL.match(path.name) and not path.name.endswith(own):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


class AtomicCheckpointIO(TorchCheckpointIO):
    """:class:`~lightning.fabric.plugins.TorchCheckpointIO` whose local saves are atomic on any file system.

    A local checkpoint is written to ``.NAME.tmp-PID`` in the target's folder, flushed and synced to disk, then renamed
    to ``NAME`` with :func:`os.replace`; a failed save removes the temporary file, and every save and load removes the
    ones that killed saves left in the folder. Remote paths (``s3://`` and other fsspec URLs) are saved as
    :class:`~lightning.fabric.plugins.TorchCheckpointIO` saves them. Give it to a trainer as a plugin:
    ``Trainer(plugins=[AtomicCheckpointIO()])``.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_partial_files(path.parent)
        partial = _partial_path(path)
        try:
            with open(partial, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        _sync_folder(path.parent)

    def load_checkpoint(self, path: str | Path, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if isinstance(get_filesystem(path), LocalFileSystem) and Path(path).parent.is_dir():
            remove_partial_files(Path(path).parent)
        return super().load_checkpoint(path, *args, **kwargs)


def _sync_folder(folder: Path) -> None:
    """Make the rename durable: a crash of the machine must not bring the old directory entry back."""
    if os.name != "posix":
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class PreemptionCheckpoint(Checkpoint):
    """Saves the full training checkpoint when a fit stops on an exception, beside the trainer's ``last.ckpt``.

    This is Lightning's :class:`~lightning.pytorch.callbacks.OnExceptionCheckpoint` (its ``on_exception`` and
    ``teardown``), except for two things. The folder defaults to that of the trainer's
    :class:`~lightning.pytorch.callbacks.ModelCheckpoint`, which is known only once the logger has made its run folder.
    And it is not an ``OnExceptionCheckpoint``: with one among the callbacks, Lightning makes every ``fit`` without
    ``ckpt_path`` resume from the newest ``last`` checkpoint it finds, with a warning, so that a second fit in a shared
    folder would silently continue, or skip, the first. Here a fit resumes only from the ``ckpt_path`` it is given.

    On ``SIGTERM`` Lightning stops the fit at the next batch with a ``SIGTERMException``, so the checkpoint holds a
    whole number of steps; a ``SIGTERM`` during validation stops it once the validation is over, which a resumed fit
    would otherwise skip. After a fit that ends normally the file is removed, as the run's own checkpoints are newer.

    Args:
        dirpath: the folder of the checkpoint; ``None`` takes the folder of the trainer's ``ModelCheckpoint`` (the
            one of ``last.ckpt``), chosen in its set-up. An exception before then, or without a ``ModelCheckpoint``,
            saves nothing.
        filename: the file's name without the ``.ckpt`` extension.
    """

    FILE_EXTENSION = ".ckpt"

    def __init__(self, dirpath: str | Path | None = None, filename: str = "on_exception") -> None:
        if not filename:
            raise ValueError("`filename` must not be empty")
        self.dirpath = dirpath
        self.filename = filename
        self._sigterm_in_validation = False

    @property
    def ckpt_path(self) -> str | None:
        """The checkpoint's path, or ``None`` while its folder is unknown."""
        return None if self.dirpath is None else os.path.join(self.dirpath, self.filename + self.FILE_EXTENSION)

    def on_validation_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        # Lightning stops a validation that SIGTERM interrupts, and a fit resumed from that checkpoint goes on
        # without it, its epoch's metrics never computed. The stop waits for the end of the validation instead.
        connector = trainer._signal_connector
        if connector.received_sigterm:
            connector.received_sigterm = False
            self._sigterm_in_validation = True

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._sigterm_in_validation:
            trainer._signal_connector.received_sigterm = True
            self._sigterm_in_validation = False

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        path = self._path(trainer)
        if path is not None:
            trainer.save_checkpoint(path)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        path = self._path(trainer)
        if path is not None:
            trainer.strategy.remove_checkpoint(path)

    def _path(self, trainer: L.Trainer) -> str | None:
        if self.dirpath is not None:
            return self.ckpt_path
        # Read when needed: ModelCheckpoint chooses its folder in its own setup hook.
        folder = getattr(trainer.checkpoint_callback, "dirpath", None)
        return None if folder is None else os.path.join(folder, self.filename + self.FILE_EXTENSION)
