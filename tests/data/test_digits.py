"""Specification of DigitsDataModule, the embedded default data set."""

import pytest
import torch

from lit_metric.data import DigitsDataModule


def setup(**kwargs):
    datamodule = DigitsDataModule(**kwargs)
    datamodule.setup("fit")
    return datamodule


def test_the_stratified_split_holds_out_thirty_percent_of_every_class():
    datamodule = setup()
    train, held = datamodule.train_set.labels, datamodule.holdout_set.labels
    assert len(train) + len(held) == 1797
    for digit in range(10):
        share = (held == digit).sum() / ((held == digit).sum() + (train == digit).sum())
        assert share == pytest.approx(0.3, abs=0.01)


def test_the_split_is_seeded():
    assert torch.equal(setup(seed=3).holdout_set.images, setup(seed=3).holdout_set.images)
    assert not torch.equal(setup(seed=3).holdout_set.images, setup(seed=4).holdout_set.images)


def test_images_are_one_channel_8x8_in_the_unit_range_with_dataset_indices():
    item = setup().holdout_set[5]
    assert item["image"].shape == (1, 8, 8)
    assert 0 <= item["image"].min() and item["image"].max() <= 1
    assert int(item["index"]) == 5


def test_the_class_disjoint_split_evaluates_on_unseen_digits():
    datamodule = setup(split="class_disjoint", holdout_classes=[7, 8, 9], classes_per_batch=7)
    assert set(datamodule.train_set.labels.tolist()) == set(range(7))
    assert set(datamodule.holdout_set.labels.tolist()) == {7, 8, 9}


def test_training_batches_are_p_classes_times_k_samples():
    datamodule = setup(classes_per_batch=4, samples_per_class=5)
    batch = next(iter(datamodule.train_dataloader()))
    counts = torch.bincount(batch["label"])
    assert sorted(counts[counts > 0].tolist()) == [5, 5, 5, 5]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"split": "stratifed"}, "`split` must be 'stratified' or 'class_disjoint', got 'stratifed'"),
        ({"holdout_fraction": 1.0}, r"`holdout_fraction` must be in \(0, 1\), got 1.0"),
        ({"split": "class_disjoint", "holdout_classes": []}, "`holdout_classes` must be a non-empty proper subset"),
        ({"split": "class_disjoint", "holdout_classes": [3, 11]}, "`holdout_classes` must be a non-empty proper"),
    ],
)
def test_invalid_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DigitsDataModule(**kwargs)


def test_more_classes_per_batch_than_training_classes_is_an_error():
    datamodule = setup(split="class_disjoint")
    with pytest.raises(ValueError, match=r"`classes_per_batch` \(10\) exceeds the number of classes"):
        datamodule.train_dataloader()
