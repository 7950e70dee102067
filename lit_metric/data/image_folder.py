"""Image files on disk as lit_metric data: one sub-folder per class, split by class into train and evaluation."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from lit_metric.data.loaders import eval_loader, pk_train_loader
from lit_metric.data.samplers import check_pk_labels
from lit_metric.data.transforms import check_augmentation, image_size_of, load_image

__all__ = ["ImageFileDataset", "ImageFolderDataModule", "natural_key", "preprocessing_for", "resolve_root"]

Transform = Callable[[Tensor], Tensor]
ClassSpec = str | Sequence[str] | None
SPLIT_PARTS = ("train", "val", "test")
PREPROCESSING = ("channels", "image_size", "mean", "std")


class ImageFileDataset(Dataset):
    """Image files with labels and optional per-item extras such as re-ID cameras and query/gallery flags.

    Items are dicts ``{"image": (C, H, W) float, "label": (), "index": (), **extras}``; ``index`` is the position
    in this data set. Pixels are in ``[0, 1]`` before ``transforms``.

    Every file is checked when the data set is built, so that an unreadable image fails at setup, named by its
    path: ``in_memory`` decodes all of them once into a uint8 tensor; otherwise each item is decoded when it is
    fetched, and ``verify`` decodes every file once beforehand (:func:`~lit_metric.data.transforms.image_size_of`),
    without keeping the pixels. A file that fails when it is fetched, e.g. changed on disk since, is named too.

    Args:
        paths: the image files.
        labels: the class of every file.
        channels: 1 (greyscale) or 3 (RGB).
        image_size: ``(H, W)`` that every image is resized to; ``None`` requires all files to share one size.
        transforms: applied in order to each ``(C, H, W)`` float image, e.g. augmentation then normalisation.
        extras: ``(N,)`` tensors added to the items under their key, e.g. ``{"camera": ...}``.
        in_memory: decode all images at construction instead of at every fetch.
        verify: without ``in_memory``, decode every file at construction to check it, rather than only its header.
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        labels: Sequence[int] | Tensor,
        channels: int = 1,
        image_size: tuple[int, int] | None = None,
        transforms: Sequence[Transform] = (),
        extras: Mapping[str, Tensor] | None = None,
        in_memory: bool = True,
        verify: bool = True,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise ValueError("`paths` is empty: a data set needs at least one image file")
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        if self.labels.shape != (len(self.paths),):
            raise ValueError(f"`labels` must have shape ({len(self.paths)},), got shape {tuple(self.labels.shape)}")
        self.extras = dict(extras or {})
        for key, values in self.extras.items():
            if len(values) != len(self.paths):
                raise ValueError(f"`extras[{key!r}]` must have {len(self.paths)} values, got {len(values)}")
        self.channels = channels
        self.image_size = image_size
        self.transforms = list(transforms)
        self.images: Tensor | None = None
        if in_memory:
            images = [load_image(path, channels, image_size) for path in self.paths]
            self._check_one_size([tuple(image.shape[1:]) for image in images])
            self.images = torch.stack(images)
        else:
            sizes = [image_size_of(path, verify) for path in self.paths]
            if image_size is None:
                self._check_one_size(sizes)

    def _check_one_size(self, sizes: list[tuple[int, int]]) -> None:
        for path, size in zip(self.paths, sizes):
            if size != sizes[0]:
                raise ValueError(
                    f"image {str(path)!r} is {size} (H, W) but {str(self.paths[0])!r} is {sizes[0]}; "
                    "set `image_size` to resize all images to one size"
                )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Tensor | str]:
        if self.images is not None:
            image = self.images[index]
        else:
            image = load_image(self.paths[index], self.channels, self.image_size)
        image = image.float() / 255
        for transform in self.transforms:
            image = transform(image)
        item = {
            "image": image,
            "label": self.labels[index],
            "index": torch.tensor(index),
            "path": str(self.paths[index]),
        }
        item.update({key: values[index] for key, values in self.extras.items()})
        return item


