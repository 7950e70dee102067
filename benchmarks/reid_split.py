"""Wall time of one full-size VIPeR split of a config: training on 316 people and evaluation on the other 316.

The images are generated (632 people, one 128x48 RGB bmp per camera), so the time is that of the real protocol
without the real data: ``lit-metric-protocol --splits 1`` over the layout, final evaluation included.

Run: ``python benchmarks/reid_split.py [--config configs/viper.yaml] [--people 632] [-- extra fit arguments]``
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from lit_metric.protocol import run_protocol


def write_viper_layout(root: Path, people: int, size: tuple[int, int] = (128, 48), seed: int = 0) -> Path:
    """``root/cam_a/NNN_0.bmp`` and ``root/cam_b/NNN_90.bmp`` of ``people`` people, random RGB pixels of ``size``."""
    rng = np.random.default_rng(seed)
    for camera, angle in (("cam_a", 0), ("cam_b", 90)):
        (root / camera).mkdir(parents=True, exist_ok=True)
        for person in range(people):
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / camera / f"{person:03d}_{angle}.bmp")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(Path(__file__).parents[1] / "configs" / "viper.yaml"))
    parser.add_argument("--people", type=int, default=632)
    args, extra = parser.parse_known_args()
    extra = extra[1:] if extra[:1] == ["--"] else extra
    with tempfile.TemporaryDirectory() as folder:
        root = write_viper_layout(Path(folder) / "viper", args.people)
        fit_args = [
            "--config", args.config, f"--data.init_args.root={root}", "--trainer.logger=false",
            f"--trainer.default_root_dir={folder}", *extra,
        ]
        (row,) = run_protocol(fit_args, [0])
    print("| config | people | training people | split wall time (s) |\n|---|---|---|---|")
    print(f"| {Path(args.config).name} | {args.people} | {args.people // 2} | {row['seconds']:.0f} |")


if __name__ == "__main__":
    main()
