"""Cost of checking image files at setup: reading their headers against decoding every file (``verify``).

Generates ``--n`` files of each kind in a temporary folder (smooth colour fields with sensor-like noise, so that
they compress like photographs: re-ID crops of 128x64 as JPEG, 256x256 as JPEG and PNG). Then times building an
``ImageFileDataset`` with ``in_memory=False`` over them, with ``verify`` off (headers only) and on, against a full
decode of every file at its size (``load_image``, pixels dropped), the decoding that ``in_memory=True`` does. Each
time is the best of ``--repeats``, with the files in the page cache.

Run: ``python benchmarks/image_checks.py [--n 10000] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from lit_metric.data import ImageFileDataset
from lit_metric.data.transforms import load_image

KINDS = {"JPEG 128x64": ("jpg", (128, 64)), "JPEG 256x256": ("jpg", (256, 256)), "PNG 256x256": ("png", (256, 256))}


def write_images(folder: Path, n: int, extension: str, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """``n`` RGB files of ``size`` = ``(H, W)``: a bilinear upsampling of a random 4x4 colour field plus noise."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    paths = []
    for i in range(n):
        field = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize(size[::-1], Image.BILINEAR)
        pixels = np.clip(np.asarray(field, dtype=np.float32) + rng.normal(0, 8, (*size, 3)), 0, 255)
        path = folder / f"{i:05d}.{extension}"
        Image.fromarray(pixels.astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def best_of(repeats: int, function) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="files of each kind")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print("| files | kind | mean file size | headers only (s) | verify (s) | full decode (s) |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as root:
        for kind, (extension, size) in KINDS.items():
            paths = write_images(Path(root) / extension / f"{size[0]}x{size[1]}", args.n, extension, size)
            labels = [0] * len(paths)
            kilobytes = np.mean([path.stat().st_size for path in paths]) / 1024
            headers, verify = (
                best_of(args.repeats, lambda v=v: ImageFileDataset(paths, labels, 3, in_memory=False, verify=v))
                for v in (False, True)
            )
            decode = best_of(args.repeats, lambda: all(load_image(path, 3) is not None for path in paths))
            print(f"| {args.n} | {kind} | {kilobytes:.1f} KB | {headers:.2f} | {verify:.2f} | {decode:.2f} |")


if __name__ == "__main__":
    main()
