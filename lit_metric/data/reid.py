"""Person re-identification data (VIPeR, Market-1501): identities and cameras per image, query/gallery evaluation."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.utils.data import DataLoader

from lit_metric.data.image_folder import (
    ImageFileDataset,
    image_files,
    log_split,
    natural_key,
    preprocessing_for,
    resolve_root,
    transforms_for,
)
from lit_metric.data.loaders import eval_loader, pk_train_loader
from lit_metric.data.samplers import check_pk_labels

__all__ = ["ReIDDataModule", "ReIDImage", "read_splits", "scan_market1501", "scan_viper", "viper_split"]

VIPER_CAMERAS = ("cam_a", "cam_b")
VIPER_SPLITS = 10
MARKET_FOLDERS = ("bounding_box_train", "query", "bounding_box_test")
MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)")
MARKET_JUNK = -1
MARKET_DISTRACTOR = 0


@dataclass(frozen=True)
class ReIDImage:
    """One image file of a person re-ID data set: who it shows and which camera took it."""

    path: Path
    identity: str
    camera: int


def scan_viper(root: Path) -> list[ReIDImage]:
    """The images of ``root/cam_a`` (camera 0) and ``root/cam_b`` (camera 1); the identity is the file name up to
    its first ``_`` (``000_45.bmp`` shows person ``000``).

    Raises:
        FileNotFoundError: when a camera folder is missing.
        ValueError: when a camera folder has no images, or the identities of the two cameras differ.
    """
    images = []
    for camera, name in enumerate(VIPER_CAMERAS):
        folder = root / name
        if not folder.is_dir():
            raise FileNotFoundError(f"VIPeR camera folder {str(folder)!r} does not exist; expected {VIPER_CAMERAS}")
        files = image_files(folder)
        if not files:
            raise ValueError(f"VIPeR camera folder {str(folder)!r} has no image files")
        images += [ReIDImage(path, path.stem.split("_")[0], camera) for path in files]
    ids_a, ids_b = ({image.identity for image in images if image.camera == c} for c in (0, 1))
    if ids_a != ids_b:
        only_a, only_b = sorted(ids_a - ids_b, key=natural_key), sorted(ids_b - ids_a, key=natural_key)
        raise ValueError(
            f"VIPeR cameras in {str(root)!r} do not pair up by identity prefix: "
            f"only in cam_a: {only_a[:10]}, only in cam_b: {only_b[:10]}"
        )
    return images


def viper_split(identities: Sequence[str], split_index: int, seed: int) -> tuple[list[str], list[str]]:
    """``(train, test)`` identities of the ``split_index``-th of the 10 random halvings that ``seed`` draws.

    The standard protocol halves VIPeR's 632 people into 316 for training and 316 for testing, 10 times.
    """
    if not 0 <= split_index < VIPER_SPLITS:
        raise ValueError(f"`split_index` must be in [0, {VIPER_SPLITS}), got {split_index}")
    generator = torch.Generator().manual_seed(seed)
    orders = [torch.randperm(len(identities), generator=generator).tolist() for _ in range(VIPER_SPLITS)]
    order, half = orders[split_index], len(identities) // 2
    train = sorted((identities[i] for i in order[:half]), key=natural_key)
    test = sorted((identities[i] for i in order[half:]), key=natural_key)
    return train, test


@dataclass(frozen=True)
class ReIDSplit:
    """The training images and the query and gallery images of one evaluation split."""

    train: list[ReIDImage]
    query: list[ReIDImage]
    gallery: list[ReIDImage]


def read_splits(path: Path, images: Sequence[ReIDImage]) -> list[ReIDSplit]:
    """The splits of a JSON splits file over ``images``, in one of two forms, each a list with one entry per split:

    - torchreid's ``splits.json``: ``{"train": [[path, pid, camid], ...], "query": [...], "gallery": [...]}``.
      Each path is matched to an image by its camera folder and file name (``cam_a/000_45.bmp``), so files written
      on another machine work; pids and camids are ignored in favour of the file names.
    - identity lists: ``{"train": ["000", ...], "test": ["001", ...]}``; test people are queried from camera 0
      against camera 1, as in VIPeR's protocol.

    Raises:
        FileNotFoundError: naming ``splits`` when the file is missing.
        ValueError: naming ``splits`` and the entry when the file is not such a list, names an image or identity
            that the data set does not have, or trains on a person it also tests on.
    """
    if not path.is_file():
        raise FileNotFoundError(f"`splits` file {str(path)!r} does not exist")
    try:
        entries = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"`splits` file {str(path)!r} is not JSON: {error}") from error
    if not isinstance(entries, list) or not entries or not all(isinstance(entry, dict) for entry in entries):
        raise ValueError(f"`splits` file {str(path)!r} must hold a non-empty list of splits, one object each")
    return [_split_of(entry, images, f"`splits` file {str(path)!r}, split {index}") for index, entry in enumerate(entries)]


def _split_of(entry: dict, images: Sequence[ReIDImage], where: str) -> ReIDSplit:
    if {"train", "query", "gallery"} <= entry.keys():
        by_file = {(image.path.parent.name, image.path.name): image for image in images}
        roles = [_matched(entry[role], by_file, f"{where}, {role!r}") for role in ("train", "query", "gallery")]
        split = ReIDSplit(*roles)
    elif {"train", "test"} <= entry.keys():
        people = {image.identity for image in images}
        train, test = (_identities(entry[role], people, f"{where}, {role!r}") for role in ("train", "test"))
        split = _split_by_identity(images, train, test)
    else:
        raise ValueError(f"{where} must have keys 'train', 'query' and 'gallery', or 'train' and 'test'; got {sorted(entry)}")
    overlap = sorted(set(_people(split.train)) & set(_people(split.query + split.gallery)), key=natural_key)
    if overlap:
        raise ValueError(f"{where} trains on people it also tests on: {overlap[:10]}")
    if not split.train or not split.query or not split.gallery:
        raise ValueError(f"{where} must name training, query and gallery images, got none of one of them")
    return split


def _split_by_identity(images: Sequence[ReIDImage], train: set[str], test: set[str]) -> ReIDSplit:
    """VIPeR's protocol: ``train`` people's images for training, ``test`` people queried from camera 0 against 1."""
    return ReIDSplit(
        [image for image in images if image.identity in train],
        [image for image in images if image.identity in test and image.camera == 0],
        [image for image in images if image.identity in test and image.camera == 1],
    )


def _people(images: Sequence[ReIDImage]) -> list[str]:
    return sorted({image.identity for image in images}, key=natural_key)


def _matched(rows: object, by_file: dict[tuple[str, str], ReIDImage], where: str) -> list[ReIDImage]:
    if not isinstance(rows, list):
        raise ValueError(f"{where} must be a list of [path, pid, camid] rows, got {type(rows).__name__}")
    matched = []
    for row in rows:
        file = Path(str(row[0] if isinstance(row, list) and row else row))
        image = by_file.get((file.parent.name, file.name))
        if image is None:
            raise ValueError(f"{where} names {str(file)!r}, which is not an image of the data set")
        matched.append(image)
    return matched


def _identities(names: object, people: set[str], where: str) -> set[str]:
    if not isinstance(names, list):
        raise ValueError(f"{where} must be a list of identities, got {type(names).__name__}")
    unknown = sorted({str(name) for name in names} - people, key=natural_key)
    if unknown:
        raise ValueError(f"{where} names identities that the data set does not have: {unknown[:10]}")
    return {str(name) for name in names}


def scan_market1501(folder: Path) -> list[ReIDImage]:
    """The images of one Market-1501 folder, named ``PID_cCsS_FRAME_BOX.jpg``, without the junk (``PID`` -1).

    Raises:
        FileNotFoundError: when ``folder`` is missing.
        ValueError: naming the first file whose name does not follow the pattern, or when no image is left.
    """
    if not folder.is_dir():
        raise FileNotFoundError(f"Market-1501 folder {str(folder)!r} does not exist; expected {MARKET_FOLDERS}")
    images = []
    for path in image_files(folder):
        match = MARKET_NAME.match(path.name)
        if match is None:
            raise ValueError(
                f"Market-1501 image {str(path)!r} does not follow the name pattern PID_cCAMERAsSEQ_FRAME_BOX.jpg, "
                "e.g. 0002_c1s1_000451_03.jpg"
            )
        if int(match[1]) != MARKET_JUNK:
            images.append(ReIDImage(path, match[1], int(match[2])))
    if not images:
        raise ValueError(f"Market-1501 folder {str(folder)!r} has no images of identified people")
    return images


def _is_distractor(image: ReIDImage) -> bool:
    return int(image.identity) == MARKET_DISTRACTOR


class ReIDDataModule(L.LightningDataModule):
    """Person re-ID data: training on some identities, query-against-gallery retrieval on the others.

    Evaluation items carry ``"camera"``, ``"is_query"`` and ``"is_gallery"``, so that the retrieval metric
    searches the gallery for each query and skips gallery images of the query's identity from the query's camera.
    The one evaluation set serves validation, test and predict. Layouts:

    - ``"viper"``: ``root/cam_a/*.bmp`` and ``root/cam_b/*.bmp``, paired by the identity prefix of the file name
      (``000_45.bmp``). ``seed`` draws the standard 10 random halvings of the identities (316 train, 316 test for
      VIPeR's 632) and ``split_index`` picks one; test identities are queried from cam_a against cam_b. The split
      is kept in :attr:`split` and logged to the trainer's logger under ``data_split``. A ``splits`` file fixes
      the splits instead (:func:`read_splits`), e.g. torchreid's ``splits.json``, to reproduce published ones.
    - ``"market1501"``: ``root/bounding_box_train`` for training, ``root/query`` against ``root/bounding_box_test``
      for evaluation, with names like ``0002_c1s1_000451_03.jpg`` (identity 0002, camera 1). Junk images
      (identity -1) are dropped; distractors (identity 0) stay in the gallery only.

    Args:
        root: the data set folder. ``None`` reads it from the environment variable ``root_env``.
        root_env: environment variable that gives ``root`` when ``root`` is ``None``.
        layout: ``"viper"`` or ``"market1501"``; ``None`` tells them apart by their folders.
        split_index: which split: 0 to 9 of the seeded VIPeR halvings, or an index into the ``splits`` file.
        splits: a JSON file of fixed splits for the VIPeR layout (:func:`read_splits`), or ``None`` to draw them.
        image_size: ``(H, W)`` every image is resized to; ``None`` takes the model's
            (:func:`~lit_metric.data.image_folder.preprocessing_for`), else keeps the files' common size (VIPeR
            128x48, Market-1501 128x64).
        channels: 3 reads images as RGB, 1 as greyscale; ``None`` takes the model's, else 3.
        mean: per-channel mean subtracted after augmentation; ``None`` takes the model's, else none.
        std: per-channel standard deviation divided by, given with ``mean``; ``None`` takes the model's.
        augmentation: applied to each ``(C, H, W)`` float training image in ``[0, 1]``, e.g. a torchvision
            ``transforms.v2.Compose``; it draws from torch's global generator, which Lightning seeds.
        classes_per_batch: P, identities in each training batch.
        samples_per_class: K, images of each identity in each training batch (VIPeR has 2).
        replacement: let the sampler repeat images of identities with fewer than K.
        eval_batch_size: batch size for validation, test and predict.
        num_workers: data loader workers.
        in_memory: decode all images once at setup instead of at every fetch (Market-1501 is about 1 GB as
            uint8; keep it on disk).
        verify: without ``in_memory``, decode every image once at setup to check it, so that a corrupt file fails
            there, named, rather than when training first draws it; ``false`` reads only the headers.
        seed: seed of the VIPeR splits and of the sampler.
    """

    def __init__(
        self,
        root: str | None = None,
        root_env: str | None = None,
        layout: Literal["viper", "market1501"] | None = None,
        split_index: int = 0,
        splits: str | None = None,
        image_size: tuple[int, int] | None = None,
        channels: Literal[1, 3] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        augmentation: nn.Module | None = None,
        classes_per_batch: int = 16,
        samples_per_class: int = 4,
        replacement: bool = False,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        in_memory: bool = True,
        verify: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if layout not in (None, "viper", "market1501"):
            raise ValueError(f"`layout` must be 'viper', 'market1501' or None, got {layout!r}")
        if splits is None and not 0 <= split_index < VIPER_SPLITS:
            raise ValueError(f"`split_index` must be in [0, {VIPER_SPLITS}), got {split_index}")
        if channels not in (None, 1, 3):
            raise ValueError(f"`channels` must be 1, 3 or None, got {channels}")
        self.root = resolve_root(root, root_env)
        self.layout = layout if layout is not None else self._detect_layout()
        if splits is not None and self.layout != "viper":
            raise ValueError(f"`splits` applies to the 'viper' layout, got layout {self.layout!r}")
        self.save_hyperparameters(ignore=["augmentation"])
        self.hparams["root"] = str(self.root)
        self.hparams["layout"] = self.layout
        self.augmentation = augmentation
        self.train_transforms, self.eval_transforms = transforms_for(augmentation, mean, std)
        self.split: dict[str, object] = {}
        self.preprocessing: dict = {}
        self.train_set: ImageFileDataset | None = None
        self.eval_set: ImageFileDataset | None = None

    def _detect_layout(self) -> str:
        if any((self.root / name).is_dir() for name in VIPER_CAMERAS):
            return "viper"
        if any((self.root / name).is_dir() for name in MARKET_FOLDERS):
            return "market1501"
        raise ValueError(
            f"cannot tell the layout of {str(self.root)!r}: it has neither VIPeR's {VIPER_CAMERAS} nor "
            f"Market-1501's {MARKET_FOLDERS} folders; set `layout`"
        )

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        hp = self.hparams
        self.preprocessing = preprocessing_for(self, default_channels=3)
        self.train_transforms, self.eval_transforms = transforms_for(
            self.augmentation, self.preprocessing["mean"], self.preprocessing["std"]
        )
        if self.layout == "viper":
            train, query, gallery = self._viper_split(scan_viper(self.root))
        else:
            train, query, gallery = (scan_market1501(self.root / name) for name in MARKET_FOLDERS)
            # Distractors belong to no one, so they are neither learned nor searched for, only found by mistake.
            train = [image for image in train if not _is_distractor(image)]
            query = [image for image in query if not _is_distractor(image)]
            self.split = {
                "layout": "market1501",
                "train_ids": len({image.identity for image in train}),
                "train_images": len(train),
                "query_images": len(query),
                "gallery_images": len(gallery),
            }
        train_names = sorted({image.identity for image in train}, key=natural_key)
        rank_zero_info(
            f"{self.layout} split: {len(train_names)} training identities ({len(train)} images), "
            f"{len(query)} queries against {len(gallery)} gallery images"
        )
        log_split(self, self.split)

        train_labels = self._labels(train, train_names)
        check_pk_labels(
            train_labels, hp.classes_per_batch, hp.samples_per_class, hp.replacement, train_names, "the training split"
        )
        self.train_set = self._dataset(train, train_labels, self.train_transforms)
        evaluated, is_query = _interleaved(query, gallery)
        eval_names = sorted({image.identity for image in evaluated}, key=natural_key)
        eval_labels = self._labels(evaluated, eval_names)
        flags = {"is_query": is_query, "is_gallery": ~is_query}
        self.eval_set = self._dataset(evaluated, eval_labels, self.eval_transforms, **flags)

    def _viper_split(self, images: list[ReIDImage]) -> tuple[list[ReIDImage], ...]:
        hp = self.hparams
        if hp.splits is None:
            train_ids, test_ids = viper_split(_people(images), hp.split_index, hp.seed)
            split = _split_by_identity(images, set(train_ids), set(test_ids))
        else:
            splits = read_splits(Path(hp.splits), images)
            if not 0 <= hp.split_index < len(splits):
                raise ValueError(
                    f"`split_index` must be in [0, {len(splits)}) for the {len(splits)} splits of {hp.splits!r}, "
                    f"got {hp.split_index}"
                )
            split = splits[hp.split_index]
        self.split = {
            "layout": "viper",
            "split_index": hp.split_index,
            "seed": hp.seed,
            "splits": hp.splits,
            "train_ids": _people(split.train),
            "test_ids": _people(split.query + split.gallery),
        }
        return split.train, split.query, split.gallery

    @staticmethod
    def _labels(images: Sequence[ReIDImage], names: Sequence[str]) -> torch.Tensor:
        label_of = {name: label for label, name in enumerate(names)}
        return torch.tensor([label_of[image.identity] for image in images], dtype=torch.long)

    def _dataset(
        self, images: Sequence[ReIDImage], labels: torch.Tensor, transforms: Sequence[nn.Module], **flags: torch.Tensor
    ) -> ImageFileDataset:
        cameras = torch.tensor([image.camera for image in images], dtype=torch.long)
        return ImageFileDataset(
            [image.path for image in images],
            labels,
            channels=self.preprocessing["channels"],
            image_size=self.preprocessing["image_size"],
            transforms=transforms,
            extras={"camera": cameras, **flags},
            in_memory=self.hparams.in_memory,
            verify=self.hparams.verify,
        )

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        return pk_train_loader(
            self.train_set, hp.classes_per_batch, hp.samples_per_class, hp.replacement, hp.seed, hp.num_workers
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader()

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader()

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader()

    def _eval_loader(self) -> DataLoader:
        return eval_loader(self.eval_set, self.hparams.eval_batch_size, self.hparams.num_workers)


def _interleaved(query: list[ReIDImage], gallery: list[ReIDImage]) -> tuple[list[ReIDImage], torch.Tensor]:
    """Queries and gallery images in one list, each role spread evenly over it, and the ``is_query`` flags: every
    prefix, such as the batches that ``limit_val_batches`` keeps, then holds both roles in proportion."""
    spread = [((i + 0.5) / len(query), i) for i in range(len(query))]
    spread += [((i + 0.5) / len(gallery), len(query) + i) for i in range(len(gallery))]
    order = [position for _, position in sorted(spread)]
    images = query + gallery
    return [images[position] for position in order], torch.tensor(order) < len(query)
