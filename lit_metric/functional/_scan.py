"""A compiled scan of a similarity tile for the items that reach their query's threshold, in both directions at once.

Once its matrix products are done, the exact search of :mod:`lit_metric.functional.knn` is bound by memory traffic:
in torch alone it reads every tile three times, for the group maxima of each direction and for the groups that pass.
The C function here reads a tile once and emits the ``(query, item, score)`` triples of its rows and, in
leave-one-out, of its columns. It is compiled with the system's C compiler at first use, for the CPU at hand, in
about 0.2 s; where that fails, :func:`tile_scan` returns ``None`` and the search keeps its torch path, which finds the
same neighbours.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["TileScan", "tile_scan"]

_ROWS_PER_THREAD = 256

_SOURCE = r"""
#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

typedef float floats __attribute__((vector_size(64)));
typedef int32_t masks __attribute__((vector_size(64)));

static inline floats load(const float *p) { floats v; memcpy(&v, p, sizeof v); return v; }

static inline int any(masks m) {
#if defined(__AVX512F__)
    return _mm512_test_epi32_mask((__m512i)m, (__m512i)m) != 0;
#else
    int64_t w[sizeof m / 8];
    memcpy(w, &m, sizeof m);
    int64_t all = 0;
    for (unsigned t = 0; t < sizeof m / 8; t++) all |= w[t];
    return all != 0;
#endif
}

/* Rows [begin, end) of a row-major tile of `width` columns. Emits (i, j, s) where s >= row_floor[i] and, when
   column_floor is not NULL, (j, i, s) where s >= column_floor[j]. Stops before a row that might not fit in
   `capacity` and returns it; `end` when all rows were scanned. */
