"""Row blocks of a (B, R) matrix, shared by the functions that walk pair matrices block by block."""

from __future__ import annotations

from torch import Tensor


def row_blocks(matrix: Tensor, elements: int = 1 << 18) -> list[slice]:
    """Slices of about ``elements`` entries' worth of rows of a ``(B, R)`` ``matrix``.

    Element-wise work on pair matrices goes block by block so that its float temporaries stay cache-sized: a fresh
    ``(B, R)`` float tensor costs more to allocate (page faults) and stream through memory than to compute.
    """
    rows, columns = matrix.shape
    step = max(elements // max(columns, 1), 1)
    return [slice(start, start + step) for start in range(0, rows, step)]
