"""Image decoding with PIL, which reads PGM and BMP too (torchvision's decoders do not); augmentation and
normalisation are torchvision's ``transforms.v2``."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps
from torch import Tensor, nn
from torchvision.transforms import v2

__all__ = ["check_augmentation", "image_size_of", "image_tensor", "load_image"]

# PIL opens 16-bit greyscale PNG, PGM and TIFF files in these modes; "I" also holds 32-bit integers, but PIL scales
# PGM files of any maxval to the 16-bit range in it, so the 16-bit range is what its pixels mean.
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
# EXIF orientations under which the stored image is displayed turned by a quarter, its sides swapped.
_QUARTER_TURNS = (5, 6, 7, 8)


def load_image(path: str | Path, channels: int = 1, size: tuple[int, int] | None = None) -> Tensor:
    """Decode any PIL-readable image file to a ``(channels, H, W)`` uint8 tensor, as :func:`image_tensor` says.

    Raises:
        ValueError: naming ``path`` when PIL cannot decode the file, when it has more pixels than PIL's guard
            against decompression bombs allows (``PIL.Image.MAX_IMAGE_PIXELS``), or when :func:`image_tensor`
            refuses its pixels.
    """
    with _opened(path) as image:
        return image_tensor(image, channels, size)


def image_tensor(image: Image.Image, channels: int = 1, size: tuple[int, int] | None = None) -> Tensor:
    """A PIL image as a ``(channels, H, W)`` uint8 tensor, prepared as every lit_metric data set prepares images.

    The image is turned upright as its EXIF orientation says (phone and camera photos store it sideways), and
    16-bit greyscale images are rescaled from ``[0, 65535]`` to ``[0, 255]``.

    Args:
        image: the image.
        channels: 1 converts to greyscale, 3 to RGB, whatever the image stores (palette, alpha, grey, 16 bits).
        size: ``(H, W)`` to resize to (bilinear, antialiased); ``None`` keeps the image's size.

    Raises:
        ValueError: when the pixels are floating point (PIL mode "F"), which have no standard range, or 32-bit
            integers outside ``[0, 65535]``.
    """
    image = _as_8_bit(ImageOps.exif_transpose(image)).convert("L" if channels == 1 else "RGB")
    if size is not None and image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    pixels = np.array(image, dtype=np.uint8)
    # numpy's transpose copy: torch's permute().contiguous() of uint8 took 26 ms for 256x256x3 on 2 busy cores.
    pixels = pixels[None] if pixels.ndim == 2 else np.ascontiguousarray(pixels.transpose(2, 0, 1))
    return torch.from_numpy(pixels)


def image_size_of(path: str | Path, verify: bool = False) -> tuple[int, int]:
    """``(H, W)`` of an image file, upright as its EXIF orientation says, from its header alone.

    With ``verify``, every pixel is decoded too, so that a file whose header is valid but whose data is truncated
    or corrupt fails here rather than when it is first drawn; JPEG files are decoded at 1/8 scale, which reads all
    of their data at a fraction of the cost.

    Raises:
        ValueError: naming ``path`` when PIL does not recognise the file as an image, when it has more pixels than
            ``PIL.Image.MAX_IMAGE_PIXELS`` allows, or, with ``verify``, when its pixels cannot be decoded or
            :func:`load_image` would refuse them.
    """
    with _opened(path) as image:
        width, height = image.size
        if image.getexif().get(ExifTags.Base.Orientation) in _QUARTER_TURNS:
            width, height = height, width
        if verify:
            image.draft(None, (1, 1))
            _as_8_bit(image).load()
    return height, width


def check_augmentation(augmentation: nn.Module | None) -> None:
    """Refuse the settings of torchvision ``transforms.v2`` that torchvision accepts but that fail at the first
    training image or quietly do something else, naming the transform and the argument.

    torchvision itself refuses, naming the argument, a probability ``p`` outside ``[0, 1]``, ``ColorJitter``
    factors out of range, ``RandomAffine`` translations outside ``[0, 1]`` and scales that are not positive, and
    ``RandomErasing`` scales outside ``[0, 1]``. Checked here, inside ``Compose``, ``RandomApply``,
    ``RandomChoice`` and ``RandomOrder`` too:

    - ``RandomCrop``: ``size`` >= 1 and ``padding`` >= 0; ``Pad``: ``padding`` >= 0.
    - ``RandomResizedCrop``: ``scale``, the area kept, with ``0 < min <= max <= 1``; ``ratio`` with
      ``0 < min <= max``.
    - ``RandomErasing``: ``scale`` with ``min <= max``, ``ratio`` with ``0 < min <= max``, and ``value`` in
      ``[0, 1]``, the range of the images it erases.
    - ``RandomAffine``: ``scale`` with ``min <= max``.

    Raises:
        ValueError: naming ``augmentation``, the transform and its argument.
    """
    if augmentation is None:
        return
    for inner in getattr(augmentation, "transforms", None) or []:
        check_augmentation(inner)
    name = type(augmentation).__name__
    if isinstance(augmentation, v2.RandomCrop):
        _check_at_least(name, "size", augmentation.size, 1)
        _check_at_least(name, "padding", augmentation.padding, 0)
    elif isinstance(augmentation, v2.Pad):
        _check_at_least(name, "padding", augmentation.padding, 0)
    elif isinstance(augmentation, v2.RandomResizedCrop):
        _check_range(name, "scale", augmentation.scale, upper=1)
        _check_range(name, "ratio", augmentation.ratio)
    elif isinstance(augmentation, v2.RandomErasing):
        _check_range(name, "scale", augmentation.scale, lower=None, upper=1)
        _check_range(name, "ratio", augmentation.ratio)
        if augmentation.value is not None and not all(0 <= v <= 1 for v in augmentation.value):
            raise ValueError(
                f"`augmentation`: {name}'s `value` must be in [0, 1], the range of the images it erases, "
                f"got {augmentation.value}"
            )
    elif isinstance(augmentation, v2.RandomAffine) and augmentation.scale is not None:
        _check_range(name, "scale", augmentation.scale, lower=None)


def _check_at_least(name: str, argument: str, value: object, minimum: int) -> None:
    """``value``, a number, a sequence of them or ``None`` (unset), is at least ``minimum``."""
    values = [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]
    if any(v < minimum for v in values):
        raise ValueError(f"`augmentation`: {name}'s `{argument}` must be >= {minimum}, got {value}")


def _check_range(name: str, argument: str, value: object, lower: float | None = 0, upper: float | None = None) -> None:
    """``value`` is ``(min, max)`` with ``min <= max``, ``lower < min`` and ``max <= upper`` where those are set."""
    low, high = value
    if low > high or (lower is not None and low <= lower) or (upper is not None and high > upper):
        bounds = f"{lower} < " if lower is not None else ""
        bounds += "min <= max" + (f" <= {upper}" if upper is not None else "")
        raise ValueError(f"`augmentation`: {name}'s `{argument}` must be (min, max) with {bounds}, got {tuple(value)}")


def _as_8_bit(image: Image.Image) -> Image.Image:
    """``image`` with 16-bit greyscale pixels rescaled to 8 bits, which PIL's ``convert`` would clip to 255 instead."""
    if image.mode == "F":
        raise ValueError("its pixels are floating point (PIL mode 'F'), of no standard range; save it in 8 or 16 bits")
    if image.mode not in _SIXTEEN_BIT_MODES:
        return image
    pixels = np.asarray(image, dtype=np.int64)
    if pixels.min() < 0 or pixels.max() > 65535:
        raise ValueError(
            f"its pixels (PIL mode {image.mode!r}) must be in [0, 65535], got [{pixels.min()}, {pixels.max()}]"
        )
    return Image.fromarray(np.rint(pixels * (255 / 65535)).astype(np.uint8))


@contextmanager
def _opened(path: str | Path) -> Iterator[Image.Image]:
    """The PIL image of ``path``; any failure to open or decode it, inside the block too, is a ValueError naming
    ``path``, and so is a file of more pixels than ``PIL.Image.MAX_IMAGE_PIXELS``, which PIL only warns about."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(path)
        with opened as image:
            yield image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ValueError(
            f"cannot read image {str(path)!r}: {error} PIL refuses images of more than PIL.Image.MAX_IMAGE_PIXELS "
            f"({Image.MAX_IMAGE_PIXELS}) pixels; raise that limit if the file is trusted"
        ) from error
    except (OSError, ValueError, SyntaxError) as error:
        raise ValueError(f"cannot read image {str(path)!r}: {error}") from error
