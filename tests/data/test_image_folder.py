"""Specification of ImageFolderDataModule: class folders of any PIL format, split by class, P x K batches."""

import re
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from PIL import ExifTags, Image
from torchvision.transforms import v2

from lit_metric import BackboneEmbedder, ConvEmbedder, MetricLearningModule
from lit_metric.data.image_folder import ImageFileDataset, ImageFolderDataModule, natural_key
from lit_metric.data.transforms import image_size_of, load_image

SMALL_BATCHES = {"classes_per_batch": 2, "samples_per_class": 2}


def augmented_faces(root, **kwargs):
    """The 14x12 test faces, s1..s20 in 4 x 5 training batches, augmented as the shipped configs do but more
    strongly: a crop resized back, a mirror image, brightness and contrast."""
    augmentation = v2.Compose(
        [
            v2.RandomResizedCrop((14, 12), scale=(0.5, 1.0), ratio=(12 / 14, 12 / 14)),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(brightness=0.5, contrast=0.5),
        ]
    )
    datamodule = ImageFolderDataModule(
        root=str(root),
        train_classes="s1..s20",
        augmentation=augmentation,
        classes_per_batch=4,
        samples_per_class=5,
        **kwargs,
    )
    datamodule.setup("fit")
    return datamodule


def names(datamodule, dataset):
    return sorted({datamodule.classes[label] for label in dataset.labels.tolist()})


def test_every_pil_format_is_read_as_greyscale_or_rgb_at_the_configured_size(mixed_folder):
    for channels in (1, 3):
        datamodule = ImageFolderDataModule(
            root=str(mixed_folder), image_size=(12, 10), channels=channels, val_fraction=0.4, **SMALL_BATCHES
        )
        datamodule.setup("fit")
        assert datamodule.classes == ["cat", "dog", "eel", "fox", "gnu"]
        for dataset in (datamodule.train_set, datamodule.val_set):
            for item in dataset:
                assert item["image"].shape == (channels, 12, 10)
                assert item["image"].dtype == torch.float32
                assert 0 <= float(item["image"].min()) <= float(item["image"].max()) <= 1


def test_items_carry_label_position_in_the_dataset_and_file_path(orl_faces):
    datamodule = ImageFolderDataModule(root=str(orl_faces), train_classes="s1..s20")
    datamodule.setup("fit")
    item = datamodule.val_set[7]
    assert set(item) == {"image", "label", "index", "path"}
    assert int(item["index"]) == 7
    assert item["path"] == str(datamodule.val_set.paths[7])
    assert datamodule.classes[int(item["label"])] == "s22"  # five images a person: s22 is at positions 5 to 9


def test_orl_split_by_ranges_trains_on_s1_to_s20_and_evaluates_on_s21_to_s40(orl_faces):
    datamodule = ImageFolderDataModule(root=str(orl_faces), train_classes="s1..s20", val_classes="s21..s40")
    datamodule.setup("fit")
    assert names(datamodule, datamodule.train_set) == sorted(f"s{i}" for i in range(1, 21))
    assert names(datamodule, datamodule.val_set) == sorted(f"s{i}" for i in range(21, 41))
    # With two parts named, validation, test and predict share one evaluation set.
    assert datamodule.test_set is datamodule.val_set
    assert datamodule.split["train"][:3] == ["s1", "s2", "s3"]  # natural order: s2 before s10


def test_naming_the_training_classes_alone_evaluates_on_all_the_others(orl_faces):
    datamodule = ImageFolderDataModule(root=str(orl_faces), train_classes=["s1..s10", "s40"])
    datamodule.setup("fit")
    assert len(datamodule.split["train"]) == 11
    assert datamodule.split["val"] == [f"s{i}" for i in range(11, 40)]
    assert datamodule.split["test"] == datamodule.split["val"]


def test_three_named_parts_are_kept_apart(orl_faces):
    datamodule = ImageFolderDataModule(
        root=str(orl_faces), val_classes=["s31..s35", "s37"], test_classes="s36", train_classes="s1..s30"
    )
    datamodule.setup("fit")
    assert datamodule.split["val"] == ["s31", "s32", "s33", "s34", "s35", "s37"]
    assert names(datamodule, datamodule.test_set) == ["s36"]
    assert len(datamodule.train_set) == 30 * 5


