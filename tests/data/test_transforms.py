"""Specification of image decoding: a file is either decoded whole or refused with its path, at setup when asked
(``verify``), and images past PIL's decompression-bomb limit are refused rather than decoded."""

import re
import warnings

import pytest
import torch
from PIL import Image

from lit_metric.data.transforms import image_size_of, image_tensor, load_image


def truncated(path, write_image, size=(32, 24), mode="RGB"):
    """A ``size`` image file cut to 60% of its bytes: the header is whole, the pixel data is not."""
    write_image(path, size, mode)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    return path


@pytest.mark.parametrize("suffix", [".jpg", ".bmp", ".pgm"])
def test_a_truncated_file_passes_the_header_read_and_fails_verification_by_name(tmp_path, write_image, suffix):
    path = truncated(tmp_path / f"cut{suffix}", write_image, mode="L")
    assert image_size_of(path) == (32, 24)  # the header alone does not show it
    with pytest.raises(ValueError, match=re.escape(f"cannot read image '{path}': image file is truncated")):
        image_size_of(path, verify=True)
    with pytest.raises(ValueError, match=re.escape(f"cannot read image '{path}'")):
        load_image(path)


def test_verification_refuses_what_decoding_would_refuse(tmp_path):
    path = tmp_path / "counts.tiff"
    Image.fromarray(torch.full((4, 4), 70000, dtype=torch.int32).numpy()).save(path)
    with pytest.raises(ValueError, match=re.escape(f"cannot read image '{path}': its pixels (PIL mode 'I') must be")):
        image_size_of(path, verify=True)


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".bmp"])
def test_verification_gives_the_header_s_size_of_a_whole_file(tmp_path, write_image, suffix):
    path = write_image(tmp_path / f"whole{suffix}", (40, 16), "RGB")
    assert image_size_of(path, verify=True) == image_size_of(path) == (40, 16)
    assert load_image(path, 3).shape == (3, 40, 16)  # verification leaves the file decodable at full size


# 16x16 = 256 pixels: over a limit of 200 only PIL's warning fires, over 100 its error.
@pytest.mark.parametrize("limit", [200, 100])
@pytest.mark.parametrize("read", [load_image, image_size_of, lambda path: image_size_of(path, verify=True)])
def test_images_past_pil_s_decompression_bomb_limit_are_refused_by_name(tmp_path, write_image, monkeypatch, limit, read):
    path = write_image(tmp_path / "bomb.png", (16, 16))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing may get through as a mere warning either
        with pytest.raises(ValueError, match=re.escape(f"cannot read image '{path}'") + ".*PIL.Image.MAX_IMAGE_PIXELS"):
            read(path)


def test_a_pil_image_is_prepared_as_its_file_is(tmp_path, write_image):
    path = write_image(tmp_path / "face.png", (20, 12), "RGB", seed=3)
    with Image.open(path) as image:
        for channels, size in ((1, None), (3, None), (3, (10, 6))):
            assert torch.equal(image_tensor(image, channels, size), load_image(path, channels, size))
