"""Image decoding with PIL, which reads PGM and BMP too (torchvision's decoders do not); augmentation and
normalisation are torchvision's ``transforms.v2``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps
from torch import Tensor

__all__ = ["image_size_of", "load_image"]

# PIL opens 16-bit greyscale PNG, PGM and TIFF files in these modes; "I" also holds 32-bit integers, but PIL scales
# PGM files of any maxval to the 16-bit range in it, so the 16-bit range is what its pixels mean.
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
# EXIF orientations under which the stored image is displayed turned by a quarter, its sides swapped.
_QUARTER_TURNS = (5, 6, 7, 8)


def load_image(path: str | Path, channels: int = 1, size: tuple[int, int] | None = None) -> Tensor:
    """Decode any PIL-readable image file to a ``(channels, H, W)`` uint8 tensor.

    The image is turned upright as its EXIF orientation says (phone and camera photos store it sideways), and
    16-bit greyscale images are rescaled from ``[0, 65535]`` to ``[0, 255]``.

    Args:
        path: the image file.
        channels: 1 converts to greyscale, 3 to RGB, whatever the file stores (palette, alpha, grey, 16 bits).
        size: ``(H, W)`` to resize to (bilinear, antialiased); ``None`` keeps the file's size.

    Raises:
        ValueError: naming ``path`` when PIL cannot decode the file, when its pixels are floating point (PIL mode
            "F"), which have no standard range, or when its 32-bit integer pixels are outside ``[0, 65535]``.
    """
    with _opened(path) as image:
        image = _as_8_bit(ImageOps.exif_transpose(image)).convert("L" if channels == 1 else "RGB")
        if size is not None and image.size != (size[1], size[0]):
            image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        array = np.array(image, dtype=np.uint8)
    tensor = torch.from_numpy(array)
    return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()


def image_size_of(path: str | Path) -> tuple[int, int]:
    """``(H, W)`` of an image file, upright as its EXIF orientation says, from its header alone, without decoding
    the pixels.

    Raises:
        ValueError: naming ``path`` when PIL does not recognise the file as an image.
    """
    with _opened(path) as image:
        width, height = image.size
        if image.getexif().get(ExifTags.Base.Orientation) in _QUARTER_TURNS:
            width, height = height, width
    return height, width


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
    ``path``."""
    try:
        with Image.open(path) as image:
            yield image
    except (OSError, ValueError, SyntaxError) as error:
        raise ValueError(f"cannot read image {str(path)!r}: {error}") from error