def test_fraction_split_is_class_disjoint_and_reproducible_by_seed(orl_faces):
    def split(seed):
        datamodule = ImageFolderDataModule(root=str(orl_faces), val_fraction=0.25, test_fraction=0.25, seed=seed)
        datamodule.setup("fit")
        return datamodule.split

    first = split(0)
    assert [len(first[part]) for part in ("train", "val", "test")] == [20, 10, 10]
    assert not set(first["train"]) & (set(first["val"]) | set(first["test"]))
    assert not set(first["val"]) & set(first["test"])
    assert split(0) == first
    assert split(1) != first


def test_training_batches_are_p_by_k_and_augmented_evaluation_batches_are_not(orl_faces):
    datamodule = augmented_faces(orl_faces, eval_batch_size=64)
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["image"].shape == (20, 1, 14, 12)
    assert 0 <= float(batch["image"].min()) <= float(batch["image"].max()) <= 1
    assert torch.bincount(batch["label"]).max() == 5 and len(batch["label"].unique()) == 4
    stored = datamodule.train_set.images[batch["index"]].float() / 255
    assert not torch.equal(batch["image"], stored)
    evaluation = next(iter(datamodule.val_dataloader()))
    assert torch.equal(evaluation["image"], datamodule.val_set.images[:64].float() / 255)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_augmentation_draws_from_the_global_seed_in_the_loader_s_workers_too(orl_faces, num_workers):
    def first_batch(seed):
        datamodule = augmented_faces(orl_faces, num_workers=num_workers)
        L.seed_everything(seed, workers=True)  # as `lit-metric fit` does with `seed_everything`
        return next(iter(datamodule.train_dataloader()))

    first, again, other = first_batch(0), first_batch(0), first_batch(1)
    assert torch.equal(first["image"], again["image"])
    # The sampler draws from its own `seed`: the same images, augmented differently.
    assert torch.equal(first["index"], other["index"])
    assert not torch.equal(first["image"], other["image"])


def test_images_read_lazily_equal_images_held_in_memory(mixed_folder):
    eager = ImageFolderDataModule(root=str(mixed_folder), image_size=(12, 10), channels=3, **SMALL_BATCHES)
    lazy = ImageFolderDataModule(
        root=str(mixed_folder), image_size=(12, 10), channels=3, in_memory=False, **SMALL_BATCHES
    )
    for datamodule in (eager, lazy):
        datamodule.setup("fit")
    assert lazy.val_set.images is None
    for index in range(len(eager.val_set)):
        assert torch.equal(lazy.val_set[index]["image"], eager.val_set[index]["image"])


def test_loaders_work_with_worker_processes(orl_faces):
    datamodule = ImageFolderDataModule(
        root=str(orl_faces), train_classes="s1..s20", classes_per_batch=4, samples_per_class=5, num_workers=2
    )
    datamodule.setup("fit")
    assert len(list(datamodule.train_dataloader())) == 5
    assert sum(len(batch["label"]) for batch in datamodule.val_dataloader()) == 100


def test_normalisation_applies_to_training_and_evaluation(orl_faces):
    datamodule = ImageFolderDataModule(root=str(orl_faces), train_classes="s1..s20", mean=[0.5], std=[0.25])
    datamodule.setup("fit")
    raw = datamodule.val_set.images[0].float() / 255
    assert torch.allclose(datamodule.val_set[0]["image"], (raw - 0.5) / 0.25)


def test_root_comes_from_the_environment_variable_when_not_given(orl_faces, monkeypatch):
    monkeypatch.setenv("LIT_METRIC_TEST_FACES", str(orl_faces))
    datamodule = ImageFolderDataModule(root_env="LIT_METRIC_TEST_FACES")
    assert datamodule.root == orl_faces
    assert datamodule.hparams.root == str(orl_faces)


def write_16_bit_ramp(path):
    """An 8x8 ramp of 64 levels over the whole 16-bit range, as a PNG or a binary PGM of maxval 65535."""
    ramp = np.linspace(0, 65535, 64).astype(np.uint16).reshape(8, 8)
    if path.suffix == ".pgm":
        path.write_bytes(b"P5\n8 8\n65535\n" + ramp.astype(">u2").tobytes())
    else:
        Image.fromarray(ramp).save(path)
    return ramp


@pytest.mark.parametrize("suffix", [".png", ".pgm"])
def test_16_bit_images_are_rescaled_to_8_bits_keeping_their_levels(tmp_path, suffix):
    path = tmp_path / f"ramp{suffix}"
    ramp = write_16_bit_ramp(path)
    image = ImageFileDataset([path], [0])[0]["image"]
    assert image.shape == (1, 8, 8)
    assert image.unique().numel() == 64
    assert bool((image.flatten().diff() > 0).all())
    eight_bit = torch.from_numpy(np.rint(ramp / 257)).float() / 255
    assert torch.allclose(image[0], eight_bit, atol=1 / 255)
    assert torch.equal(load_image(path, channels=3), load_image(path).expand(3, -1, -1))


