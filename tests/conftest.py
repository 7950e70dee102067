"""Tiny generated image data sets in the layouts lit_metric reads: class folders, VIPeR and Market-1501."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_image(path: Path, size: tuple[int, int], mode: str = "L", seed: int = 0) -> Path:
    """Write a ``size`` = ``(H, W)`` image of random pixels around a level set by ``seed``, so classes differ; the
    format follows the file extension."""
    rng = np.random.default_rng(seed)
    shape = size if mode == "L" else (*size, 3)
    level = 40 + (seed * 37) % 160
    pixels = np.clip(level + rng.normal(0, 25, shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(name="write_image")
def write_image_fixture():
    """:func:`write_image`, for tests that build their own broken layouts."""
    return write_image


@pytest.fixture(scope="session")
def orl_faces(tmp_path_factory) -> Path:
    """ORL layout ``sN/M.pgm``: 40 people ``s1``..``s40`` with 5 greyscale 14x12 images each."""
    root = tmp_path_factory.mktemp("att_faces")
    for person in range(1, 41):
        for shot in range(1, 6):
            write_image(root / f"s{person}" / f"{shot}.pgm", (14, 12), seed=person)
    (root / "README").write_text("not an image, ignored")
    return root


@pytest.fixture
def mixed_folder(tmp_path) -> Path:
    """One class per image format, greyscale and RGB, of different sizes; plus a stray text file."""
    root = tmp_path / "mixed"
    formats = {
        "cat": ("pgm", "L"), "dog": ("png", "RGB"), "eel": ("jpg", "RGB"), "fox": ("bmp", "L"), "gnu": ("gif", "L")
    }
    for seed, (name, (ext, mode)) in enumerate(formats.items()):
        for shot in range(4):
            write_image(root / name / f"{shot}.{ext}", (10 + shot, 8), mode=mode, seed=seed)
    (root / "cat" / "notes.txt").write_text("not an image, ignored")
    return root


@pytest.fixture(scope="session")
def viper_root(tmp_path_factory) -> Path:
    """VIPeR layout: 72 people, one RGB 32x12 bmp per camera, ``cam_a/NNN_ANGLE.bmp`` and ``cam_b/NNN_ANGLE.bmp``."""
    root = tmp_path_factory.mktemp("viper")
    for person in range(72):
        write_image(root / "cam_a" / f"{person:03d}_0.bmp", (32, 12), "RGB", seed=person)
        write_image(root / "cam_b" / f"{person:03d}_90.bmp", (32, 12), "RGB", seed=person)
    return root


MARKET_GALLERY_PEOPLE = (101, 102, 103)
MARKET_FILES = {
    "bounding_box_train": [f"{pid:04d}_c{cam}s1_{pid:06d}_0{cam}.jpg" for pid in range(1, 17) for cam in (1, 2)],
    "query": [f"{pid:04d}_c1s1_{pid:06d}_01.jpg" for pid in MARKET_GALLERY_PEOPLE],
    "bounding_box_test": [
        # The first image of each person shares the query's camera: the metric leaves it out of the search.
        *(f"{pid:04d}_c{cam}s2_{pid:06d}_01.jpg" for pid in MARKET_GALLERY_PEOPLE for cam in (1, 2, 3)),
        "0000_c1s1_000400_01.jpg",  # distractors: gallery only
        "0000_c2s1_000401_01.jpg",
        "-1_c1s1_000500_01.jpg",  # junk: dropped
    ],
}


@pytest.fixture(scope="session")
def market_root(tmp_path_factory) -> Path:
    """Market-1501 layout: 16 training people, 3 queries, 9 gallery images of them, 2 distractors, 1 junk."""
    root = tmp_path_factory.mktemp("market1501")
    for folder, names in MARKET_FILES.items():
        for name in names:
            write_image(root / folder / name, (32, 16), "RGB", seed=int(name.split("_")[0]) % 100)
        (root / folder / "Thumbs.db").write_bytes(b"not an image, ignored")
    return root


@pytest.fixture(scope="session")
def test_resnet_weights(tmp_path_factory) -> Path:
    """A state dict of timm's 370k-parameter ``test_resnet``, classifier included, as ``torch.save`` writes one."""
    import timm
    import torch

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "test_resnet.pt"
    torch.save(timm.create_model("test_resnet").state_dict(), path)
    return path


def write_cub200(root: Path, per_class: int = 2) -> Path:
    """CUB-200-2011 layout: ``images/NNN.Bird_N/`` folders of 8x8 jpgs, ``images.txt`` and
    ``image_class_labels.txt``."""
    index, labels = [], []
    for label in range(1, 201):
        for shot in range(per_class):
            path = f"{label:03d}.Bird_{label}/Bird_{label}_{shot}.jpg"
            write_image(root / "images" / path, (8, 8), "RGB", seed=label)
            index.append(f"{len(index) + 1} {path}")
            labels.append(f"{len(labels) + 1} {label}")
    (root / "images.txt").write_text("\n".join(index) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    return root


def write_cars196(root: Path, per_class: int = 2) -> Path:
    """Cars196 layout: ``car_ims/NNNNNN.jpg`` 8x8 jpgs and their ``cars_annos.mat`` annotations."""
    import scipy.io

    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    rows = []
    for label in range(1, 197):
        for shot in range(per_class):
            path = f"car_ims/{len(rows) + 1:06d}.jpg"
            write_image(root / path, (8, 8), "RGB", seed=label)
            rows.append((path, 0, 0, 7, 7, label, shot % 2))
    annotations = np.array(rows, dtype=[(field, object) for field in fields]).reshape(1, -1)
    scipy.io.savemat(root / "cars_annos.mat", {"annotations": annotations})
    return root


def write_sop(root: Path, classes: int = 12, per_class: int = 2) -> Path:
    """Stanford Online Products layout: ``Ebay_train.txt`` with classes 1..classes/2, ``Ebay_test.txt`` with the
    others, and their 8x8 jpgs under ``bicycle_final/``."""
    rows = {"train": [], "test": []}
    image = 0
    for label in range(1, classes + 1):
        for shot in range(per_class):
            image += 1
            path = f"bicycle_final/{label}_{shot}.JPG"
            write_image(root / path, (8, 8), "RGB", seed=label)
            rows["train" if label <= classes // 2 else "test"].append(f"{image} {label} 1 {path}")
    for part, lines in rows.items():
        (root / f"Ebay_{part}.txt").write_text("\n".join(["image_id class_id super_class_id path", *lines]) + "\n")
    return root


@pytest.fixture(scope="session")
def cub_root(tmp_path_factory) -> Path:
    return write_cub200(tmp_path_factory.mktemp("CUB_200_2011"))


@pytest.fixture(scope="session")
def cars_root(tmp_path_factory) -> Path:
    return write_cars196(tmp_path_factory.mktemp("cars196"))


@pytest.fixture(scope="session")
def sop_root(tmp_path_factory) -> Path:
    return write_sop(tmp_path_factory.mktemp("Stanford_Online_Products"))
