"""Specification of ReIDDataModule: VIPeR and Market-1501 layouts, identity splits, query/gallery evaluation."""

import json
import re
import shutil
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from lit_metric import BackboneEmbedder, MetricLearningModule
from lit_metric.data.reid import ReIDDataModule, viper_split
from lit_metric.metrics import RetrievalMetrics


class RecordingLogger:
    def __init__(self):
        self.hyperparams = {}

    def log_hyperparams(self, params):
        self.hyperparams.update(params)


def viper(root, **kwargs):
    datamodule = ReIDDataModule(root=str(root), **{"classes_per_batch": 4, "samples_per_class": 2, **kwargs})
    datamodule.setup("fit")
    return datamodule


def identities(dataset, mask=None):
    """The people of ``dataset``, or of its items where ``mask`` is true, by file name prefix."""
    mask = torch.ones(len(dataset), dtype=torch.bool) if mask is None else mask
    return {path.stem.split("_")[0] for path, keep in zip(dataset.paths, mask.tolist()) if keep}


def test_viper_trains_on_half_the_people_and_queries_cam_a_against_cam_b_of_the_others(viper_root):
    datamodule = viper(viper_root)
    assert datamodule.layout == "viper"
    train_ids, test_ids = datamodule.split["train_ids"], datamodule.split["test_ids"]
    assert len(train_ids) == len(test_ids) == 36 and not set(train_ids) & set(test_ids)
    assert identities(datamodule.train_set) == set(train_ids)
    assert len(datamodule.train_set) == 72  # both cameras of every training person
    evaluation = datamodule.eval_set
    is_query, is_gallery = evaluation.extras["is_query"], evaluation.extras["is_gallery"]
    assert torch.equal(is_gallery, ~is_query) and int(is_query.sum()) == 36
    assert identities(evaluation, is_query) == identities(evaluation, is_gallery) == set(test_ids)
    assert set(evaluation.extras["camera"][is_query].tolist()) == {0}
    assert set(evaluation.extras["camera"][is_gallery].tolist()) == {1}
    assert all(path.parent.name == "cam_a" for path, query in zip(evaluation.paths, is_query) if query)
    # A query and its gallery image share the label.
    query_labels, gallery_labels = evaluation.labels[is_query], evaluation.labels[is_gallery]
    assert torch.equal(query_labels.sort().values, gallery_labels.sort().values)


def test_viper_items_carry_camera_and_query_gallery_flags(viper_root):
    item = viper(viper_root, image_size=(16, 6)).eval_set[0]
    assert set(item) == {"image", "label", "index", "path", "camera", "is_query", "is_gallery"}
    assert item["image"].shape == (3, 16, 6)
    assert bool(item["is_query"]) and not bool(item["is_gallery"]) and int(item["camera"]) == 0


def test_viper_seed_draws_ten_distinct_splits_and_split_index_picks_one(viper_root):
    people = [f"{i:03d}" for i in range(632)]
    splits = [viper_split(people, index, seed=0) for index in range(10)]
    assert all(len(train) == len(test) == 316 for train, test in splits)
    assert len({tuple(train) for train, _ in splits}) == 10
    assert viper_split(people, 3, seed=0) == splits[3]
    assert viper_split(people, 3, seed=1) != splits[3]
    assert viper(viper_root, split_index=3).split["train_ids"] != viper(viper_root, split_index=4).split["train_ids"]


def test_viper_split_is_logged(viper_root):
    datamodule = ReIDDataModule(root=str(viper_root), split_index=2, seed=7, classes_per_batch=4, samples_per_class=2)
    datamodule.trainer = SimpleNamespace(logger=RecordingLogger())
    datamodule.setup("fit")
    logged = datamodule.trainer.logger.hyperparams["data_split"]
    assert logged["split_index"] == 2 and logged["seed"] == 7
    assert logged["train_ids"] == datamodule.split["train_ids"] and len(logged["test_ids"]) == 36