# Bad inputs fail with the argument or the path and what was expected.


def test_missing_root_is_named(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=re.escape(f"data folder '{missing}' (from `root`) does not exist")):
        ImageFolderDataModule(root=str(missing))


def test_missing_root_from_the_environment_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("LIT_METRIC_TEST_FACES", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="from the environment variable LIT_METRIC_TEST_FACES"):
        ImageFolderDataModule(root_env="LIT_METRIC_TEST_FACES")


def test_unset_root_names_the_option_and_the_environment_variable(monkeypatch):
    monkeypatch.delenv("LIT_METRIC_TEST_FACES", raising=False)
    with pytest.raises(ValueError, match=r"root PATH\) or set the environment variable LIT_METRIC_TEST_FACES"):
        ImageFolderDataModule(root_env="LIT_METRIC_TEST_FACES")


@pytest.mark.parametrize(
    ("mean", "std", "message"),
    [
        ([0.5], None, "`mean` and `std` must be given together, or neither"),
        ([0.5, 0.5, 0.5], [0.25], "`mean` and `std` must have one value per channel, got [0.5, 0.5, 0.5] and [0.25]"),
        ([0.5], [0.0], "`std` must be > 0, got [0.0]"),
    ],
)
def test_bad_normalisation_is_named(orl_faces, mean, std, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ImageFolderDataModule(root=str(orl_faces), mean=mean, std=std)


def test_empty_class_folder_is_named(tmp_path, write_image):
    root = tmp_path / "faces"
    write_image(root / "s1" / "1.pgm", (4, 4))
    (root / "s2").mkdir()
    (root / "s2" / "README").write_text("no images here")
    datamodule = ImageFolderDataModule(root=str(root))
    with pytest.raises(ValueError, match=re.escape(f"class folder '{root / 's2'}' has no image files")):
        datamodule.setup("fit")


def test_hidden_folders_and_files_are_not_data(tmp_path, write_image):
    for person in range(1, 5):
        for shot in range(1, 4):
            write_image(tmp_path / f"s{person}" / f"{shot}.pgm", (14, 12), seed=person)
    # Jupyter's checkpoints folder and macOS' metadata files next to the images.
    write_image(tmp_path / ".ipynb_checkpoints" / "1.pgm", (14, 12))
    (tmp_path / "s1" / "._1.pgm").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    datamodule = ImageFolderDataModule(root=str(tmp_path), **SMALL_BATCHES)
    datamodule.setup("fit")
    assert datamodule.classes == ["s1", "s2", "s3", "s4"]
    assert all(not Path(path).name.startswith(".") for path in datamodule.train_set.paths)


def test_unreadable_image_is_named_by_its_path(mixed_folder):
    broken = mixed_folder / "dog" / "broken.png"
    broken.write_bytes(b"this is not a png")
    for in_memory in (True, False):
        datamodule = ImageFolderDataModule(
            root=str(mixed_folder), image_size=(8, 8), in_memory=in_memory, **SMALL_BATCHES
        )
        with pytest.raises(ValueError, match=re.escape(f"cannot read image '{broken}'")):
            datamodule.setup("fit")


def cut(path, write_image):
    """Overwrite the image ``path`` with a 64x48 one cut to 60% of its bytes: its header stays whole, its pixel data
    does not."""
    write_image(path, (64, 48), "RGB")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    return path


def test_a_truncated_image_on_disk_fails_at_setup_named_not_when_first_drawn(mixed_folder, write_image):
    broken = cut(mixed_folder / "eel" / "2.jpg", write_image)
    datamodule = ImageFolderDataModule(root=str(mixed_folder), image_size=(8, 8), in_memory=False, **SMALL_BATCHES)
    with pytest.raises(ValueError, match=re.escape(f"cannot read image '{broken}': ")):
        datamodule.setup("fit")


@pytest.mark.parametrize("verify", [True, False])
def test_an_image_that_breaks_after_setup_is_named_when_drawn(mixed_folder, write_image, monkeypatch, verify):
    datamodule = ImageFolderDataModule(
        root=str(mixed_folder), image_size=(8, 8), in_memory=False, verify=verify, val_fraction=0.4, **SMALL_BATCHES
    )
    datamodule.setup("fit")
    dataset = datamodule.train_set
    broken = cut(dataset.paths[1], write_image)  # changed on disk since setup
    with pytest.raises(ValueError, match=re.escape(f"cannot read image '{broken}': ")):
        dataset[1]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # every image is a decompression bomb now
    with pytest.raises(ValueError, match=re.escape(f"cannot read image '{dataset.paths[0]}'") + ".*MAX_IMAGE_PIXELS"):
        dataset[0]


def test_verify_false_reads_only_headers_at_setup(mixed_folder, write_image):
    broken = cut(mixed_folder / "eel" / "2.jpg", write_image)
    datamodule = ImageFolderDataModule(
        root=str(mixed_folder), image_size=(8, 8), in_memory=False, verify=False, **SMALL_BATCHES
    )
    datamodule.setup("fit")
    (dataset,) = [d for d in (datamodule.train_set, datamodule.val_set) if broken in d.paths]
    with pytest.raises(ValueError, match=re.escape(f"cannot read image '{broken}'")):
        dataset[dataset.paths.index(broken)]


@pytest.mark.parametrize("in_memory", [True, False])
def test_decompression_bombs_are_refused_at_setup_by_name(mixed_folder, write_image, monkeypatch, in_memory):
    bomb = write_image(mixed_folder / "cat" / "4.pgm", (40, 30))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1200 pixels: past PIL's limit, short of twice it
    datamodule = ImageFolderDataModule(root=str(mixed_folder), image_size=(8, 8), in_memory=in_memory, **SMALL_BATCHES)
    with pytest.raises(ValueError, match=re.escape(f"cannot read image '{bomb}'") + r".*MAX_IMAGE_PIXELS \(1000\)"):
        datamodule.setup("fit")


def test_split_leaving_a_class_with_fewer_than_k_images_names_the_class(tmp_path, write_image):
    root = tmp_path / "faces"
    for person in range(1, 5):
        for shot in range(1, 5 if person != 2 else 3):
            write_image(root / f"s{person}" / f"{shot}.pgm", (4, 4))
    datamodule = ImageFolderDataModule(root=str(root), train_classes="s1..s3", classes_per_batch=2, samples_per_class=4)
    with pytest.raises(ValueError, match=re.escape("classes s2 (2) of the training split have fewer than `samples_per_class` = 4 samples")):
        datamodule.setup("fit")
    replaced = ImageFolderDataModule(
        root=str(root), train_classes="s1..s3", classes_per_batch=2, samples_per_class=4, replacement=True
    )
    replaced.setup("fit")
    assert next(iter(replaced.train_dataloader()))["label"].shape == (8,)


def test_split_with_fewer_classes_than_p_is_rejected(orl_faces):
    datamodule = ImageFolderDataModule(root=str(orl_faces), train_classes="s1..s3", classes_per_batch=4)
    with pytest.raises(ValueError, match=re.escape("`classes_per_batch` (4) exceeds the number of classes in the training split (3)")):
        datamodule.setup("fit")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"train_classes": "s1..s99"}, "`train_classes` names 's99', which is not a class folder"),
        ({"val_classes": ["s5", "x"]}, "`val_classes` names 'x', which is not a class folder"),
        ({"train_classes": "s20..s1"}, "`train_classes` range 's20..s1' is empty: 's1' comes before 's20'"),
        ({"train_classes": "s1..s20", "val_classes": "s15..s40"}, "the split is not class-disjoint: ['s15', 's16'"),
    ],
)
def test_bad_class_names_are_rejected_with_the_argument(orl_faces, kwargs, message):
    datamodule = ImageFolderDataModule(root=str(orl_faces), **kwargs)
    with pytest.raises(ValueError, match=re.escape(message)):
        datamodule.setup("fit")


