"""lit_metric's exact retrieval evaluation on a GPU, on the data of ``retrieval.py`` (dimension 128, classes of 50):
how its rankings compare with a float64 search, and the wall time and peak device memory of ``RetrievalMetrics``
(Recall@{1,2,4,8}, MAP@R, R-Precision) in leave-one-out at 60,000 and 1,000,000 items and for 10,000 queries
against 1,000,000 items. Wall time is the median of ``--repeats`` calls after a warm-up call (one call for the
1,000,000-item leave-one-out); peak memory is the largest growth of the device's allocated memory over one call.

    python benchmarks/retrieval_gpu.py
    python benchmarks/retrieval_gpu.py --device cpu --exact-n 500 --n 2000 --scale 5000 --queries 100  # small, anywhere
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from lit_metric.functional.knn import cosine_knn
from lit_metric.metrics import RetrievalMetrics

from retrieval import CLASS_SIZE, DIM, KS, make_embeddings


def exactness(x: torch.Tensor, k: int) -> str:
    """How the leave-one-out rankings of ``x`` compare with a float64 search of the same items."""
    scores, neighbours = cosine_knn(x, k)
    unit = F.normalize(x.double(), dim=1)
    similarity = unit @ unit.T
    similarity.fill_diagonal_(float("-inf"))
    best, best_neighbours = similarity.topk(k, dim=1)
    differ = (neighbours != best_neighbours).any(dim=1)
    error = (scores.double() - similarity.gather(1, neighbours)).abs().max().item()
    summary = (f"{len(x) - int(differ.sum()):,} of {len(x):,} rankings (k = {k}) equal float64's, scores within "
               f"{error:.1e} of float64")
    if x.device.type != "cpu":
        # The CPU search (the compiled scan where a C compiler is) against this device's, on the same items.
        cpu_scores, cpu_neighbours = cosine_knn(x.cpu(), k)
        same = int((cpu_neighbours == neighbours.cpu()).all(dim=1).sum())
        summary += (f"; {same:,} equal the CPU's, scores within {(cpu_scores - scores.cpu()).abs().max().item():.1e} "
                    "of the CPU's")
    if not differ.any():
        return summary
    # Where the orders differ, the float64 similarities rank by rank show how close the swapped items are.
    gap = (similarity[differ].gather(1, neighbours[differ]) - best[differ]).abs().max().item()
    return f"{summary}; in the others the float64 similarities rank by rank differ by at most {gap:.1e}"


def evaluate(x: torch.Tensor, labels: torch.Tensor, num_queries: int | None, chunk_size: int,
             repeats: int) -> dict[str, float]:
    """Median wall time (s), peak device memory (MB above the embeddings, NaN off GPUs) and the scores."""
    on_gpu = x.device.type == "cuda"
    indexes = torch.arange(len(x), device=x.device)

    def call() -> dict[str, torch.Tensor]:
        metric = RetrievalMetrics(metrics=("recall", "map_at_r", "r_precision"), k=KS, chunk_size=chunk_size)
        if num_queries is None:
            metric.to(x.device).update(x, labels, indexes)
        else:
            is_query = indexes < num_queries
            metric.to(x.device).update(x, labels, indexes, is_query, torch.ones_like(is_query))
        out = metric.compute()
        if on_gpu:
            torch.cuda.synchronize()
        return out

    call()
    times, peaks = [], []
    for _ in range(repeats):
        if on_gpu:
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        start = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - start)
        peaks.append((torch.cuda.max_memory_allocated() - before) / 2**20 if on_gpu else float("nan"))
    return {"wall": statistics.median(times), "peak_mb": max(peaks), "map@r": out["map@r"].item(),
            "r_precision": out["r_precision"].item(), "recall@1": out["recall@1"].item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--exact-n", type=int, default=20_000, help="items of the float64 comparison")
    parser.add_argument("--n", type=int, default=60_000, help="items of the leave-one-out runs")
    parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[8192, 16384], help="for the --n runs")
    parser.add_argument("--scale", type=int, default=1_000_000, help="items of the large runs")
    parser.add_argument("--queries", type=int, default=10_000, help="queries of the large query/gallery run")
    parser.add_argument("--scale-chunk-size", type=int, default=32768, help="for the large leave-one-out run")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {name}, dimension {DIM}\n")
    # k as MAP@R needs it: every other member of a query's class.
    print(exactness(make_embeddings(args.exact_n)[0].to(device), CLASS_SIZE - 1), "\n")

    runs = [(args.n, None, chunk_size, args.repeats) for chunk_size in args.chunk_sizes]
    runs += [(args.scale, args.queries, 8192, args.repeats), (args.scale, None, args.scale_chunk_size, 1)]
    print("| N | queries | chunk_size | wall (s) | peak device memory (MB) | MAP@R | R-Precision | Recall@1 |")
    print("|---|---|---|---|---|---|---|---|")
    for n, num_queries, chunk_size, repeats in runs:
        x, labels = (t.to(device) for t in make_embeddings(n))
        r = evaluate(x, labels, num_queries, chunk_size, repeats)
        print(f"| {n:,} | {'all' if num_queries is None else f'{num_queries:,}'} | {chunk_size} | {r['wall']:.2f} "
              f"| {r['peak_mb']:.0f} | {r['map@r']:.4f} | {r['r_precision']:.4f} | {r['recall@1']:.4f} |", flush=True)
        del x, labels


if __name__ == "__main__":
    main()
