"""Cost of the cross-batch memory: one training step's mining and loss, forward and backward, with and without it.

As ``benchmarks/loss.py`` does, the step starts from precomputed ``(B, D)`` embeddings: it runs
``MetricLearningModule.training_step`` with an identity network, so the reference path is the module's own
(``gather_reference``, ``similarity``, ``mine`` or ``mine_with_memory``, then ``BinomialDevianceLoss.from_pairs``), and
then the backward pass. With the memory, the anchors are scored against the batch and a full memory of ``M`` rows,
``(B, B + M)``. Batches hold ``B / 8`` classes of 8 samples; the memory's rows belong to 1024 classes.

Columns: the step's median wall time and peak memory above the inputs, the time of ``PairMiner.mine`` alone on the
step's similarity, and its share of the step. Run: ``python benchmarks/memory.py`` (``--batch 512 --memory 8192``).
"""

from __future__ import annotations

import argparse
import warnings

import torch
from torch import nn

from lit_metric import MetricLearningModule, PairMiner
from lit_metric.functional import cosine_similarity

from measure import peak_memory_mb, wall_time_ms


class FixedMinerModule(MetricLearningModule):
    """The module on precomputed embeddings with a given miner, stepped without a trainer."""

    def __init__(self, miner: PairMiner) -> None:
        super().__init__(nn.Identity())
        self._miner = miner

    @property
    def miner(self) -> PairMiner:
        return self._miner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--memory", type=int, default=8192)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    # The module logs outside a trainer: Lightning's warning about it says nothing here.
    warnings.filterwarnings("ignore", "You are trying to `self.log()`")
    embeddings = torch.randn(args.batch, args.dim, requires_grad=True)
    batch = {
        "image": embeddings,
        "label": torch.arange(args.batch) % max(args.batch // 8, 1),
        "index": torch.arange(args.batch),
    }
    held = (
        torch.randn(args.memory, args.dim),
        torch.randint(1024, (args.memory,)),
        torch.arange(args.batch, args.batch + args.memory),
    )
    memory_mb = sum(tensor.numel() * tensor.element_size() for tensor in held) / 2**20
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, B = {args.batch}, M = {args.memory}, "
        f"D = {args.dim}, median of {args.repeats}; the memory itself holds {memory_mb:.1f} MiB"
    )
    print("| strategy | memory | step ms | x without | peak MB | mine ms | mine share |")
    print("|---|---|---|---|---|---|---|")
    for strategy in ("all", "hard", "topk_negatives"):
        baseline = None
        for size in (None, args.memory):
            miner = PairMiner(strategy=strategy, memory_size=size)
            module = FixedMinerModule(miner)

            def step() -> None:
                if miner.memory is not None:
                    # Each step starts from the same full memory (an assignment: the memory's tensors are replaced,
                    # never written into).
                    miner.memory.embeddings, miner.memory.labels, miner.memory.indexes = held
                module.training_step(batch, 0).backward()
                embeddings.grad = None

            step_ms = wall_time_ms(step, repeats=args.repeats)
            peak_mb = peak_memory_mb(step)
            inputs = mining_inputs(size is not None, batch, held)
            mine_ms = wall_time_ms(lambda: miner.mine(*inputs), repeats=args.repeats)
            baseline = baseline or step_ms
            label = "-" if size is None else str(size)
            print(
                f"| {strategy} | {label} | {step_ms:.1f} | {step_ms / baseline:.2f} | {peak_mb:.0f} | {mine_ms:.1f} "
                f"| {mine_ms / step_ms:.2f} |"
            )


def mining_inputs(with_memory: bool, batch: dict[str, torch.Tensor], held: tuple[torch.Tensor, ...]) -> tuple:
    """The arguments of ``PairMiner.mine`` in the step: the detached similarity against the batch, then the memory,
    with the labels, the anchors' positions and the dataset indexes."""
    embeddings, labels, indexes = batch["image"].detach(), batch["label"], batch["index"]
    if not with_memory:
        return cosine_similarity(embeddings), labels, labels, indexes
    similarity = cosine_similarity(embeddings, torch.cat([embeddings, held[0]]))
    reference_labels, reference_indexes = torch.cat([labels, held[1]]), torch.cat([indexes, held[2]])
    return similarity, labels, reference_labels, torch.arange(len(labels)), indexes, reference_indexes


if __name__ == "__main__":
    main()
