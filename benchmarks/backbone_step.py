"""Wall time and peak memory of one training step of a timm ResNet-50 embedder on CPU, against the plain classifier.

One step is forward, loss, backward and an SGD update on a batch of 64 random 224x224 RGB images, P x K = 16 x 4
labels, with random weights (``pretrained: false``; the time does not depend on the weights). Side by side in one
process:

- ``lit_metric``: ``BackboneEmbedder("resnet50")`` (average pooling, 512-d BNNeck head), the cosine similarity, the
  paper's pairs from ``PairMiner`` and the binomial deviance, as ``MetricLearningModule.training_step`` runs them;
- ``lit_metric, channels_last``: the same with the network and the images in channels-last memory format;
- ``timm classifier`` (the baseline): ``timm.create_model("resnet50")`` with its 1000-way classifier and cross-entropy,
  the step that ImageNet training of the same backbone takes.

Ratios are against the baseline. Run: ``python benchmarks/backbone_step.py`` (``--batch 8 --size 64`` for a quick try).
"""

from __future__ import annotations

import argparse

import timm
import torch
import torch.nn.functional as F

from lit_metric import BackboneEmbedder, BinomialDevianceLoss, PairMiner
from lit_metric.functional import cosine_similarity

from measure import peak_memory_mb, wall_time_ms


def embedder_step(network, optimizer, images, labels) -> None:
    similarity = cosine_similarity(network(images))
    index = torch.arange(len(labels))
    pairs = PairMiner().mine(similarity.detach(), labels, labels, index)
    BinomialDevianceLoss().from_pairs(similarity, pairs).backward()
    optimizer.step()
    optimizer.zero_grad()


def classifier_step(network, optimizer, images, labels) -> None:
    F.cross_entropy(network(images), labels).backward()
    optimizer.step()
    optimizer.zero_grad()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet50", help="timm model name")
    parser.add_argument("--batch", type=int, default=64, help="images per step, 4 per class")
    parser.add_argument("--size", type=int, default=224, help="image side")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per method, after one untimed step")
    args = parser.parse_args()

    torch.manual_seed(0)
    images = torch.rand(args.batch, 3, args.size, args.size)
    labels = torch.arange(args.batch // 4).repeat_interleave(4)
    methods = {
        "lit_metric": (BackboneEmbedder(args.model), embedder_step, torch.contiguous_format),
        "lit_metric, channels_last": (BackboneEmbedder(args.model), embedder_step, torch.channels_last),
        "timm classifier": (timm.create_model(args.model), classifier_step, torch.contiguous_format),
    }
    results = {}
    for name, (network, step, memory_format) in methods.items():
        network = network.to(memory_format=memory_format).train()
        optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.9)
        batch = images.contiguous(memory_format=memory_format)
        run = lambda: step(network, optimizer, batch, labels % 1000)  # noqa: E731
        # The untimed first step, which also allocates the optimizer's momentum, gives the peak memory.
        peak = peak_memory_mb(run)
        results[name] = (wall_time_ms(run, repeats=args.repeats, warmup=0), peak)
        del network, optimizer

    baseline = results["timm classifier"][0]
    print(
        f"torch {torch.__version__}, timm {timm.__version__}, {torch.get_num_threads()} threads, {args.model}, "
        f"batch {args.batch}, {args.size}x{args.size}, median of {args.repeats}"
    )
    print("| method | step ms | x timm classifier | peak MB |")
    print("|---|---|---|---|")
    for name, (ms, peak) in results.items():
        print(f"| {name} | {ms:.0f} | {ms / baseline:.2f} | {peak:.0f} |")


if __name__ == "__main__":
    main()