def test_viper_training_batches_pair_the_two_cameras_of_each_person(viper_root):
    datamodule = viper(viper_root, classes_per_batch=8)
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["image"].shape == (16, 3, 32, 12)
    for label in batch["label"].unique():
        assert sorted(batch["camera"][batch["label"] == label].tolist()) == [0, 1]


def test_market1501_drops_junk_and_keeps_distractors_in_the_gallery_only(market_root):
    datamodule = ReIDDataModule(root=str(market_root), classes_per_batch=4, samples_per_class=2)
    datamodule.setup("fit")
    assert datamodule.layout == "market1501"
    assert len(datamodule.train_set) == 32 and len(datamodule.train_set.labels.unique()) == 16
    evaluation = datamodule.eval_set
    is_query = evaluation.extras["is_query"]
    names = [path.name for path in evaluation.paths]
    assert not any(name.startswith("-1_") for name in names)
    distractors = [i for i, name in enumerate(names) if name.startswith("0000_")]
    assert len(distractors) == 2 and not is_query[distractors].any()
    assert int(is_query.sum()) == 3 and len(evaluation) == 3 + 11
    assert evaluation.extras["camera"][is_query].tolist() == [1, 1, 1]
    assert set(evaluation.extras["camera"][~is_query].tolist()) == {1, 2, 3}
    assert datamodule.split == {
        "layout": "market1501", "train_ids": 16, "train_images": 32, "query_images": 3, "gallery_images": 11
    }


def test_market1501_images_are_prepared_as_the_model_s_preprocessing_says(market_root):
    network = BackboneEmbedder("test_resnet", embedding_dim=8, image_size=(24, 12))
    datamodule = ReIDDataModule(root=str(market_root), classes_per_batch=4, samples_per_class=2)
    datamodule.trainer = SimpleNamespace(lightning_module=MetricLearningModule(network), logger=None)
    datamodule.setup("fit")
    assert datamodule.preprocessing == network.preprocessing
    for dataset in (datamodule.train_set, datamodule.eval_set):
        assert dataset[0]["image"].shape == (3, 24, 12) and float(dataset[0]["image"].min()) < 0


def test_evaluation_batches_feed_the_re_id_protocol_of_the_retrieval_metric(market_root):
    datamodule = ReIDDataModule(root=str(market_root), classes_per_batch=4, samples_per_class=2)
    datamodule.setup("fit")
    batch = next(iter(datamodule.val_dataloader()))
    metric = RetrievalMetrics(k=[1])
    # Embeddings that are the identity itself: every query finds its two other-camera images first.
    metric.update(
        F.one_hot(batch["label"]).float(),
        batch["label"],
        batch["index"],
        is_query=batch["is_query"],
        is_gallery=batch["is_gallery"],
        cameras=batch["camera"],
    )
    result = metric.compute()
    assert int(result["num_queries"]) == 3
    assert float(result["map@r"]) == 1.0


