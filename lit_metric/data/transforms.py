"""Image decoding with PIL and image augmentation with plain torch ops, so that no torchvision is needed."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import ExifTags, Image, ImageOps
from torch import Tensor, nn

__all__ = ["Normalize", "RandomAugment", "image_size_of", "load_image"]

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


class RandomAugment(nn.Module):
    """Random crop-and-resize, horizontal flip, brightness and contrast of one ``(C, H, W)`` image in ``[0, 1]``.

    A module, so that configs can give it, or any other image module, as ``class_path`` and chain several with
    ``torch.nn.Sequential``. Draws from torch's global generator, which Lightning seeds and each data loader worker
    reseeds.

    Args:
        crop_scale: smallest side of the random crop as a fraction of the image side; the crop is resized back to
            the full size, so it both shifts and zooms. 1 disables cropping.
        flip: mirror left-right with probability 1/2.
        brightness: largest shift added to every pixel.
        contrast: largest relative change of the spread around the image mean.
    """

    def __init__(
        self, crop_scale: float = 0.85, flip: bool = True, brightness: float = 0.2, contrast: float = 0.2
    ) -> None:
        super().__init__()
        if not 0 < crop_scale <= 1:
            raise ValueError(f"`crop_scale` must be in (0, 1], got {crop_scale}")
        if brightness < 0 or contrast < 0:
            raise ValueError(f"`brightness` and `contrast` must be >= 0, got {brightness} and {contrast}")
        self.crop_scale = crop_scale
        self.flip = flip
        self.brightness = brightness
        self.contrast = contrast

    def forward(self, image: Tensor) -> Tensor:
        """``(C, H, W)`` image to an augmented ``(C, H, W)`` image, clamped to ``[0, 1]``."""
        _, height, width = image.shape
        if self.crop_scale < 1:
            scale = self.crop_scale + (1 - self.crop_scale) * float(torch.rand(()))
            crop_h, crop_w = max(1, round(height * scale)), max(1, round(width * scale))
            top = int(torch.randint(height - crop_h + 1, ()))
            left = int(torch.randint(width - crop_w + 1, ()))
            crop = image[None, :, top : top + crop_h, left : left + crop_w]
            image = F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False)[0]
        if self.flip and bool(torch.rand(()) < 0.5):
            image = image.flip(-1)
        if self.contrast > 0:
            factor = 1 + self.contrast * (2 * float(torch.rand(())) - 1)
            mean = image.mean()
            image = (image - mean) * factor + mean
        if self.brightness > 0:
            image = image + self.brightness * (2 * float(torch.rand(())) - 1)
        return image.clamp(0, 1)

    def extra_repr(self) -> str:
        return f"crop_scale={self.crop_scale}, flip={self.flip}, brightness={self.brightness}, contrast={self.contrast}"


class Normalize(nn.Module):
    """``(image - mean) / std`` per channel of a ``(C, H, W)`` image.

    Args:
        mean: one value per channel.
        std: one value per channel, each ``> 0``.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"`mean` and `std` must have one value per channel, got {list(mean)} and {list(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"`std` must be > 0, got {list(std)}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1))

    def forward(self, image: Tensor) -> Tensor:
        """``(C, H, W)`` image to a normalised ``(C, H, W)`` image."""
        return (image - self.mean) / self.std
