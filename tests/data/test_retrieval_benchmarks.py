"""Specification of the benchmark readers and BenchmarkDataModule: CUB-200-2011, Cars196 and Stanford Online
Products in their usual layouts, split by class as in the literature, with named errors for broken index files."""

import shutil

import numpy as np
import pytest
import scipy.io

from lit_metric.data import BenchmarkDataModule
from lit_metric.data.retrieval_benchmarks import read_cars196, read_cub200, read_sop

SMALL_BATCHES = {"classes_per_batch": 4, "samples_per_class": 2}


def test_cub200_trains_on_classes_1_to_100_and_retrieves_101_to_200(cub_root):
    benchmark = read_cub200(cub_root)
    assert benchmark.train == [str(c) for c in range(1, 101)]
    assert benchmark.test == [str(c) for c in range(101, 201)]
    assert [path.name for path in benchmark.files["101"]] == ["Bird_101_0.jpg", "Bird_101_1.jpg"]


def test_cub200_without_index_files_reads_the_class_folders_alike(cub_root, tmp_path):
    shutil.copytree(cub_root / "images", tmp_path / "images")
    folders, index = read_cub200(tmp_path), read_cub200(cub_root)
    assert (folders.train, folders.test) == (index.train, index.test)
    relative = lambda benchmark, root: {c: [p.relative_to(root) for p in paths] for c, paths in benchmark.files.items()}  # noqa: E731
    assert relative(folders, tmp_path) == relative(index, cub_root)


def test_cars196_trains_on_classes_1_to_98_and_retrieves_99_to_196_whatever_the_test_flags(cars_root):
    benchmark = read_cars196(cars_root)
    assert benchmark.train == [str(c) for c in range(1, 99)] and benchmark.test == [str(c) for c in range(99, 197)]
    assert [path.name for path in benchmark.files["99"]] == ["000197.jpg", "000198.jpg"]


def test_online_products_take_their_split_from_the_ebay_files(sop_root):
    benchmark = read_sop(sop_root)
    assert benchmark.train == [str(c) for c in range(1, 7)] and benchmark.test == [str(c) for c in range(7, 13)]
    assert benchmark.files["7"] == [sop_root / "bicycle_final/7_0.JPG", sop_root / "bicycle_final/7_1.JPG"]


@pytest.mark.parametrize("benchmark", ["cub200", "cars196", "sop"])
def test_the_data_module_trains_on_the_first_classes_and_evaluates_on_the_unseen_ones(
    benchmark, cub_root, cars_root, sop_root
):
    root = {"cub200": cub_root, "cars196": cars_root, "sop": sop_root}[benchmark]
    datamodule = BenchmarkDataModule(benchmark, root=str(root), channels=3, **SMALL_BATCHES)
    datamodule.setup("fit")
    train, evaluation = datamodule.train_set, datamodule.val_set
    assert datamodule.test_set is evaluation
    assert set(train.labels.tolist()).isdisjoint(evaluation.labels.tolist())
    assert [datamodule.classes[label] for label in train.labels[:1]] == ["1"]
    assert len(train) + len(evaluation) == sum(len(files) for files in datamodule._read.files.values())
    assert next(iter(datamodule.train_dataloader()))["image"].shape == (8, 3, 8, 8)


def write_index(root, images, labels):
    root.mkdir(parents=True, exist_ok=True)
    (root / "images.txt").write_text(images)
    (root / "image_class_labels.txt").write_text(labels)
    return root


@pytest.mark.parametrize(
    ("files", "error", "match"),
    [
        ({"images.txt": "1 a/1.jpg\n"}, FileNotFoundError, "index file .*image_class_labels.txt.* does not exist"),
        ({}, FileNotFoundError, "CUB-200-2011 needs images.txt and image_class_labels.txt, or the class folders"),
        (
            {"images.txt": "1 a/1.jpg\n2 a/2.jpg\n", "image_class_labels.txt": "1 1\n2 201\n"},
            ValueError,
            r"image_class_labels.txt' line 2: class '201' is outside 1-200",
        ),
        (
            {"images.txt": "1 a/1.jpg\n2 a/2.jpg\n", "image_class_labels.txt": "1 1\n"},
            ValueError,
            r"image_class_labels.txt' gives no class to the images \['2'\]",
        ),
        ({"images.txt": "1 a b.jpg\n", "image_class_labels.txt": "1 1\n"}, ValueError, "line 1 must have 2 fields"),
    ],
)
def test_broken_cub200_index_files_are_named(files, error, match, tmp_path):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(error, match=match):
        read_cub200(tmp_path)


def test_cub200_folders_must_be_200_classes(tmp_path, write_image):
    write_image(tmp_path / "images" / "001.Bird" / "1.jpg", (8, 8), "RGB")
    with pytest.raises(ValueError, match="must hold 200 class folders, got 1"):
        read_cub200(tmp_path)


def test_cars196_without_annotations_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="index file .*cars_annos.mat.* does not exist"):
        read_cars196(tmp_path)


@pytest.mark.parametrize(
    ("annotations", "match"),
    [
        ([("car_ims/000001.jpg", 1), ("car_ims/000002.jpg", 197)], "cars_annos.mat' annotation 2: class 197 is outside 1-196"),
        (np.zeros(2), "must hold `annotations` with the fields relative_im_path and class"),
    ],
)
def test_cars196_annotations_out_of_range_or_without_classes_are_named(annotations, match, tmp_path):
    if isinstance(annotations, list):
        annotations = np.array(annotations, dtype=[("relative_im_path", object), ("class", object)]).reshape(1, -1)
    scipy.io.savemat(tmp_path / "cars_annos.mat", {"annotations": annotations})
    with pytest.raises(ValueError, match=match):
        read_cars196(tmp_path)


HEADER = "image_id class_id super_class_id path\n"


@pytest.mark.parametrize(
    ("train", "test", "error", "match"),
    [
        (HEADER + "1 1 1 a/1.JPG\n", None, FileNotFoundError, "index file .*Ebay_test.txt.* does not exist"),
        (HEADER + "1 0 1 a/1.JPG\n", HEADER, ValueError, r"Ebay_train.txt' line 2: class '0' is outside 1 or more"),
        (HEADER + "1 5 1 a/1.JPG\n", HEADER + "2 5 1 a/2.JPG\n", ValueError, r"share the classes \['5'\]"),
    ],
)
def test_broken_online_products_index_files_are_named(train, test, error, match, tmp_path):
    (tmp_path / "Ebay_train.txt").write_text(train)
    if test is not None:
        (tmp_path / "Ebay_test.txt").write_text(test)
    with pytest.raises(error, match=match):
        read_sop(tmp_path)


def test_an_index_that_names_a_missing_image_fails_at_setup_naming_it(tmp_path, write_image):
    root = tmp_path / "sop"
    write_image(root / "a" / "1.JPG", (8, 8), "RGB")
    (root / "Ebay_train.txt").write_text(HEADER + "1 1 1 a/1.JPG\n2 1 1 a/1.JPG\n")
    (root / "Ebay_test.txt").write_text(HEADER + "3 2 1 a/gone.JPG\n4 2 1 a/1.JPG\n")
    datamodule = BenchmarkDataModule("sop", root=str(root), classes_per_batch=1, samples_per_class=2)
    with pytest.raises(ValueError, match="cannot read image .*gone.JPG"):
        datamodule.setup("fit")


def test_an_unknown_benchmark_is_named(cub_root):
    with pytest.raises(ValueError, match=r"`benchmark` must be one of \['cars196', 'cub200', 'sop'\], got 'inshop'"):
        BenchmarkDataModule("inshop", root=str(cub_root))
