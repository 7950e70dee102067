"""Wall time and peak memory of exact leave-one-out retrieval evaluation: lit_metric's RetrievalMetrics against
pytorch-metric-learning's AccuracyCalculator (faiss-cpu, the named baseline) and torchmetrics' retrieval
classes fed all query-gallery pairs.

All methods run side by side in this process, after a small warm-up run of each, ``--repeats`` times each and in
turns, call by call, so that drifts in the machine's speed hit them alike: wall time is the median (the range is
printed beside it, as other jobs on a small machine skew single calls; pytorch-metric-learning's calls at 60,000
varied from 7.7 to 11.5 s between runs), peak memory the largest growth of the process's peak RSS over one call
(``measure.peak_memory_mb`` resets the mark before each), so it covers torch's and faiss' allocations that
tracemalloc cannot see. Data: N embeddings of dimension 128 in classes of 50, Recall@{1,2,4,8}, MAP@R and
R-Precision. Each method prints its MAP@R and R-Precision so the table also shows that they agree.

    python benchmarks/retrieval.py                      # N = 5,000, 20,000, 60,000, median of 3 calls
    python benchmarks/retrieval.py --scale              # 1,000,000 items, 10,000 of them queries
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torchmetrics.retrieval import RetrievalHitRate, RetrievalRPrecision

from lit_metric.metrics import RetrievalMetrics

from measure import peak_memory_mb

DIM, CLASS_SIZE, KS = 128, 50, (1, 2, 4, 8)
# torchmetrics keeps a float32 score, a bool target and an int64 query index per pair, and copies them in compute.
TORCHMETRICS_BYTES_PER_PAIR, TORCHMETRICS_LIMIT_GB = 2 * 13, 4.0


def make_embeddings(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % max(1, n // CLASS_SIZE)
    centers = torch.randn(int(labels.max()) + 1, DIM, generator=g)
    return centers[labels] + 1.5 * torch.randn(n, DIM, generator=g), labels


def run_lit_metric(x: torch.Tensor, labels: torch.Tensor, num_queries: int | None) -> dict[str, float]:
    metric = RetrievalMetrics(metrics=("recall", "map_at_r", "r_precision"), k=KS)
    if num_queries is None:
        metric.update(x, labels, torch.arange(len(x)))
    else:
        # The first items are queries searched against all items, themselves excluded.
        is_query = torch.arange(len(x)) < num_queries
        metric.update(x, labels, torch.arange(len(x)), is_query, torch.ones_like(is_query))
    out = metric.compute()
    return {"map@r": out["map@r"].item(), "r_precision": out["r_precision"].item(), "recall@1": out["recall@1"].item()}


def run_pml(x: torch.Tensor, labels: torch.Tensor, num_queries: int | None) -> dict[str, float]:
    # Imported here, so that retrieval_gpu.py can share this file's data on machines without pml and faiss.
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    calculator = AccuracyCalculator(
        include=("precision_at_1", "mean_average_precision_at_r", "r_precision"), k="max_bin_count"
    )
    # Its default faiss index is L2, which ranks unit vectors as cosine similarity does.
    out = calculator.get_accuracy(torch.nn.functional.normalize(x, dim=1), labels)
    return {"map@r": out["mean_average_precision_at_r"], "r_precision": out["r_precision"],
            "recall@1": out["precision_at_1"]}


def run_torchmetrics(x: torch.Tensor, labels: torch.Tensor, num_queries: int | None) -> dict[str, float]:
    metrics = [RetrievalHitRate(top_k=k) for k in KS] + [RetrievalRPrecision()]
    n = len(x)
    unit = torch.nn.functional.normalize(x, dim=1)
    for start in range(0, n, 1000):
        rows = torch.arange(start, min(start + 1000, n))
        others = torch.ones(len(rows), n, dtype=torch.bool)
        others[torch.arange(len(rows)), rows] = False
        # Scores must be > 0: since torchmetrics PR #3160 a score <= 0 means "not retrieved".
        preds = (2 + unit[rows] @ unit.T)[others]
        target = (labels[rows, None] == labels[None, :])[others]
        indexes = rows[:, None].expand(-1, n)[others]
        for metric in metrics:
            metric.update(preds, target, indexes=indexes)
    return {"map@r": float("nan"), "r_precision": metrics[-1].compute().item(), "recall@1": metrics[0].compute().item()}


METHODS = {"pytorch-metric-learning": run_pml, "lit_metric": run_lit_metric, "torchmetrics": run_torchmetrics}


def measure(methods: list[str], x: torch.Tensor, labels: torch.Tensor, num_queries: int | None = None,
            repeats: int = 1) -> dict[str, dict[str, float]]:
    """Scores, median, least and greatest wall time (s) and peak memory (MB above the embeddings) of ``repeats``
    calls of each method, the methods taking turns."""
    results: dict[str, dict[str, float]] = {method: {} for method in methods}
    walls: dict[str, list[float]] = {method: [] for method in methods}
    peaks: dict[str, list[float]] = {method: [] for method in methods}

    def call(method: str) -> None:
        start = time.perf_counter()
        results[method].update(METHODS[method](x, labels, num_queries))
        walls[method].append(time.perf_counter() - start)

    for _ in range(repeats):
        for method in methods:
            peaks[method].append(peak_memory_mb(lambda: call(method)))
    for method, result in results.items():
        times = walls[method]
        result.update(wall=statistics.median(times), fastest=min(times), slowest=max(times), peak_mb=max(peaks[method]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[5_000, 20_000, 60_000])
    parser.add_argument("--scale", action="store_true", help="lit_metric alone on 1,000,000 items")
    parser.add_argument("--repeats", type=int, default=3, help="calls of each method per size")
    args = parser.parse_args()
    # First calls pay for thread pools and lazy initialisation; keep that out of the table.
    small, small_labels = make_embeddings(500)
    for method in METHODS:
        METHODS[method](small, small_labels, None)

    # Other jobs on the machine skew wall times, so the load is printed before and after.
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, dimension {DIM}, classes of {CLASS_SIZE}, "
          f"median of {args.repeats}, load average {os.getloadavg()[0]:.1f}\n")
    if args.scale:
        n, queries = 1_000_000, 10_000
        r = measure(["lit_metric"], *make_embeddings(n), queries, args.repeats)["lit_metric"]
        print("| N | queries | wall (s) | peak memory (MB) | embeddings (MB) | MAP@R | R-Precision | Recall@1 |")
        print("|---|---|---|---|---|---|---|---|")
        print(f"| {n:,} | {queries:,} | {r['wall']:.1f} | {r['peak_mb']:.0f} | {n * DIM * 4 / 2**20:.0f} "
              f"| {r['map@r']:.4f} | {r['r_precision']:.4f} | {r['recall@1']:.4f} |")
        print(f"\nload average {os.getloadavg()[0]:.1f}")
        return

    print("| N | method | wall (s) | range (s) | peak memory (MB) | time vs pml | MAP@R | R-Precision | Recall@1 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in args.n:
        x, labels = make_embeddings(n)
        pairs_gb = n * (n - 1) * TORCHMETRICS_BYTES_PER_PAIR / 1e9
        fits = pairs_gb <= TORCHMETRICS_LIMIT_GB
        results = measure([method for method in METHODS if fits or method != "torchmetrics"], x, labels,
                          repeats=args.repeats)
        for method in METHODS:
            if method not in results:
                print(f"| {n:,} | {method} | skipped (N^2 pairs = {pairs_gb:.0f} GB) | | | | | | |")
                continue
            r = results[method]
            ratio = r["wall"] / results["pytorch-metric-learning"]["wall"]
            print(f"| {n:,} | {method} | {r['wall']:.2f} | {r['fastest']:.2f}-{r['slowest']:.2f} | {r['peak_mb']:.0f} "
                  f"| {ratio:.2f}x | {r['map@r']:.4f} "
                  f"| {r['r_precision']:.4f} | {r['recall@1']:.4f} |", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