def natural_key(name: str) -> tuple:
    """Sort key that orders digit runs by value, so that ``s2`` comes before ``s10``; names of equal value (``s1``,
    ``s01``) then go by the name itself, so that the order never depends on the file system's."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)), name


def image_files(folder: Path) -> list[Path]:
    """The files in ``folder`` whose extension PIL can open, in natural order; other files and hidden ones (macOS'
    ``._1.pgm`` metadata) are ignored."""
    extensions = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    images = [p for p in _visible(folder) if p.is_file() and p.suffix.lower() in extensions]
    return sorted(images, key=lambda p: natural_key(p.name))


def _visible(folder: Path) -> list[Path]:
    """The entries of ``folder`` whose names do not start with a dot: hidden ones are tool state, such as
    ``.ipynb_checkpoints``, not data."""
    return [p for p in folder.iterdir() if not p.name.startswith(".")]


def resolve_root(root: str | Path | None, root_env: str | None) -> Path:
    """``root``, or else the path in the environment variable ``root_env``; it must be an existing folder."""
    source = "`root`"
    if root is None:
        if not root_env or not os.environ.get(root_env):
            hint = f" or set the environment variable {root_env}" if root_env else ""
            raise ValueError(f"`root` is not set: pass the data folder as `root` (--data.init_args.root PATH){hint}")
        root, source = os.environ[root_env], f"the environment variable {root_env}"
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"data folder {str(path)!r} (from {source}) does not exist or is not a folder")
    return path


def transforms_for(augmentation: nn.Module | None, mean: Sequence[float] | None, std: Sequence[float] | None):
    """The training and evaluation transform lists: augmentation only in training, normalisation in both.

    Raises:
        ValueError: naming ``mean`` and ``std`` when they do not match or ``std`` is not positive, and naming
            ``augmentation`` when :func:`~lit_metric.data.transforms.check_augmentation` refuses it.
    """
    check_augmentation(augmentation)
    if (mean is None) != (std is None):
        raise ValueError("`mean` and `std` must be given together, or neither")
    normalize = []
    if mean is not None:
        # Checked here, at construction: torchvision checks `std` only when the first image arrives, and not its sign.
        if len(mean) != len(std):
            raise ValueError(f"`mean` and `std` must have one value per channel, got {list(mean)} and {list(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"`std` must be > 0, got {list(std)}")
        normalize = [v2.Normalize(mean, std)]
    augment = [augmentation] if augmentation is not None else []
    return augment + normalize, normalize


def preprocessing_for(datamodule: L.LightningDataModule, default_channels: int) -> dict:
    """The data module's ``channels``, ``image_size``, ``mean`` and ``std``, with those its config leaves ``None``
    taken from the ``preprocessing`` of the model it feeds (:attr:`~lit_metric.MetricLearningModule.preprocessing`).

    Read at setup, when the trainer has attached both: then a config may still set its own values, and networks
    that declare no preprocessing leave the settings as they are; ``channels`` then defaults to ``default_channels``.

    Raises:
        ValueError: naming the setting whose value differs from the model's, or ``mean`` and ``std`` whose
            length is not the number of channels.
    """
    settings = {key: datamodule.hparams[key] for key in PREPROCESSING}
    declared = getattr(getattr(datamodule.trainer, "lightning_module", None), "preprocessing", None)
    taken = [key for key in PREPROCESSING if declared and settings[key] is None]
    for key in PREPROCESSING:
        if key in taken:
            settings[key] = declared[key]
        elif declared and _plain(settings[key]) != _plain(declared[key]):
            # Training on other settings than the checkpoint records would prepare search queries differently.
            raise ValueError(
                f"`{key}` {settings[key]} differs from the model's preprocessing, {declared[key]}: leave it unset "
                "to take the model's, or change the network's (e.g. BackboneEmbedder's `image_size`)"
            )
    if settings["channels"] is None:
        settings["channels"] = default_channels
    for key in ("mean", "std"):
        if settings[key] is not None and len(settings[key]) != settings["channels"]:
            raise ValueError(
                f"`{key}` must have one value per channel ({settings['channels']}), got {list(settings[key])}"
            )
    if taken:
        rank_zero_info(f"From the model's preprocessing: {', '.join(f'{key}={settings[key]}' for key in taken)}")
    return settings


def _plain(value: object) -> object:
    return list(value) if isinstance(value, (list, tuple)) else value


def log_split(datamodule: L.LightningDataModule, split: Mapping[str, object]) -> None:
    """Record a data split in the trainer's logger, when the data module is attached to a trainer with one."""
    trainer = datamodule.trainer
    if trainer is not None and trainer.logger is not None:
        trainer.logger.log_hyperparams({"data_split": dict(split)})


