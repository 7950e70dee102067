"""Forward + backward time and peak memory of the binomial deviance at B in {256, 1024, 4096}, D = 512.

Three implementations side by side in one process, each from embeddings to a scalar and back:

- ``lit_metric``: ``cosine_similarity`` + ``binomial_deviance`` (closed-form gradient, argument checks on) on dense
  ``M`` and ``W``;
- ``lit_metric, pairs``: the same on the factored ``Pairs`` that the miner hands over (``binomial_deviance_of_pairs``);
- ``naive``: the formula written out with explicit dense M and W and ``log(1 + exp(.))``, left to autograd;
- ``floor``: the same normalisation and matrix product with ``S.sum()`` as the loss, left to autograd: what any
  loss on a cosine similarity matrix pays before the loss itself;
- ``floor, one-product backward``: the floor through lit_metric's ``cosine_similarity``, whose self-similarity
  backward is one matrix product instead of autograd's two, so the loss's own share shows against it too.

Ratios are against ``floor`` and ``naive``. Run: ``python benchmarks/loss.py`` (``--sizes 256 1024`` for fewer).

A second table puts the cost of mining, ``PairMiner.mine`` (masks, selection, weights, logged statistics) on the
detached similarity, next to the loss step that consumes its pairs (``cosine_similarity`` +
``binomial_deviance_of_pairs``, forward and backward), for the three strategies.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from lit_metric import PairMiner
from lit_metric.functional import Pairs, binomial_deviance, binomial_deviance_of_pairs, cosine_similarity

from measure import peak_memory_mb, wall_time_ms


def paper_pairs(labels: torch.Tensor) -> Pairs:
    """The paper's pairs: every ``i != j``, ``1 / n_pos`` and ``1 / n_neg``."""
    same = labels[:, None] == labels[None, :]
    positive = same & ~torch.eye(len(labels), dtype=torch.bool)
    negative = ~same
    return Pairs(positive, negative, 1 / positive.sum().float(), 1 / negative.sum().float())


def lit_metric_step(embeddings, pairs, m, w):
    binomial_deviance(cosine_similarity(embeddings), m, w).backward()


def lit_metric_pairs_step(embeddings, pairs, m, w):
    binomial_deviance_of_pairs(cosine_similarity(embeddings), pairs).backward()


def naive_step(embeddings, pairs, m, w):
    normalised = F.normalize(embeddings, dim=1)
    similarity = normalised @ normalised.T
    (w * torch.log(1 + torch.exp(-2.0 * (similarity - 0.5) * m))).sum().backward()


def floor_step(embeddings, pairs, m, w):
    normalised = F.normalize(embeddings, dim=1)
    (normalised @ normalised.T).sum().backward()


def one_product_floor_step(embeddings, pairs, m, w):
    cosine_similarity(embeddings).sum().backward()


STEPS = {
    "lit_metric": lit_metric_step,
    "lit_metric, pairs": lit_metric_pairs_step,
    "naive": naive_step,
    "floor": floor_step,
    "floor, one-product backward": one_product_floor_step,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mining-only", action="store_true", help="print only the mining table")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.mining_only:
        mining_table(args.sizes, args.dim, args.repeats)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, D = {args.dim}, median of {args.repeats}")
    print("| B | method | fwd+bwd ms | x floor | x naive | peak MB |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        embeddings = torch.randn(size, args.dim, requires_grad=True)
        pairs = paper_pairs(torch.arange(size) % max(size // 8, 1))
        m, w = pairs.matrices()
        results = {}
        for name, step in STEPS.items():
            run = lambda: step(embeddings, pairs, m, w)  # noqa: E731
            results[name] = (wall_time_ms(run, repeats=args.repeats), peak_memory_mb(run))
            embeddings.grad = None
        for name, (ms, mb) in results.items():
            print(
                f"| {size} | {name} | {ms:.1f} | {ms / results['floor'][0]:.2f} | "
                f"{ms / results['naive'][0]:.2f} | {mb:.0f} |"
            )
    mining_table(args.sizes, args.dim, args.repeats)


def mining_table(sizes: list[int], dim: int, repeats: int) -> None:
    """Time of ``PairMiner.mine`` against the loss step that consumes its pairs."""
    print("\n| B | strategy | mine ms | loss step ms | mine / loss step |")
    print("|---|---|---|---|---|")
    for size in sizes:
        embeddings = torch.randn(size, dim, requires_grad=True)
        labels, anchor_index = torch.arange(size) % max(size // 8, 1), torch.arange(size)
        similarity = cosine_similarity(embeddings).detach()
        for strategy in ("all", "hard", "topk_negatives"):
            miner = PairMiner(strategy=strategy)
            pairs = miner.mine(similarity, labels, labels, anchor_index)
            mine_ms = wall_time_ms(lambda: miner.mine(similarity, labels, labels, anchor_index), repeats=repeats)
            step_ms = wall_time_ms(lambda: lit_metric_pairs_step(embeddings, pairs, None, None), repeats=repeats)
            embeddings.grad = None
            print(f"| {size} | {strategy} | {mine_ms:.1f} | {step_ms:.1f} | {mine_ms / step_ms:.2f} |")


if __name__ == "__main__":
    main()