def test_images_of_different_sizes_need_image_size(mixed_folder):
    datamodule = ImageFolderDataModule(root=str(mixed_folder), **SMALL_BATCHES)
    with pytest.raises(ValueError, match=r"is \(11, 8\) \(H, W\) but .* is \(10, 8\); set `image_size`"):
        datamodule.setup("fit")


def test_floating_point_images_are_rejected_for_lack_of_a_standard_range(tmp_path):
    path = tmp_path / "depth.tiff"
    Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32)).save(path)
    with pytest.raises(ValueError, match=re.escape(f"cannot read image '{path}': its pixels are floating point (PIL mode 'F')")):
        load_image(path)


def test_32_bit_images_beyond_the_16_bit_range_are_rejected(tmp_path):
    path = tmp_path / "counts.tiff"
    Image.fromarray(np.full((4, 4), 70000, dtype=np.int32)).save(path)
    with pytest.raises(ValueError, match=re.escape("its pixels (PIL mode 'I') must be in [0, 65535], got [70000, 70000]")):
        load_image(path)


def test_dataset_rejects_labels_that_do_not_match_the_files(orl_faces):
    with pytest.raises(ValueError, match=re.escape("`labels` must have shape (1,), got shape (2,)")):
        ImageFileDataset([orl_faces / "s1" / "1.pgm"], [0, 1])


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_images_are_turned_upright_as_their_exif_orientation_says(tmp_path, suffix):
    pixels = np.arange(6 * 4, dtype=np.uint8).reshape(6, 4) * 10
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # stored turned a quarter counter-clockwise: shown turned clockwise
    path = tmp_path / f"sideways{suffix}"
    Image.fromarray(pixels).save(path, exif=exif, **({"quality": 100} if suffix == ".jpg" else {}))
    assert image_size_of(path) == (4, 6)
    upright = load_image(path)
    assert upright.shape == (1, 4, 6)
    stored = np.asarray(Image.open(path))
    assert torch.equal(upright[0], torch.from_numpy(np.rot90(stored, k=-1).copy()))


