"""Sharded against gathered retrieval evaluation under DDP, and single-process evaluation, side by side in one run.

``--processes`` gloo processes on this machine each hold every P-th item (as ``DistributedSampler`` deals them out)
and evaluate them with ``RetrievalMetrics(sharded=False)`` (today's gather of every process's embeddings onto every
process) and ``RetrievalMetrics(sharded=True)``, in turns, ``--repeats`` times each; one thread per process. Then
this process evaluates all items alone, with as many threads as there are processes. Data: N embeddings of
dimension 128 in classes of 50 (as ``retrieval.py``); the first ``--queries`` items are queries, searched against
every item (themselves excluded); Recall@{1,2,4,8}, MAP@R and R-Precision.

Memory is each process's peak RSS above its baseline after imports and data creation (``measure.peak_memory_mb``
resets the mark before each call); the table gives the largest over processes. Wall time is the median over the
repeats (after a small warm-up call of each), the range beside it; the gathered and sharded calls start together
on every process (a barrier first).
Every method prints its metrics, which must agree.

    python benchmarks/sharded.py                                   # N = 1,000,000, 10,000 queries, 2 processes
    python benchmarks/sharded.py --n 100000 --queries 5000 --processes 3
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lit_metric.metrics import RetrievalMetrics

from measure import peak_memory_mb
from retrieval import KS, make_embeddings

METRICS = ("recall", "map_at_r", "r_precision")
SHOWN = ("recall@1", "map@r", "r_precision")


def evaluate(x: torch.Tensor, labels: torch.Tensor, indexes: torch.Tensor, num_queries: int, sharded: bool | None):
    """Wall time, peak memory above the process's baseline, and the metrics of one evaluation."""
    result = {}

    def call() -> None:
        start = time.perf_counter()
        metric = RetrievalMetrics(metrics=METRICS, k=KS, sharded=sharded)
        metric.update(x, labels, indexes, indexes < num_queries, torch.ones_like(indexes, dtype=torch.bool))
        out = metric.compute()
        result["seconds"] = time.perf_counter() - start
        result["metrics"] = tuple(out[name].item() for name in SHOWN)

    result["mb"] = peak_memory_mb(call)
    return result


def worker(rank: int, world_size: int, n: int, num_queries: int, repeats: int, directory: str) -> None:
    torch.set_num_threads(1)  # one core per process
    dist.init_process_group("gloo", init_method=f"file://{directory}/store", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(minutes=30))
    x, labels = make_embeddings(n)
    mine = torch.arange(rank, n, world_size)
    x, labels = x[mine].clone(), labels[mine].clone()  # the full set is freed: only the shard counts in the baseline
    for sharded in (False, True):  # warm-up: the first search of a process compiles its scan
        evaluate(x[:500], labels[:500], mine[:500], num_queries, sharded)
    runs = {False: [], True: []}
    for repeat in range(repeats):
        # In turns, so that drifts in the machine's speed hit both alike.
        for sharded in (False, True) if repeat % 2 == 0 else (True, False):
            dist.barrier()
            runs[sharded].append(evaluate(x, labels, mine, num_queries, sharded))
    torch.save(runs, f"{directory}/runs{rank}.pt")
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="calls of each method")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        mp.start_processes(worker, args=(args.processes, args.n, args.queries, args.repeats, directory),
                           nprocs=args.processes, start_method="fork")
        runs = [torch.load(Path(directory) / f"runs{rank}.pt") for rank in range(args.processes)]
    torch.set_num_threads(args.processes)
    x, labels = make_embeddings(args.n)
    warmup = min(args.n, 1000)
    evaluate(x[:warmup], labels[:warmup], torch.arange(warmup), args.queries, False)
    single = [evaluate(x, labels, torch.arange(args.n), args.queries, False) for _ in range(args.repeats)]

    rows = {"gathered": [run[False] for run in runs], "sharded": [run[True] for run in runs], "single": [single]}
    print(f"load average before the run {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("| N | queries | processes | method | wall s | range | peak MB per process | x gathered | "
          + " | ".join(SHOWN) + " |")
    print("|---|---|---|---|---|---|---|---|" + "---|" * len(SHOWN))
    gathered_mb = max(max(call["mb"] for call in calls) for calls in rows["gathered"])
    for method, per_process in rows.items():
        # A call lasts as long as its slowest process.
        seconds = [max(calls[i]["seconds"] for calls in per_process) for i in range(len(per_process[0]))]
        mb = max(max(call["mb"] for call in calls) for calls in per_process)
        metrics = {call["metrics"] for calls in per_process for call in calls}
        processes = 1 if method == "single" else args.processes
        scores = " | ".join(f"{value:.4f}" for value in sorted(metrics)[0])
        print(f"| {args.n} | {args.queries} | {processes} | {method} | {statistics.median(seconds):.2f} | "
              f"{min(seconds):.2f}-{max(seconds):.2f} | {mb:.0f} | {mb / gathered_mb:.2f} | {scores} |"
              + ("" if len(metrics) == 1 else " DIFFER"))


if __name__ == "__main__":
    main()
