"""Run a function on several CPU processes joined in one gloo process group, for the distributed tests."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

__all__ = ["run_processes"]


def run_processes(fn: Callable[..., Any], directory: Path, *args: Any, world_size: int = 2) -> list[Any]:
    """``fn(rank, world_size, *args)`` on ``world_size`` forked processes; their return values in rank order.

    The processes join a gloo group through a file store in ``directory`` and fail after a minute instead of hanging
    when one of them waits on a collective that the others never reach. An exception in any process is raised here.
    """
    mp.start_processes(_worker, args=(fn, world_size, str(directory), args), nprocs=world_size, start_method="fork")
    return [torch.load(Path(directory) / f"result{rank}.pt", weights_only=False) for rank in range(world_size)]


def _worker(rank: int, fn: Callable[..., Any], world_size: int, directory: str, args: tuple) -> None:
    # Two processes on two cores: more threads per process only oversubscribe them.
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{directory}/store",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        torch.save(fn(rank, world_size, *args), f"{directory}/result{rank}.pt")
    finally:
        dist.destroy_process_group()
