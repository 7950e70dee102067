"""The standard deep metric learning benchmarks in their usual layouts: image files by class, and their split.

Each reader checks its index files and labels and returns a :class:`Benchmark`; :class:`BenchmarkDataModule` is
:class:`~lit_metric.data.ImageFolderDataModule` with such a reader and its fixed split: the literature's, in which
the unseen classes are retrieved.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import scipy.io
from torch import nn

from lit_metric.data.image_folder import ImageFolderDataModule, image_files, natural_key

__all__ = ["BENCHMARKS", "Benchmark", "BenchmarkDataModule", "read_cars196", "read_cub200", "read_sop"]

CUB_CLASSES = 200
CARS_CLASSES = 196


@dataclass(frozen=True)
class Benchmark:
    """Image files by class, and which classes train and which are retrieved.

    Attributes:
        files: class name (its id as written in the index files) to its image files, in class order.
        train: the training classes.
        test: the evaluation classes, unseen in training.
    """

    files: dict[str, list[Path]]
    train: list[str]
    test: list[str]


def read_cub200(root: Path) -> Benchmark:
    """CUB-200-2011 (``CUB_200_2011/``): classes 1-100 train (5,864 images), 101-200 are retrieved (5,924).

    Read from ``images.txt`` (``<image id> <path under images/>``) and ``image_class_labels.txt``
    (``<image id> <class id>``); without either, from the folder layout ``images/NNN.Name/*.jpg``, whose 200
    folders in natural order are classes 1 to 200.

    Raises:
        FileNotFoundError: naming the index file that is missing while the other is there, or the ``images``
            folder when neither is there.
        ValueError: naming the file and line of a label outside 1-200 or an image without one, or a folder layout
            without 200 class folders.
    """
    index, labels_file = root / "images.txt", root / "image_class_labels.txt"
    if not index.is_file() and not labels_file.is_file():
        return _cub_folders(root / "images")
    paths = {image: root / "images" / path for _, (image, path) in _numbered(_existing(index), 2)}
    labels = {
        image: _label(value, CUB_CLASSES, f"{str(labels_file)!r} line {line}")
        for line, (image, value) in _numbered(_existing(labels_file), 2)
    }
    unlabelled = sorted(set(paths) - set(labels), key=natural_key)
    if unlabelled:
        raise ValueError(f"{str(labels_file)!r} gives no class to the images {unlabelled[:5]} of {str(index)!r}")
    return _halves(_grouped((labels[image], path) for image, path in paths.items()), CUB_CLASSES)


def _cub_folders(images: Path) -> Benchmark:
    if not images.is_dir():
        raise FileNotFoundError(
            f"CUB-200-2011 needs images.txt and image_class_labels.txt, or the class folders of {str(images)!r}; "
            "found neither"
        )
    folders = sorted(
        (p for p in images.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: natural_key(p.name)
    )
    if len(folders) != CUB_CLASSES:
        raise ValueError(f"CUB-200-2011 folder {str(images)!r} must hold {CUB_CLASSES} class folders, got {len(folders)}")
    items = ((label, path) for label, folder in enumerate(folders, 1) for path in image_files(folder))
    return _halves(_grouped(items), CUB_CLASSES)


def read_cars196(root: Path) -> Benchmark:
    """Cars196 (Stanford Cars, all 16,185 images): classes 1-98 train (8,054 images), 99-196 are retrieved (8,131).

    Read from ``cars_annos.mat``, the annotations of the full release with ``car_ims/``, as the deep metric
    learning literature uses it: each annotation's ``relative_im_path`` (``car_ims/000001.jpg``) and ``class``;
    its ``test`` flag belongs to the classification split and is ignored.

    Raises:
        FileNotFoundError: naming ``cars_annos.mat`` when it is missing.
        ValueError: naming the annotation whose class is outside 1-196, or a file without annotations.
    """
    path = _existing(root / "cars_annos.mat")
    annotations = scipy.io.loadmat(str(path), squeeze_me=True).get("annotations")
    fields = set(getattr(getattr(annotations, "dtype", None), "names", None) or ())
    if not {"relative_im_path", "class"} <= fields:
        raise ValueError(f"{str(path)!r} must hold `annotations` with the fields relative_im_path and class")
    items = (
        (_label(annotation["class"], CARS_CLASSES, f"{str(path)!r} annotation {number}"),
         root / str(annotation["relative_im_path"]))
        for number, annotation in enumerate(annotations.reshape(-1), 1)
    )
    return _halves(_grouped(items), CARS_CLASSES)


def read_sop(root: Path) -> Benchmark:
    """Stanford Online Products (``Stanford_Online_Products/``): ``Ebay_train.txt`` lists the 59,551 training
    images of 11,318 products, ``Ebay_test.txt`` the 60,502 retrieved images of the 11,316 others.

    Both have a header and then ``image_id class_id super_class_id path`` rows, the path under ``root``.

    Raises:
        FileNotFoundError: naming the index file that is missing.
        ValueError: naming the file and line of a class id below 1, or the classes that both files hold.
    """
    parts = {}
    for part in ("train", "test"):
        path = _existing(root / f"Ebay_{part}.txt")
        rows = list(_numbered(path, 4))[1:]  # after the header
        parts[part] = _grouped((_label(row[1], None, f"{str(path)!r} line {line}"), root / row[3]) for line, row in rows)
    shared = sorted(set(parts["train"]) & set(parts["test"]), key=int)
    if shared:
        raise ValueError(f"Ebay_train.txt and Ebay_test.txt of {str(root)!r} share the classes {shared[:5]}")
    return Benchmark({**parts["train"], **parts["test"]}, list(parts["train"]), list(parts["test"]))


BENCHMARKS: dict[str, Callable[[Path], Benchmark]] = {"cub200": read_cub200, "cars196": read_cars196, "sop": read_sop}


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"index file {str(path)!r} does not exist")
    return path


def _numbered(path: Path, columns: int) -> Iterable[tuple[int, list[str]]]:
    """``(line number, fields)`` of the non-empty lines of a whitespace-separated file with ``columns`` fields."""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != columns:
            raise ValueError(f"{str(path)!r} line {number} must have {columns} fields, got {line!r}")
        yield number, fields


def _label(value: object, classes: int | None, where: str) -> int:
    """A class id in ``1..classes`` (any positive one for ``None``), or a ValueError naming ``where`` it is."""
    text = str(value)
    label = int(text) if text.isdigit() else 0
    if label < 1 or (classes is not None and label > classes):
        bound = f"1-{classes}" if classes is not None else "1 or more"
        raise ValueError(f"{where}: class {value!r} is outside {bound}")
    return label


def _grouped(items: Iterable[tuple[int, Path]]) -> dict[str, list[Path]]:
    """Files by class name (the id), classes and each class's files in order."""
    files: dict[str, list[Path]] = {}
    for label, path in sorted(items, key=lambda item: (item[0], natural_key(str(item[1])))):
        files.setdefault(str(label), []).append(path)
    return files


def _halves(files: dict[str, list[Path]], classes: int) -> Benchmark:
    """Classes ``1..classes/2`` train, the others are retrieved."""
    train = [name for name in files if int(name) <= classes // 2]
    return Benchmark(files, train, [name for name in files if int(name) > classes // 2])


class BenchmarkDataModule(ImageFolderDataModule):
    """CUB-200-2011, Cars196 or Stanford Online Products, read from their usual layouts, split as in the literature.

    The training classes are sampled in P x K batches; the evaluation classes serve validation, test and predict,
    each image querying all the others (leave-one-out). See :func:`read_cub200`, :func:`read_cars196` and
    :func:`read_sop` for the files each needs; missing index files and labels out of range fail at setup, named.

    Args:
        benchmark: ``"cub200"``, ``"cars196"`` or ``"sop"``.
        root: the data set folder (``CUB_200_2011``, the folder of ``cars_annos.mat`` and ``car_ims``, or
            ``Stanford_Online_Products``). ``None`` reads it from the environment variable ``root_env``.
        in_memory: decode all images once at setup; off by default, as these sets are several GB as pixels.

    The other arguments are those of :class:`~lit_metric.data.ImageFolderDataModule`, whose class split the
    benchmark replaces.
    """

    def __init__(
        self,
        benchmark: Literal["cub200", "cars196", "sop"],
        root: str | None = None,
        root_env: str | None = None,
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
        in_memory: bool = False,
        verify: bool = True,
        seed: int = 0,
    ) -> None:
        if benchmark not in BENCHMARKS:
            raise ValueError(f"`benchmark` must be one of {sorted(BENCHMARKS)}, got {benchmark!r}")
        super().__init__(
            root=root,
            root_env=root_env,
            image_size=image_size,
            channels=channels,
            mean=mean,
            std=std,
            augmentation=augmentation,
            classes_per_batch=classes_per_batch,
            samples_per_class=samples_per_class,
            replacement=replacement,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            in_memory=in_memory,
            verify=verify,
            seed=seed,
        )
        self.benchmark = benchmark

    def _scan(self) -> dict[str, list[Path]]:
        self._read = BENCHMARKS[self.benchmark](self.root)
        return self._read.files

    def _split_classes(self) -> dict[str, list[str]]:
        return {"train": self._read.train, "val": self._read.test, "test": self._read.test}