def test_every_prefix_of_the_evaluation_set_holds_queries_and_gallery_in_proportion(market_root):
    # Partial validation (limit_val_batches) then still has a gallery to search.
    datamodule = ReIDDataModule(root=str(market_root), classes_per_batch=4, samples_per_class=2)
    datamodule.setup("fit")
    is_query = datamodule.eval_set.extras["is_query"]
    queries_so_far = is_query.long().cumsum(0)
    seen = torch.arange(1, len(is_query) + 1)
    share = int(is_query.sum()) / len(is_query)
    assert bool(((queries_so_far - share * seen).abs() <= 1).all())
    third = is_query[: len(is_query) // 3]
    assert bool(third.any()) and not bool(third.all())


# Bad inputs fail with the argument or the path and what was expected.


def test_viper_cameras_that_do_not_pair_up_are_named(viper_root, tmp_path):
    root = tmp_path / "viper"
    shutil.copytree(viper_root, root)
    (root / "cam_a" / "005_0.bmp").unlink()
    shutil.copy(root / "cam_a" / "006_0.bmp", root / "cam_a" / "900_0.bmp")
    with pytest.raises(
        ValueError, match=re.escape("do not pair up by identity prefix: only in cam_a: ['900'], only in cam_b: ['005']")
    ):
        viper(root)


@pytest.mark.parametrize("person", ["000", "003"])  # one of the training people, one of the test people
def test_a_truncated_image_fails_at_setup_named_when_read_from_disk(viper_root, tmp_path, person):
    root = tmp_path / "viper"
    shutil.copytree(viper_root, root)
    broken = root / "cam_b" / f"{person}_90.bmp"
    broken.write_bytes(broken.read_bytes()[:-100])  # the header is whole, the last rows of pixels are missing
    with pytest.raises(ValueError, match=re.escape(f"cannot read image '{broken}': image file is truncated")):
        viper(root, in_memory=False)


def test_viper_without_a_camera_folder_is_named(viper_root, tmp_path):
    root = tmp_path / "viper"
    shutil.copytree(viper_root / "cam_a", root / "cam_a")
    with pytest.raises(FileNotFoundError, match=re.escape(f"VIPeR camera folder '{root / 'cam_b'}' does not exist")):
        viper(root)


def test_viper_split_leaving_people_with_fewer_than_k_images_is_rejected(viper_root):
    with pytest.raises(ValueError, match=r"classes \d{3} \(2\).* of the training split have fewer than `samples_per_class` = 4 samples"):
        viper(viper_root, samples_per_class=4)


def test_split_index_outside_the_ten_splits_is_rejected(viper_root):
    with pytest.raises(ValueError, match=re.escape("`split_index` must be in [0, 10), got 10")):
        ReIDDataModule(root=str(viper_root), split_index=10)


def test_market1501_file_not_following_the_naming_is_named(market_root, tmp_path):
    root = tmp_path / "market"
    shutil.copytree(market_root, root)
    stray = root / "query" / "person.jpg"
    shutil.copy(root / "query" / "0101_c1s1_000101_01.jpg", stray)
    datamodule = ReIDDataModule(root=str(root), classes_per_batch=4, samples_per_class=2)
    with pytest.raises(ValueError, match=re.escape(f"Market-1501 image '{stray}' does not follow the name pattern")):
        datamodule.setup("fit")


def test_market1501_folder_without_images_is_named(market_root, tmp_path):
    root = tmp_path / "market"
    shutil.copytree(market_root, root)
    for image in (root / "query").glob("*.jpg"):
        image.unlink()
    datamodule = ReIDDataModule(root=str(root), classes_per_batch=4, samples_per_class=2)
    with pytest.raises(ValueError, match=re.escape(f"Market-1501 folder '{root / 'query'}' has no images")):
        datamodule.setup("fit")


def test_unknown_layout_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="neither VIPeR's .* nor Market-1501's .* folders; set `layout`"):
        ReIDDataModule(root=str(tmp_path))


def test_missing_root_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("LIT_METRIC_VIPER", raising=False)
    with pytest.raises(ValueError, match="or set the environment variable LIT_METRIC_VIPER"):
        ReIDDataModule(root_env="LIT_METRIC_VIPER")
    with pytest.raises(FileNotFoundError, match=re.escape(f"data folder '{tmp_path / 'nowhere'}' (from `root`)")):
        ReIDDataModule(root=str(tmp_path / "nowhere"))


# Fixed splits from a file: torchreid's splits.json or identity lists.


def torchreid_splits(root, people_train, people_test, prefix="/elsewhere/VIPeR"):
    """A torchreid-style split: [path, pid, camid] rows whose paths were written on another machine."""
    row = lambda person, camera: [f"{prefix}/{('cam_a', 'cam_b')[camera]}/{person:03d}_{(0, 90)[camera]}.bmp", person, camera]  # noqa: E731
    return {
        "train": [row(p, c) for p in people_train for c in (0, 1)],
        "query": [row(p, 0) for p in people_test],
        "gallery": [row(p, 1) for p in people_test],
    }


