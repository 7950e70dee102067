"""Raw-pixel retrieval baselines: what a trained embedding has to beat on the same evaluation sets.

Mean-centred raw pixels (the mean of the evaluation images subtracted), scored by ``RetrievalMetrics`` leave-one-out
exactly like the trained models: the digits held-out 30% of ``DigitsDataModule`` and, when the faces are there, the
20 unseen people of ``configs/att_faces.yaml`` at its image size (56x46), at the 28x23 of the baseline config
and at the native 112x92.

Run: ``python benchmarks/baselines.py [--faces ../shared/data/att_faces]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from lit_metric import RetrievalMetrics
from lit_metric.data import DigitsDataModule, ImageFolderDataModule


def raw_pixel_scores(images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    pixels = images.flatten(1)
    metric = RetrievalMetrics(metrics=("recall", "map_at_r"), k=(1,))
    metric.update(pixels - pixels.mean(dim=0), labels, torch.arange(len(labels)))
    return {name: float(value) for name, value in metric.compute().items() if name in ("map@r", "recall@1")}


def evaluation_set(datamodule) -> tuple[torch.Tensor, torch.Tensor]:
    datamodule.setup("validate")
    batches = list(datamodule.val_dataloader())
    return torch.cat([batch["image"] for batch in batches]), torch.cat([batch["label"] for batch in batches])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=Path, default=Path(__file__).parents[1].parent / "shared/data/att_faces")
    args = parser.parse_args()
    rows = {"digits, held-out 30%": evaluation_set(DigitsDataModule())}
    if args.faces.is_dir():
        for size in ((28, 23), (56, 46), (112, 92)):
            faces = ImageFolderDataModule(root=str(args.faces), train_classes="s1..s20", image_size=size)
            rows[f"ORL faces s21..s40, {size[0]}x{size[1]}"] = evaluation_set(faces)
    print("| data | MAP@R | Recall@1 |")
    print("|---|---|---|")
    for name, (images, labels) in rows.items():
        scores = raw_pixel_scores(images, labels)
        print(f"| {name} | {scores['map@r']:.4f} | {scores['recall@1']:.4f} |")


if __name__ == "__main__":
    main()
