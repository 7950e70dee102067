"""Specification of image decoding and augmentation checks: a file is either decoded whole or refused with its
path, at setup when asked (``verify``); images past PIL's decompression-bomb limit are refused rather than decoded;
augmentation settings out of range are refused by name when the data module is built."""

import re
import warnings

import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from lit_metric.data.image_folder import ImageFolderDataModule
from lit_metric.data.reid import ReIDDataModule
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


# Augmentation settings out of range are refused when the data module is built, naming the transform and argument.


@pytest.mark.parametrize(
    ("transform", "message"),
    [
        (lambda: v2.RandomCrop((14, 12), padding=-2), "RandomCrop's `padding` must be >= 0, got [-2, -2, -2, -2]"),
        (lambda: v2.RandomCrop(0), "RandomCrop's `size` must be >= 1, got (0, 0)"),
        (lambda: v2.Pad([2, -1]), "Pad's `padding` must be >= 0, got [2, -1]"),
        (lambda: v2.RandomResizedCrop(8, scale=(0.9, 0.5)), "RandomResizedCrop's `scale` must be (min, max) with 0 < min <= max <= 1, got (0.9, 0.5)"),
        (lambda: v2.RandomResizedCrop(8, scale=(0.5, 1.5)), "RandomResizedCrop's `scale` must be (min, max) with 0 < min <= max <= 1, got (0.5, 1.5)"),
        (lambda: v2.RandomResizedCrop(8, ratio=(-1, 1)), "RandomResizedCrop's `ratio` must be (min, max) with 0 < min <= max, got (-1, 1)"),
        (lambda: v2.RandomErasing(scale=(0.3, 0.1)), "RandomErasing's `scale` must be (min, max) with min <= max <= 1, got (0.3, 0.1)"),
        (lambda: v2.RandomErasing(ratio=(3.0, 0.3)), "RandomErasing's `ratio` must be (min, max) with 0 < min <= max, got (3.0, 0.3)"),
        (lambda: v2.RandomErasing(value=2.0), "RandomErasing's `value` must be in [0, 1], the range of the images it erases, got [2.0]"),
        (lambda: v2.RandomAffine(0, scale=(1.2, 0.9)), "RandomAffine's `scale` must be (min, max) with min <= max, got (1.2, 0.9)"),
    ],
)
@pytest.mark.parametrize(
    "nest", [lambda t: t, lambda t: v2.Compose([v2.RandomHorizontalFlip(), v2.RandomApply([t])])], ids=["alone", "nested"]
)
@pytest.mark.filterwarnings("ignore:Scale and ratio should be of kind")  # torchvision's warning, short of refusing
def test_augmentation_out_of_range_is_refused_naming_the_transform_and_argument(orl_faces, transform, message, nest):
    with pytest.raises(ValueError, match=re.escape(f"`augmentation`: {message}")):
        ImageFolderDataModule(root=str(orl_faces), augmentation=nest(transform()))


def test_the_re_id_data_module_checks_its_augmentation_too(viper_root):
    with pytest.raises(ValueError, match=re.escape("`augmentation`: RandomErasing's `value` must be in [0, 1]")):
        ReIDDataModule(root=str(viper_root), augmentation=v2.RandomErasing(value=(0.5, 0.5, 1.5)))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: v2.RandomHorizontalFlip(p=1.5), "`p` should be a floating point value in the interval [0.0, 1.0]"),
        (lambda: v2.ColorJitter(brightness=-0.1), "If brightness is a single number, it must be non negative"),
        (lambda: v2.ColorJitter(hue=0.7), "hue values should be between (-0.5, 0.5)"),
        (lambda: v2.RandomAffine(0, translate=(1.5, 0)), "translation values should be between 0 and 1"),
        (lambda: v2.RandomErasing(scale=(0.1, 1.5)), "Scale should be between 0 and 1"),
    ],
)
def test_torchvision_refuses_the_other_ranges_itself_when_the_transform_is_built(build, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build()


def test_augmentation_in_range_is_accepted_and_unset_values_are_not_checked(orl_faces):
    within = v2.Compose([
        v2.RandomCrop((14, 12), padding=2), v2.RandomResizedCrop((14, 12), scale=(0.8, 1.0)),
        v2.RandomErasing(scale=(0.02, 0.2), value="random"), v2.RandomAffine(0, translate=(0.1, 0.1)),
    ])
    assert ImageFolderDataModule(root=str(orl_faces), augmentation=within).augmentation is within
