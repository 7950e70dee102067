"""lit_metric's training step next to pytorch-metric-learning and faiss in one process, under both OpenMP wait policies.

faiss ships its own OpenMP runtime (a second ``libgomp`` beside torch's). With both loaded, threads of one runtime
spin-wait for work while the other's need the cores. The step timed is what a training step does on a ``(B, D)``
batch: ``cosine_similarity``, ``PairMiner(strategy="hard").mine`` on the detached similarity and
``binomial_deviance_of_pairs`` forward and backward. Each child process times it at three stages:

- ``torch only``: lit_metric and torch, nothing else imported;
- ``+ PML losses``: after ``import pytorch_metric_learning.losses``, what a PML criterion costs;
- ``+ faiss search``: after a faiss k-NN search, as PML's ``AccuracyCalculator`` or a retrieval benchmark runs one.

The children run with ``OMP_WAIT_POLICY`` unset and ``PASSIVE``, which must be set before torch is imported: the
runtimes read it when they load. (``import lit_metric`` sets ``PASSIVE`` unless the variable is set; the unset
children import torch first and clear it again before faiss loads.) Rounds alternate the two, so load from other jobs falls on both alike; each cell
is the median over rounds of each child's median step, with the range over rounds.
Run: ``python benchmarks/openmp.py`` (``--size 512 --rounds 1`` for a quick look).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

STAGES = ("torch only", "+ PML losses", "+ faiss search")
POLICIES = ("unset", "PASSIVE")


def child(size: int, dim: int, repeats: int) -> dict[str, object]:
    """Median step time in ms at each stage, and how many OpenMP runtimes the process holds at the end."""
    policy = os.environ.get("OMP_WAIT_POLICY")
    import torch

    from lit_metric import PairMiner
    from lit_metric.functional import binomial_deviance_of_pairs, cosine_similarity

    from measure import wall_time_ms

    if policy is None:
        # Importing lit_metric sets PASSIVE for the runtimes that load later (faiss's): the unset runs keep the default.
        os.environ.pop("OMP_WAIT_POLICY")

    torch.manual_seed(0)
    embeddings = torch.randn(size, dim, requires_grad=True)
    labels, anchors = torch.arange(size) % max(size // 8, 1), torch.arange(size)
    miner = PairMiner(strategy="hard")

    def step() -> None:
        similarity = cosine_similarity(embeddings)
        pairs = miner.mine(similarity.detach(), labels, labels, anchors)
        binomial_deviance_of_pairs(similarity, pairs).backward()

    times = {"torch only": wall_time_ms(step, repeats)}
    import pytorch_metric_learning.losses  # noqa: F401

    times["+ PML losses"] = wall_time_ms(step, repeats)
    import faiss
    import numpy as np

    points = np.random.default_rng(0).random((4096, 64), dtype=np.float32)
    index = faiss.IndexFlatL2(64)
    index.add(points)
    index.search(points, 10)
    times["+ faiss search"] = wall_time_ms(step, repeats)
    with open("/proc/self/maps") as maps:
        runtimes = {line.split()[-1] for line in maps if "libgomp" in line}
    return {"ms": times, "runtimes": len(runtimes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=4096, help="batch size B")
    parser.add_argument("--dim", type=int, default=128, help="embedding dimension D")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per stage in each child")
    parser.add_argument("--rounds", type=int, default=3, help="children per policy")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.size, args.dim, args.repeats)))
        return
    results: dict[str, list[dict]] = {policy: [] for policy in POLICIES}
    for _ in range(args.rounds):
        for policy in POLICIES:
            env = {name: value for name, value in os.environ.items() if name != "OMP_WAIT_POLICY"}
            if policy != "unset":
                env["OMP_WAIT_POLICY"] = policy
            command = [sys.executable, __file__, "--child", *sys.argv[1:]]
            completed = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            results[policy].append(json.loads(completed.stdout.splitlines()[-1]))
    print(f"B = {args.size}, D = {args.dim}, {os.cpu_count()} CPUs; ms per step, median over {args.rounds} rounds "
          f"(range) of the median of {args.repeats} steps")
    print("| OMP_WAIT_POLICY | " + " | ".join(STAGES) + " | + faiss / torch only | OpenMP runtimes |")
    print("|---|" + "---|" * (len(STAGES) + 2))
    for policy, rounds in results.items():
        cells, medians = [], {}
        for stage in STAGES:
            values = [result["ms"][stage] for result in rounds]
            medians[stage] = statistics.median(values)
            cells.append(f"{medians[stage]:.0f} ({min(values):.0f}-{max(values):.0f})")
        ratio = medians["+ faiss search"] / medians["torch only"]
        print(f"| {policy} | " + " | ".join(cells) + f" | {ratio:.2f} | {rounds[0]['runtimes']} |")


if __name__ == "__main__":
    main()