class ImageFolderDataModule(L.LightningDataModule):
    """A folder with one sub-folder of images per class, e.g. the ORL faces ``root/sN/M.pgm`` or CUB-200.

    Classes are the sub-folders, ordered naturally (``s2`` before ``s10``); images are the files in them that PIL
    has a format for (pgm, bmp, png, jpg, gif, ...); other files are ignored. The split is by class, so retrieval
    is evaluated on classes never seen in training. Choose it either by name or by fraction:

    - by name: ``train_classes``, ``val_classes`` and ``test_classes`` each take a list of folder names and
      inclusive ranges ``"first..last"`` in natural order, e.g. ``"s1..s20"`` or ``["s1..s5", "s9"]``. Training
      defaults to the classes in neither evaluation part; validation to the test classes, or else to the classes
      not in training; testing to the validation classes, so that naming two parts gives one evaluation set for
      validation, test and predict.
    - by fraction, when no names are given: a ``seed``-ed shuffle of the classes puts ``val_fraction`` of them in
      validation and ``test_fraction`` in test (``0``: test on the validation classes), the rest in training.

    Training batches are P x K class-balanced with optional ``augmentation``; evaluation batches are in folder
    order without it.

    Args:
        root: the folder of class folders. ``None`` reads it from the environment variable ``root_env``.
        root_env: environment variable that gives ``root`` when ``root`` is ``None``.
        train_classes: training classes by name, see above.
        val_classes: validation classes by name.
        test_classes: test classes by name.
        val_fraction: share of the classes in validation when none are named.
        test_fraction: share of the classes in test when none are named.
        image_size: ``(H, W)`` every image is resized to; ``None`` takes the model's (:func:`preprocessing_for`),
            else keeps the files' common size.
        channels: 1 reads images as greyscale, 3 as RGB, whatever their format; ``None`` takes the model's, else 1.
        mean: per-channel mean subtracted after augmentation; ``None`` takes the model's, else none.
        std: per-channel standard deviation divided by, given with ``mean``; ``None`` takes the model's.
        augmentation: applied to each ``(C, H, W)`` float training image in ``[0, 1]``, e.g. a torchvision
            ``transforms.v2.Compose``; it draws from torch's global generator, which Lightning seeds.
        classes_per_batch: P, classes in each training batch.
        samples_per_class: K, images of each class in each training batch.
        replacement: let the sampler repeat images of classes with fewer than K.
        eval_batch_size: batch size for validation, test and predict.
        num_workers: data loader workers.
        in_memory: decode all images once at setup (small data sets) instead of at every fetch.
        verify: without ``in_memory``, decode every image once at setup to check it, so that a corrupt file fails
            there, named, rather than when training first draws it; ``false`` reads only the headers.
        seed: seed of the fraction split and of the sampler.
    """

    def __init__(
        self,
        root: str | None = None,
        root_env: str | None = None,
        train_classes: ClassSpec = None,
        val_classes: ClassSpec = None,
        test_classes: ClassSpec = None,
        val_fraction: float = 0.5,
        test_fraction: float = 0.0,
        image_size: tuple[int, int] | None = None,
        channels: Literal[1, 3] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        augmentation: nn.Module | None = None,
        classes_per_batch: int = 8,
        samples_per_class: int = 4,
        replacement: bool = False,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        in_memory: bool = True,
        verify: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if channels not in (None, 1, 3):
            raise ValueError(f"`channels` must be 1, 3 or None, got {channels}")
        if not 0 < val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
            raise ValueError(
                "`val_fraction` must be in (0, 1) and `test_fraction` in [0, 1), with a sum below 1, "
                f"got {val_fraction} and {test_fraction}"
            )
        self.root = resolve_root(root, root_env)
        self.save_hyperparameters(ignore=["augmentation"])
        self.hparams["root"] = str(self.root)
        self.augmentation = augmentation
        self.train_transforms, self.eval_transforms = transforms_for(augmentation, mean, std)
        self.classes: list[str] = []
        self.split: dict[str, list[str]] = {}
        self.preprocessing: dict = {}
        self.train_set: ImageFileDataset | None = None
        self.val_set: ImageFileDataset | None = None
        self.test_set: ImageFileDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.preprocessing = preprocessing_for(self, default_channels=1)
        self.train_transforms, self.eval_transforms = transforms_for(
            self.augmentation, self.preprocessing["mean"], self.preprocessing["std"]
        )
        files = self._scan()
        self.classes = list(files)
        self.split = self._split_classes()
        log_split(self, self.split)
        label_of = {name: label for label, name in enumerate(self.classes)}
        train_labels = [label_of[name] for name in self.split["train"] for _ in files[name]]
        hp = self.hparams
        # Fail at setup, naming the folders, rather than when the training loader is built.
        check_pk_labels(
            torch.tensor(train_labels),
            hp.classes_per_batch,
            hp.samples_per_class,
            hp.replacement,
            self.classes,
            "the training split",
        )
        datasets = {}
        for part in dict.fromkeys(map(tuple, self.split.values())):
            paths = [path for name in part for path in files[name]]
            labels = [label_of[name] for name in part for _ in files[name]]
            is_train = part == tuple(self.split["train"])
            datasets[part] = ImageFileDataset(
                paths,
                labels,
                channels=self.preprocessing["channels"],
                image_size=self.preprocessing["image_size"],
                transforms=self.train_transforms if is_train else self.eval_transforms,
                in_memory=hp.in_memory,
                verify=hp.verify,
            )
        self.train_set = datasets[tuple(self.split["train"])]
        self.val_set = datasets[tuple(self.split["val"])]
        self.test_set = datasets[tuple(self.split["test"])]

    def _scan(self) -> dict[str, list[Path]]:
        """Class name -> its image files in natural order."""
        folders = sorted((p for p in _visible(self.root) if p.is_dir()), key=lambda p: natural_key(p.name))
        if not folders:
            raise ValueError(f"data folder {str(self.root)!r} has no class sub-folders")
        files = {}
        for folder in folders:
            images = image_files(folder)
            if not images:
                raise ValueError(f"class folder {str(folder)!r} has no image files")
            files[folder.name] = images
        return files

    def _split_classes(self) -> dict[str, list[str]]:
        """``{"train": [...], "val": [...], "test": [...]}`` class names, checked to be class-disjoint."""
        hp = self.hparams
        if hp.train_classes is None and hp.val_classes is None and hp.test_classes is None:
            order = torch.randperm(len(self.classes), generator=torch.Generator().manual_seed(hp.seed)).tolist()
            shuffled = [self.classes[i] for i in order]
            n_val = max(1, round(hp.val_fraction * len(shuffled)))
            n_test = max(1, round(hp.test_fraction * len(shuffled))) if hp.test_fraction > 0 else 0
            val = shuffled[:n_val]
            test = shuffled[n_val : n_val + n_test] if n_test else val
            train = shuffled[n_val + n_test :]
        else:
            train = self._names("train_classes", hp.train_classes)
            val = self._names("val_classes", hp.val_classes)
            test = self._names("test_classes", hp.test_classes)
            val = val or test or [c for c in self.classes if c not in set(train)]
            test = test or val
            train = train or [c for c in self.classes if c not in set(val) | set(test)]
        split = {part: sorted(names, key=self.classes.index) for part, names in zip(SPLIT_PARTS, (train, val, test))}
        for part, names in split.items():
            if not names:
                raise ValueError(f"the {part} split has no classes; name some or change the fractions")
        shared = set(split["train"]) & (set(split["val"]) | set(split["test"]))
        if shared:
            raise ValueError(
                f"the split is not class-disjoint: {sorted(shared, key=natural_key)} are in training and evaluation"
            )
        return split

    def _names(self, argument: str, spec: ClassSpec) -> list[str]:
        """Class names from a list of names and ``"first..last"`` ranges; ``[]`` for ``None``."""
        if spec is None:
            return []
        names: list[str] = []
        for entry in [spec] if isinstance(spec, str) else spec:
            first, dots, last = str(entry).partition("..")
            for name in (first, last) if dots else (first,):
                if name not in self.classes:
                    raise ValueError(
                        f"`{argument}` names {name!r}, which is not a class folder of {str(self.root)!r}; "
                        f"classes are {self.classes[:5]}{' ...' if len(self.classes) > 5 else ''}"
                    )
            start, stop = self.classes.index(first), self.classes.index(last if dots else first)
            if stop < start:
                raise ValueError(f"`{argument}` range {entry!r} is empty: {last!r} comes before {first!r}")
            names += [c for c in self.classes[start : stop + 1] if c not in names]
        return names

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        return pk_train_loader(
            self.train_set, hp.classes_per_batch, hp.samples_per_class, hp.replacement, hp.seed, hp.num_workers
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_set)

    def _eval_loader(self, dataset: ImageFileDataset) -> DataLoader:
        return eval_loader(dataset, self.hparams.eval_batch_size, self.hparams.num_workers)
