"""Wall time and peak memory of a callable, measured in this process, for the benchmark tables."""

from __future__ import annotations

import ctypes
import gc
import re
import statistics
import time
from collections.abc import Callable

__all__ = ["peak_memory_mb", "wall_time_ms"]

_libc = ctypes.CDLL("libc.so.6")


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        return int(re.search(rf"{field}:\s+(\d+)", status.read()).group(1))


def peak_memory_mb(fn: Callable[[], object]) -> float:
    """Peak resident memory that one call of ``fn`` adds above what the process holds before it, in MB.

    Freed heap is handed back to the system first and Linux's peak-RSS mark is reset (``clear_refs`` = 5), so
    measurements of several callables side by side in one process do not see each other's peaks.
    """
    gc.collect()
    _libc.malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    baseline = _status_kb("VmRSS")
    fn()
    return (_status_kb("VmHWM") - baseline) / 1024


def wall_time_ms(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls after ``warmup`` calls, in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)