def test_a_torchreid_splits_file_fixes_train_query_and_gallery(viper_root, tmp_path):
    file = tmp_path / "splits.json"
    splits = [torchreid_splits(viper_root, range(0, 36), range(36, 72)), torchreid_splits(viper_root, range(36, 72), range(36))]
    file.write_text(json.dumps(splits))
    datamodule = viper(viper_root, splits=str(file), split_index=1)
    assert datamodule.split["train_ids"] == [f"{p:03d}" for p in range(36, 72)]
    assert datamodule.split["test_ids"] == [f"{p:03d}" for p in range(36)]
    evaluation = datamodule.eval_set
    is_query = evaluation.extras["is_query"]
    assert identities(evaluation, is_query) == {f"{p:03d}" for p in range(36)}
    assert all(path.parent.name == "cam_a" for path, query in zip(evaluation.paths, is_query) if query)
    assert all(path.parent.name == "cam_b" for path, query in zip(evaluation.paths, is_query) if not query)


def test_an_identity_list_splits_file_queries_camera_a_against_camera_b(viper_root, tmp_path):
    file = tmp_path / "splits.json"
    file.write_text(json.dumps([{"train": [f"{p:03d}" for p in range(40)], "test": [f"{p:03d}" for p in range(40, 72)]}]))
    datamodule = viper(viper_root, splits=str(file))
    assert identities(datamodule.train_set) == {f"{p:03d}" for p in range(40)} and len(datamodule.train_set) == 80
    assert int(datamodule.eval_set.extras["is_query"].sum()) == 32


def test_viper_layout_halves_any_even_number_of_people(viper_root, tmp_path):
    root = tmp_path / "viper"
    for camera in ("cam_a", "cam_b"):
        (root / camera).mkdir(parents=True)
        for image in sorted((viper_root / camera).iterdir())[:6]:
            shutil.copy(image, root / camera / image.name)
    datamodule = viper(root, classes_per_batch=2)
    assert len(datamodule.split["train_ids"]) == len(datamodule.split["test_ids"]) == 3


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "is not JSON"),
        ("[]", "must hold a non-empty list of splits"),
        ('[{"train": []}]', "split 0 must have keys 'train', 'query' and 'gallery', or 'train' and 'test'"),
        ('[{"train": ["000"], "test": ["999"]}]', r"split 0, 'test' names identities that the data set does not have: \['999'\]"),
        ('[{"train": ["000", "001"], "test": ["001"]}]', r"split 0 trains on people it also tests on: \['001'\]"),
        (
            '[{"train": [["x/cam_a/000_0.bmp", 0, 0]], "query": [["x/cam_a/nobody.bmp", 1, 0]], "gallery": []}]',
            r"split 0, 'query' names 'x/cam_a/nobody.bmp', which is not an image of the data set",
        ),
    ],
)
def test_bad_splits_files_are_named(viper_root, tmp_path, content, message):
    file = tmp_path / "splits.json"
    file.write_text(content)
    with pytest.raises(ValueError, match=message):
        viper(viper_root, splits=str(file))


def test_split_index_beyond_the_splits_of_the_file_is_named(viper_root, tmp_path):
    file = tmp_path / "splits.json"
    file.write_text(json.dumps([torchreid_splits(viper_root, range(36), range(36, 72))]))
    with pytest.raises(ValueError, match=re.escape(f"`split_index` must be in [0, 1) for the 1 splits of '{file}', got 3")):
        viper(viper_root, splits=str(file), split_index=3)


def test_missing_splits_file_and_splits_for_market1501_are_named(viper_root, market_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="`splits` file .*nowhere.json' does not exist"):
        viper(viper_root, splits=str(tmp_path / "nowhere.json"))
    with pytest.raises(ValueError, match="`splits` applies to the 'viper' layout, got layout 'market1501'"):
        ReIDDataModule(root=str(market_root), splits=str(tmp_path / "splits.json"))