int64_t scan(const float *tile, int64_t width, int64_t begin, int64_t end, const float *row_floor,
             const float *column_floor, int64_t capacity, int32_t *row_query, int32_t *row_item, float *row_score,
             int64_t *row_count, int32_t *column_query, int32_t *column_item, float *column_score,
             int64_t *column_count) {
    int64_t rows = *row_count, columns = *column_count;
    const int lanes = sizeof(floats) / sizeof(float);
    for (int64_t i = begin; i < end; i++) {
        if (rows + width > capacity || (column_floor && columns + width > capacity)) {
            *row_count = rows;
            *column_count = columns;
            return i;
        }
        const float *s = tile + i * width;
        const float floor = row_floor[i];
        const floats floors = (floats){0} + floor;
        for (int64_t j = 0; j < width; j += lanes) {
            const int64_t stop = j + lanes <= width ? j + lanes : width;
            if (stop - j == lanes) {
                const floats v = load(s + j);
                masks hit = v >= floors;
                if (column_floor) hit |= v >= load(column_floor + j);
                if (!any(hit)) continue;
            }
            for (int64_t t = j; t < stop; t++) {
                if (s[t] >= floor) {
                    row_query[rows] = (int32_t)i;
                    row_item[rows] = (int32_t)t;
                    row_score[rows++] = s[t];
                }
                if (column_floor && s[t] >= column_floor[t]) {
                    column_query[columns] = (int32_t)t;
                    column_item[columns] = (int32_t)i;
                    column_score[columns++] = s[t];
                }
            }
        }
    }
    *row_count = rows;
    *column_count = columns;
    return end;
}
"""


@functools.cache
def tile_scan() -> Callable[..., int] | None:
    """The compiled ``scan`` function, or ``None`` where no C compiler builds it (the search then uses torch alone,
    about a quarter slower, and a warning says so once; ``LIT_METRIC_NO_SCAN_KERNEL=1`` chooses that silently).

    Built once per process for this CPU (``-march=native``, or without it for compilers that refuse the flag), so
    that a library built elsewhere never runs here.
    """
    if os.environ.get("LIT_METRIC_NO_SCAN_KERNEL"):
        return None
    compiler = shlex.split(os.environ.get("CC") or "cc")
    if not compiler or shutil.which(compiler[0]) is None:
        return _torch_alone(f"no C compiler {compiler[0] if compiler else ''!r} was found (set CC to one)")
    try:
        with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as folder:
            source, library = Path(folder) / "scan.c", Path(folder) / "scan.so"
            source.write_text(_SOURCE)
            for flags in (["-O3", "-march=native"], ["-O3"]):
                command = [*compiler, *flags, "-shared", "-fPIC", str(source), "-o", str(library)]
                built = subprocess.run(command, capture_output=True, text=True, timeout=60)
                if built.returncode == 0:
                    break
            else:
                return _torch_alone(f"{' '.join(compiler)} failed: {built.stderr.strip()[-300:]}")
            function = ctypes.CDLL(str(library)).scan
    except (OSError, subprocess.SubprocessError) as error:
        return _torch_alone(f"building or loading it failed: {error}")
    function.restype = ctypes.c_int64
    pointer, integer = ctypes.c_void_p, ctypes.c_int64
    function.argtypes = [pointer, integer, integer, integer, pointer, pointer, integer, *[pointer] * 8]
    return function


def _torch_alone(reason: str) -> None:
    warnings.warn(
        f"lit_metric's compiled tile scan is not available, so the exact search runs in torch alone, about a quarter "
        f"slower, with the same results: {reason}. LIT_METRIC_NO_SCAN_KERNEL=1 chooses torch alone without this warning.",
        RuntimeWarning,
        stacklevel=3,
    )
    return None


class TileScan:
    """Scans contiguous float32 CPU tiles with :func:`tile_scan`, ``threads`` ranges of rows at once, into candidate
    buffers kept for every tile of a search.

    Args:
        function: the compiled ``scan``.
        capacity: candidates of one direction that one range of rows may hold before the caller merges them.
        threads: ranges of rows scanned in parallel; the function runs without the GIL. Threads are started for
            each scan rather than kept in a pool, which a fork (DDP's ``ddp_fork``, worker processes) would leave
            without its threads.
    """

    def __init__(self, function: Callable[..., int], capacity: int, threads: int) -> None:
        self.function, self.capacity = function, capacity
        self.ranges = [_Candidates(capacity) for _ in range(threads)]

    def __call__(
        self, tile: Tensor, row_floor: Tensor, column_floor: Tensor | None
    ) -> Iterator[tuple[list[Tensor], list[Tensor] | None]]:
        """Candidates of a ``(B_q, B_g)`` tile, in batches that fit the buffers: ``[query, item, score]`` of its rows,
        queries ascending, and of its columns (``None`` without ``column_floor``), as ``(K,)`` int64 positions in
        the tile and float32 scores. The caller merges each batch before asking for the next.

        Args:
            tile: contiguous float32 similarities.
            row_floor: ``(B_q,)`` contiguous float32, the least score that each row's query takes.
            column_floor: ``(B_g,)`` contiguous float32, the same for the columns, or ``None`` to scan rows only.
        """
        # The C function reads raw memory: anything but contiguous float32 CPU tensors would be read wrong.
        for name, x in (("tile", tile), ("row_floor", row_floor), ("column_floor", column_floor)):
            if x is not None and (x.dtype != torch.float32 or x.device.type != "cpu" or not x.is_contiguous()):
                raise ValueError(f"`{name}` must be a contiguous float32 CPU tensor, got {x.dtype} on {x.device}")
        height, width = tile.shape
        if row_floor.shape != (height,) or (column_floor is not None and column_floor.shape != (width,)):
            raise ValueError(f"the floors must have shapes ({height},) and ({width},) to match the tile")
        if width > self.capacity:
            # The function takes whole rows: it could never take a row wider than its buffers.
            raise ValueError(f"tiles may be at most `capacity` = {self.capacity} wide, got width {width}")
        if height == 0:
            return
        # A thread per a few hundred rows at least: starting one costs more than scanning fewer.
        ranges = self.ranges[: max(1, min(len(self.ranges), height // _ROWS_PER_THREAD))]
        share = -(-height // len(ranges))
        pending = [(start, min(start + share, height)) for start in range(0, height, share)]
        while pending:
            jobs = list(zip(ranges, pending))
            ends: list[int | None] = [None] * len(jobs)
            # Torch calls stay in this thread: a helper thread has no inference mode, e.g. Lightning's validation's,
            # and may not touch tensors made in it.
            arguments = []
            for candidates, (start, stop) in jobs:
                candidates.counts.zero_()
                arguments.append((
                    tile.data_ptr(), width, start, stop, row_floor.data_ptr(),
                    None if column_floor is None else column_floor.data_ptr(), self.capacity,
                    *candidates.pointers(),
                ))

            def scan(slot: int) -> None:
                ends[slot] = self.function(*arguments[slot])

            helpers = [threading.Thread(target=scan, args=(slot,)) for slot in range(1, len(jobs))]
            for helper in helpers:
                helper.start()
            try:
                scan(0)
            finally:
                _join(helpers)
            if None in ends:
                raise RuntimeError("the compiled tile scan failed in a helper thread; see the exception printed above")
            rows = _joined([candidates.found(0) for candidates, _ in jobs])
            columns = None if column_floor is None else _joined([candidates.found(1) for candidates, _ in jobs])
            yield rows, columns
            pending = [(end, stop) for end, (_, (_, stop)) in zip(ends, jobs) if end < stop]


class _Candidates:
    """Buffers of one range of rows: query, item and score of each direction, and the two counts."""

    def __init__(self, capacity: int) -> None:
        self.directions = [
            [torch.empty(capacity, dtype=torch.int32), torch.empty(capacity, dtype=torch.int32), torch.empty(capacity)]
            for _ in range(2)
        ]
        self.counts = torch.zeros(2, dtype=torch.int64)

    def pointers(self) -> list[int]:
        """Addresses in the order of ``scan``'s arguments: query, item, score and count of rows, then of columns."""
        counts = [self.counts.data_ptr() + direction * self.counts.element_size() for direction in range(2)]
        return [
            address
            for (query, item, score), count in zip(self.directions, counts)
            for address in (query.data_ptr(), item.data_ptr(), score.data_ptr(), count)
        ]

    def found(self, direction: int) -> list[Tensor]:
        count = int(self.counts[direction])
        query, item, score = self.directions[direction]
        return [query[:count].long(), item[:count].long(), score[:count].clone()]


def _join(threads: list[threading.Thread]) -> None:
    """Wait for every thread even through a KeyboardInterrupt, then raise it: a thread still in the C function
    writes into buffers that must not be freed under it."""
    interrupted: BaseException | None = None
    for thread in threads:
        while thread.is_alive():
            try:
                thread.join()
            except BaseException as error:
                interrupted = error
    if interrupted is not None:
        raise interrupted


def _joined(parts: list[list[Tensor]]) -> list[Tensor]:
    return [torch.cat(column) for column in zip(*parts)]
