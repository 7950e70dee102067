"""Cross-batch memory (XBM, Wang et al., CVPR 2020): the detached embeddings, labels and dataset indexes of the last
``size`` training samples, which the pair miner mines the batch's anchors against."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lit_metric.functional._checks import check_floating, check_labels, check_positive_int

__all__ = ["CrossBatchMemory"]


class CrossBatchMemory:
    """A first-in first-out queue of the last ``size`` embeddings, with their labels and dataset indexes.

    Each :meth:`append` replaces the three tensors by new ones, oldest row first, instead of writing into a ring
    buffer: tensors read before an append stay valid, and row ``i`` of the embeddings always lines up with row ``i``
    of the labels and indexes, also after wrap-around. Embeddings are stored detached in float32 at least, labels and
    indexes in int64, so that batches of other integer widths (or a resumed run's) join the same memory.

    Args:
        size: ``M``, the most rows kept, ``>= 1``.

    Example:
        >>> memory = CrossBatchMemory(size=3)
        >>> memory.append(torch.ones(2, 4), torch.tensor([0, 1]), torch.tensor([10, 11]))
        >>> memory.append(torch.zeros(2, 4), torch.tensor([2, 3]), torch.tensor([12, 13]))
        >>> memory.labels, memory.indexes
        (tensor([1, 2, 3]), tensor([11, 12, 13]))
    """

    def __init__(self, size: int) -> None:
        check_positive_int("memory_size", size)
        self.size = size
        self.clear()

    def __len__(self) -> int:
        return len(self.labels)

    def clear(self) -> None:
        """Empty the memory; the next :meth:`append` sets the embedding width."""
        self.embeddings = torch.empty(0, 0)
        self.labels = torch.empty(0, dtype=torch.long)
        self.indexes = torch.empty(0, dtype=torch.long)

    def append(self, embeddings: Tensor, labels: Tensor, indexes: Tensor) -> None:
        """Add ``(N, D)`` ``embeddings`` with their ``(N,)`` ``labels`` and dataset ``indexes``, dropping the oldest
        rows beyond :attr:`size`.

        Raises a ValueError when ``D`` is not the width of the embeddings already held, e.g. after resuming with a
        network of another embedding width: mixing them would not be a similarity, and emptying the memory silently
        would hide the change.
        """
        check_floating("embeddings", embeddings)
        if embeddings.ndim != 2:
            raise ValueError(f"`embeddings` must have shape (N, D), got shape {tuple(embeddings.shape)}")
        for name, values in (("labels", labels), ("indexes", indexes)):
            check_labels(name, values, f"({len(embeddings)},), one per embedding")
            if len(values) != len(embeddings):
                raise ValueError(f"`{name}` must have shape ({len(embeddings)},), one per embedding, got {len(values)}")
        if len(self) and embeddings.shape[1] != self.embeddings.shape[1]:
            raise ValueError(
                f"the memory holds embeddings of width {self.embeddings.shape[1]}, got embeddings of width "
                f"{embeddings.shape[1]}: a network of another embedding width cannot reuse the memory (e.g. one "
                "resumed from a checkpoint); train it from a checkpoint without the memory or without `memory_size`"
            )
        dtype = torch.promote_types(embeddings.dtype, torch.float32)
        new = (embeddings.detach().to(dtype), labels.long(), indexes.long())
        held = (self.embeddings, self.labels, self.indexes) if len(self) else tuple(rows[:0] for rows in new)
        # Only the rows that stay are copied, so the memory never holds more than `size` rows.
        start = max(len(self) + len(embeddings) - self.size, 0)
        self.embeddings, self.labels, self.indexes = (
            torch.cat([old[start:], rows[-self.size :]]) for old, rows in zip(held, new)
        )

    def to(self, device: torch.device | str) -> CrossBatchMemory:
        """Move the rows to ``device``, e.g. a memory that a checkpoint restored on the CPU to the network's GPU."""
        self.embeddings, self.labels, self.indexes = (
            rows.to(device) for rows in (self.embeddings, self.labels, self.indexes)
        )
        return self

    def state_dict(self) -> dict[str, Any]:
        return {"size": self.size, "embeddings": self.embeddings, "labels": self.labels, "indexes": self.indexes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; one saved with another :attr:`size` is refused rather than cut or padded."""
        if state["size"] != self.size:
            raise ValueError(
                f"the checkpoint's memory holds up to {state['size']} rows, but `memory_size` is {self.size}; resume "
                "with the checkpoint's `memory_size`"
            )
        self.embeddings, self.labels, self.indexes = state["embeddings"], state["labels"], state["indexes"]
