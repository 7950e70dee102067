"""Fast VIPeR ablations: the package's network, miner and loss in a plain in-memory loop, scored with and without
the flip test.

The images of a VIPeR folder are decoded once; each split (the seeded halvings of ``ReIDDataModule``) trains on
P x K = 32 x 2 batches of its training people and queries the others from cam_a against cam_b. The loop skips
Lightning to try many settings quickly; the recipe's own figures come from ``lit-metric-protocol`` (docs/reid.md).

Run: ``python benchmarks/viper_ablation.py --root ../shared/data/viper_dev --splits 0,1,2 [--parts 4 ...]``
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lit_metric import BinomialDevianceLoss, ConvEmbedder, PairMiner, PartEmbedder
from lit_metric.data.image_folder import natural_key
from lit_metric.data.reid import scan_viper, viper_split
from lit_metric.data.transforms import load_image

MEAN, STD = 0.5, 0.25
RANKS = (1, 5, 10, 20)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data/viper_dev")
    parser.add_argument("--splits", default="0,1,2", help="comma-separated split indices")
    parser.add_argument("--size", default="64,24", help="H,W the images are resized to")
    parser.add_argument("--parts", type=int, default=4, help="bands of PartEmbedder; 0 = one ConvEmbedder")
    parser.add_argument("--part-height", type=int, default=20)
    parser.add_argument("--channels", default="32,64,128,128")
    parser.add_argument("--dim", type=int, default=192)
    parser.add_argument("--share", action="store_true", help="one tower for all parts")
    parser.add_argument("--alpha", type=float, default=10.0)
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--cost", type=float, default=3.0, help="negative cost C")
    parser.add_argument("--strategy", default="all")
    parser.add_argument("--classes-per-batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--pad", type=int, default=0, help="random translation by up to this many pixels")
    parser.add_argument("--jitter", type=float, default=0.0, help="brightness and contrast factor range")
    parser.add_argument("--erase", type=float, default=0.0, help="random erasing probability")
    parser.add_argument("--no-flip", action="store_true", help="no mirror-image augmentation")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def augment(x: torch.Tensor, args: argparse.Namespace) -> torch.Tensor:
    """Translation (edge padding, random crop), mirror images, brightness/contrast, random erasing of a batch."""
    n, c, h, w = x.shape
    if args.pad:
        padded = F.pad(x, (args.pad,) * 4, mode="replicate")
        dy = torch.randint(0, 2 * args.pad + 1, (n,))
        dx = torch.randint(0, 2 * args.pad + 1, (n,))
        x = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    if not args.no_flip:
        mirror = torch.rand(n) < 0.5
        x[mirror] = x[mirror].flip(-1)
    if args.jitter:
        brightness, contrast = 1 + args.jitter * (2 * torch.rand(2, n, 1, 1, 1) - 1)
        mean = x.mean((1, 2, 3), keepdim=True)
        x = (((x - mean) * contrast + mean) * brightness).clamp(0, 1)
    for i in range(n):
        if args.erase and torch.rand(()) < args.erase:
            area = h * w * (0.02 + 0.38 * float(torch.rand(())))
            ratio = math.exp(math.log(0.3) + (math.log(3.33) - math.log(0.3)) * float(torch.rand(())))
            eh, ew = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
            if eh < h and ew < w:
                top, left = int(torch.randint(h - eh + 1, ())), int(torch.randint(w - ew + 1, ()))
                x[i, :, top : top + eh, left : left + ew] = torch.rand(c, eh, ew)
    return x


def ranks(network: torch.nn.Module, query: torch.Tensor, gallery: torch.Tensor, flip: bool) -> torch.Tensor:
    """Rank of each query's true match (query i matches gallery i) by cosine similarity, 0 = first."""

    def embed(images: torch.Tensor) -> torch.Tensor:
        images = (images - MEAN) / STD
        embeddings = F.normalize(network(images), dim=1)
        return F.normalize(embeddings + F.normalize(network(images.flip(-1)), dim=1), dim=1) if flip else embeddings

    similarity = embed(query) @ embed(gallery).T
    return (similarity > similarity.diag()[:, None]).sum(1)


def run_split(split: int, pixels: dict, people: list[str], size: tuple[int, int], args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    train, test = viper_split(people, split, seed=0)
    images = torch.stack([pixels[person, camera] for person in train for camera in (0, 1)]).float() / 255
    labels = torch.arange(len(train)).repeat_interleave(2)
    query = torch.stack([pixels[person, 0] for person in test]).float() / 255
    gallery = torch.stack([pixels[person, 1] for person in test]).float() / 255
    channels = [int(c) for c in args.channels.split(",")]
    if args.parts:
        network = PartEmbedder(3, size, args.parts, args.part_height, channels, args.dim, args.share)
    else:
        network = ConvEmbedder(3, args.dim, channels)
    optimizer = torch.optim.Adam(network.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = len(train) // args.classes_per_batch
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, args.lr, total_steps=steps_per_epoch * args.epochs, pct_start=0.05, div_factor=10,
        final_div_factor=100,
    )
    miner = PairMiner(strategy=args.strategy, negative_cost=args.cost)
    criterion = BinomialDevianceLoss(args.alpha, args.beta)
    start = time.perf_counter()
    for _ in range(args.epochs):
        network.train()
        order = torch.randperm(len(train))
        for step in range(steps_per_epoch):
            chosen = order[step * args.classes_per_batch : (step + 1) * args.classes_per_batch]
            batch = torch.stack([2 * chosen, 2 * chosen + 1], 1).flatten()
            embeddings = F.normalize(network((augment(images[batch].clone(), args) - MEAN) / STD), dim=1)
            similarity = embeddings @ embeddings.T
            pairs = miner.mine(similarity.detach(), labels[batch], labels[batch], torch.arange(len(batch)))
            loss = criterion.from_pairs(similarity, pairs)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    network.eval()
    row = {"seconds": time.perf_counter() - start}
    with torch.no_grad():
        for flip in (False, True):
            rank = ranks(network, query, gallery, flip)
            tag = "flip " if flip else ""
            row.update({f"{tag}cmc@{k}": float((rank < k).float().mean()) for k in RANKS})
            row[f"{tag}map"] = float((1 / (rank + 1).float()).mean())
    return row


def main() -> None:
    args = parse_args()
    size = tuple(int(v) for v in args.size.split(","))
    scanned = scan_viper(Path(args.root))
    people = sorted({image.identity for image in scanned}, key=natural_key)
    pixels = {(image.identity, image.camera): load_image(image.path, 3, size) for image in scanned}
    rows = []
    for split in (int(s) for s in args.splits.split(",")):
        rows.append(run_split(split, pixels, people, size, args))
        print(f"split {split}: " + ", ".join(f"{k} {v:.3f}" for k, v in rows[-1].items()), flush=True)
    print("| metric | mean | sd |\n|---|---|---|")
    for name in rows[0]:
        values = [row[name] for row in rows]
        scale = 1 if name == "seconds" else 100
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"| {name} | {scale * statistics.mean(values):.1f} | {scale * sd:.1f} |")


if __name__ == "__main__":
    main()