def test_load_image_converts_to_the_requested_channels(mixed_folder):
    path = mixed_folder / "dog" / "0.png"
    assert load_image(path, channels=1).shape == (1, 10, 8)
    assert load_image(path, channels=3, size=(5, 4)).dtype == torch.uint8
    assert load_image(path, channels=3, size=(5, 4)).shape == (3, 5, 4)


def test_natural_order_puts_digit_runs_by_value_and_equal_values_by_name():
    names = ["s10", "s01", "s2", "s1", "b"]
    assert sorted(names, key=natural_key) == ["b", "s01", "s1", "s2", "s10"]
    assert sorted(reversed(names), key=natural_key) == sorted(names, key=natural_key)


# The model's preprocessing: settings the config leaves unset come from the network the trainer feeds.


def backbone_module(**kwargs):
    return MetricLearningModule(BackboneEmbedder("test_resnet", embedding_dim=8, image_size=(16, 12), **kwargs))


def test_unset_settings_come_from_the_preprocessing_of_the_model_trained(orl_faces):
    datamodule = ImageFolderDataModule(root=str(orl_faces), train_classes="s1..s20", **SMALL_BATCHES)
    trainer = L.Trainer(max_steps=1, limit_val_batches=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(backbone_module(), datamodule=datamodule)
    half = [0.5, 0.5, 0.5]  # test_resnet's pretrained config
    assert datamodule.preprocessing == {"channels": 3, "image_size": [16, 12], "mean": half, "std": half}
    image = datamodule.val_set[0]["image"]
    raw = load_image(datamodule.val_set.paths[0], 3, (16, 12)).float() / 255
    torch.testing.assert_close(image, (raw - 0.5) / 0.5)


def test_without_a_model_preprocessing_the_defaults_hold(orl_faces):
    datamodule = ImageFolderDataModule(root=str(orl_faces), train_classes="s1..s20")
    datamodule.trainer = SimpleNamespace(lightning_module=MetricLearningModule(ConvEmbedder()), logger=None)
    datamodule.setup("fit")
    assert datamodule.preprocessing == {"channels": 1, "image_size": None, "mean": None, "std": None}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"channels": 1}, r"`channels` 1 differs from the model's preprocessing, 3: leave it unset"),
        ({"image_size": (14, 12)}, r"`image_size` \(14, 12\) differs from the model's preprocessing, \[16, 12\]"),
        ({"mean": [0.4] * 3, "std": [0.5] * 3}, r"`mean` \[0.4, 0.4, 0.4\] differs from the model's"),
    ],
)
def test_a_setting_that_differs_from_the_model_s_preprocessing_is_named(orl_faces, kwargs, match):
    datamodule = ImageFolderDataModule(root=str(orl_faces), train_classes="s1..s20", **kwargs)
    datamodule.trainer = SimpleNamespace(lightning_module=backbone_module(), logger=None)
    with pytest.raises(ValueError, match=match):
        datamodule.setup("fit")


def test_a_mean_of_another_length_than_the_channels_is_named(orl_faces):
    datamodule = ImageFolderDataModule(root=str(orl_faces), train_classes="s1..s20", mean=[0.5] * 3, std=[0.5] * 3)
    with pytest.raises(ValueError, match=r"`mean` must have one value per channel \(1\), got \[0.5, 0.5, 0.5\]"):
        datamodule.setup("fit")
