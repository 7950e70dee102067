"""Specification of the search API: from a `lit-metric fit` checkpoint, the nearest gallery items of new images are
the brute-force cosine neighbours of their embeddings, whether the gallery is given as images, a data set, a data
loader or an exported embeddings file; bad inputs are refused with the argument's name."""

import math
import pickle
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

import lit_metric.functional._checks as checks
import lit_metric.functional.knn as knn
import lit_metric.search as search
from lit_metric import BackboneEmbedder, ConvEmbedder, MetricLearningModule
from lit_metric.data import load_image
from lit_metric.io import save_embeddings, save_manifest, shard_path
from lit_metric.cli import run
from lit_metric.data import TensorImageDataset
from lit_metric.search import EmbeddingIndex, ShardedEmbeddingIndex, embed_batches, embed_images, nearest

from _ddp import run_processes

CONFIGS = Path(__file__).parents[1] / "configs"
CONFIG = str(CONFIGS / "digits.yaml")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint of a two-step CLI fit on digits, and the held-out digits as gallery."""
    workdir = tmp_path_factory.mktemp("search")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        cli = run(["fit", "--config", CONFIG, "--trainer.logger=false", "--trainer.enable_progress_bar=false",
                   "--trainer.max_epochs=1", "--trainer.limit_train_batches=2"])
    return workdir / cli.trainer.checkpoint_callback.best_model_path, cli.datamodule.holdout_set


@pytest.fixture(scope="module")
def index(trained):
    checkpoint, holdout = trained
    return EmbeddingIndex.from_checkpoint(checkpoint, holdout)


def brute_force(queries, gallery, k):
    similarity = F.normalize(queries, dim=1) @ F.normalize(gallery, dim=1).T
    return similarity.topk(k, dim=1)


def test_a_cli_checkpoint_loads_as_the_module_it_trained(trained):
    checkpoint, _ = trained
    model = MetricLearningModule.load_from_checkpoint(checkpoint)
    assert type(model) is MetricLearningModule and model.embedding_net.__class__.__name__ == "ConvEmbedder"


def test_neighbours_are_the_brute_force_cosine_neighbours_of_the_checkpoint_embeddings(trained, index):
    _, holdout = trained
    queries = holdout.images[:5] + 0.05 * torch.randn(5, 1, 8, 8)  # new images near known ones
    found = index.search(queries, k=4)
    with torch.no_grad():
        model = index.model.eval()
        expected = brute_force(model.embed(queries), model.embed(holdout.images), 4)
    assert torch.equal(found.indices, expected.indices)
    assert torch.allclose(found.scores, expected.values, atol=1e-5)
    assert torch.equal(found.labels, holdout.labels[found.indices])


def test_a_gallery_image_finds_itself_first(trained, index):
    _, holdout = trained
    found = index.search(holdout.images[10:13], k=1)
    assert found.indices.flatten().tolist() == [10, 11, 12]
    assert torch.allclose(found.scores, torch.ones(3, 1), atol=1e-5)


def test_images_loaders_and_exported_files_give_the_same_gallery(trained, index, tmp_path):
    checkpoint, holdout = trained
    export = {"embeddings": index.embeddings, "labels": holdout.labels, "indexes": torch.arange(len(holdout))}
    save_embeddings(export, tmp_path / "gallery.npz")
    queries = holdout.images[100:103]
    expected = index.search(queries, k=3)
    for gallery in (holdout.images, DataLoader(holdout, batch_size=100), tmp_path / "gallery.npz"):
        found = nearest(checkpoint, gallery, queries, k=3)
        assert torch.equal(found.indices, expected.indices)
    assert nearest(checkpoint, holdout.images, queries, k=3).labels is None  # bare images carry no labels


def test_gallery_paths_are_returned_for_each_neighbour(index):
    paths = [f"digits/{i:04d}.png" for i in range(len(index.embeddings))]
    with_paths = EmbeddingIndex(index.model, index.embeddings, paths=paths)
    found = with_paths.search_embeddings(index.embeddings[:2], k=2)
    assert found.paths == [[paths[i] for i in row] for row in found.indices.tolist()]
    assert found.paths[0][0] == "digits/0000.png"


def test_labels_and_paths_are_refused_with_a_gallery_that_carries_its_own(trained):
    checkpoint, holdout = trained
    with pytest.raises(ValueError, match="`labels` and `paths` are for a gallery of image tensors.*got a .* gallery"):
        EmbeddingIndex.from_checkpoint(checkpoint, holdout, labels=torch.zeros(len(holdout), dtype=torch.long))


def test_an_empty_loader_is_refused_by_name(index):
    with pytest.raises(ValueError, match="`loader` must yield at least one batch, got none"):
        embed_batches(index.model, DataLoader(TensorImageDataset(torch.rand(0, 1, 8, 8), torch.zeros(0))))


def test_a_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="`checkpoint_path` '.*nowhere.ckpt' does not exist"):
        EmbeddingIndex.from_checkpoint(tmp_path / "nowhere.ckpt", torch.rand(3, 1, 8, 8))


def test_k_larger_than_the_gallery_is_refused_with_the_gallery_size(index):
    with pytest.raises(ValueError, match="`k` must be between 1 and the gallery size 540, got 541"):
        index.search(torch.rand(1, 1, 8, 8), k=541)


@pytest.mark.parametrize("images", [torch.rand(8, 8), torch.rand(2, 3, 8, 8), torch.rand(0, 1, 8, 8)])
def test_query_images_must_have_the_gallery_image_shape(index, images):
    with pytest.raises(ValueError, match=r"`images` must be a non-empty tensor of shape \(N, 1, 8, 8\)"):
        index.search(images, k=2)


def test_query_embeddings_must_have_the_gallery_dimension(index):
    with pytest.raises(ValueError, match=r"`queries` must have shape \(Q, 64\) like the gallery, got shape \(2, 32\)"):
        index.search_embeddings(torch.rand(2, 32), k=2)


def test_a_search_normalises_only_its_queries(index, monkeypatch):
    normalised, normalize = [], knn.normalize

    def counting(x, *name):
        normalised.append(len(x))
        return normalize(x, *name)

    monkeypatch.setattr(search, "normalize", counting)
    monkeypatch.setattr(knn, "normalize", counting)
    found = index.search_embeddings(index.embeddings[:3] + 0.01, k=4)
    assert normalised == [3]
    assert torch.equal(found.indices, knn.cosine_knn(index.embeddings[:3] + 0.01, 4, index.embeddings)[1])


def test_the_gallery_is_checked_once_when_the_index_is_built_not_at_every_search(index, monkeypatch):
    checked = []
    for module, name in ((checks, "check_finite"), (knn, "_check_unit_rows")):
        check = getattr(module, name)
        monkeypatch.setattr(module, name, lambda what, x, check=check: checked.append(what) or check(what, x))
    built = EmbeddingIndex(index.model, index.embeddings)
    for _ in range(3):
        built.search_embeddings(index.embeddings[:2], k=3)
    assert checked == ["embeddings"] + ["queries"] * 3


def test_non_finite_embeddings_are_refused_by_name(index):
    embeddings = index.embeddings.clone()
    embeddings[0, 0] = float("nan")
    with pytest.raises(ValueError, match="`embeddings` must be finite, found NaN or inf"):
        EmbeddingIndex(index.model, embeddings)
    with pytest.raises(ValueError, match="`queries` must be a floating-point tensor, got dtype torch.int64"):
        index.search_embeddings(torch.ones(2, 64, dtype=torch.long), k=2)


@pytest.mark.parametrize(
    ("dtype", "magnitude"),
    [*((torch.float32, magnitude) for magnitude in (1e-30, 1e-15, 1e19, 3e38)), (torch.float64, 1e-300),
     (torch.float64, 1e300)],
)
def test_embeddings_of_any_finite_magnitude_find_what_they_find_at_scale_one(index, dtype, magnitude):
    # A power of two scales exactly, so the results must be identical; 1e300 is beyond float32, where it is scored.
    embeddings = index.embeddings.to(dtype) / index.embeddings.abs().max() * 1.75
    scale = 2.0 ** math.floor(math.log2(magnitude))  # 1.75 * 2**127 = 3.0e38
    queries = embeddings[:5] + 0.01
    expected = EmbeddingIndex(index.model, embeddings).search_embeddings(queries, k=4)
    found = EmbeddingIndex(index.model, embeddings * scale).search_embeddings(queries * scale, k=4)
    assert torch.equal(found.indices, expected.indices) and torch.equal(found.scores, expected.scores)


@pytest.mark.parametrize(
    ("embeddings", "message"),
    [
        ([[0.0, 1.0]], "`embeddings` must be a torch.Tensor, got list"),
        (torch.rand(64), r"`embeddings` must have shape \(N, D\), got shape \(64,\)"),
        (torch.rand(0, 64), r"`embeddings` must not be empty, got shape \(0, 64\)"),
    ],
)
def test_a_gallery_that_is_not_a_non_empty_matrix_is_refused_by_name(index, embeddings, message):
    with pytest.raises(ValueError, match=message):
        EmbeddingIndex(index.model, embeddings)


@pytest.mark.parametrize(
    ("queries", "message"),
    [
        (torch.rand(64), r"`queries` must have shape \(Q, 64\), got shape \(64,\)"),
        (torch.rand(0, 64), r"`queries` must not be empty, got shape \(0, 64\)"),
    ],
)
def test_queries_that_are_not_a_non_empty_matrix_are_refused_by_name(index, queries, message):
    with pytest.raises(ValueError, match=message):
        index.search_embeddings(queries, k=2)


def test_image_files_are_read_and_normalised_as_the_model_s_preprocessing_says(tmp_path, write_image):
    torch.manual_seed(0)
    model = MetricLearningModule(BackboneEmbedder("test_resnet", embedding_dim=8, image_size=(16, 16)))
    paths = [write_image(tmp_path / f"{i}.png", (20, 24), "RGB", seed=i) for i in range(6)]
    pixels = torch.stack([load_image(path, 3, (16, 16)) for path in paths]).float() / 255
    prepared = (pixels - 0.5) / 0.5  # test_resnet's mean and std
    index = EmbeddingIndex(model, embed_images(model, prepared))
    found, expected = index.search_files(paths[:2], k=3), index.search(prepared[:2], k=3)
    assert found.indices[:, 0].tolist() == [0, 1]
    assert torch.equal(found.indices, expected.indices) and torch.equal(found.scores, expected.scores)


def test_image_files_need_a_model_that_declares_its_preprocessing(index, tmp_path):
    with pytest.raises(ValueError, match="`paths`: the model records no preprocessing"):
        index.search_files([tmp_path / "query.png"])


# Safe loading.


class WritesAFile:
    """Unpickled, it creates ``path``: the stand-in of a checkpoint that runs code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


LOADERS = {
    "load_from_checkpoint": lambda path, gallery, **kwargs: MetricLearningModule.load_from_checkpoint(path, **kwargs),
    "EmbeddingIndex.from_checkpoint": lambda path, gallery, **kwargs: EmbeddingIndex.from_checkpoint(path, gallery, **kwargs),
    "nearest": lambda path, gallery, **kwargs: nearest(path, gallery, gallery[:1], k=1, **kwargs),
}


@pytest.mark.parametrize("load", LOADERS.values(), ids=LOADERS.keys())
def test_a_checkpoint_that_runs_code_is_refused_by_every_loader(load, tmp_path, monkeypatch):
    # torch before 2.6 unpickles anything unless told otherwise; the loaders must tell it.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "code-ran"
    module = MetricLearningModule(ConvEmbedder(embedding_dim=4, channels=(4,)))
    path = tmp_path / "malicious.ckpt"
    hparams = {"flip_test": WritesAFile(marker)}
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hparams, "pytorch-lightning_version": "2.6.0"}, path)
    with pytest.raises(pickle.UnpicklingError, match="WeightsUnpickler"):
        load(path, torch.rand(3, 1, 8, 8))
    assert not marker.exists()
    torch.load(path, weights_only=False)
    assert marker.exists(), "the file runs code when unpickled without weights_only"


@pytest.mark.parametrize("load", LOADERS.values(), ids=LOADERS.keys())
def test_a_trusted_checkpoint_with_pickled_objects_loads_when_told(load, tmp_path):
    torch.manual_seed(0)
    module = MetricLearningModule(ConvEmbedder(embedding_dim=4, channels=(4,)))
    path = tmp_path / "pickled.ckpt"
    hparams = {"embedding_net": module.embedding_net}
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hparams, "pytorch-lightning_version": "2.5.0"}, path)
    images = torch.rand(3, 1, 8, 8)
    with pytest.raises(pickle.UnpicklingError):
        load(path, images)
    assert load(path, images, weights_only=False) is not None


def test_a_checkpoint_of_a_module_built_in_python_serves_searches(tmp_path):
    torch.manual_seed(0)
    module = MetricLearningModule(ConvEmbedder(embedding_dim=4, channels=(4,)))
    images = torch.rand(6, 1, 8, 8)
    trainer = L.Trainer(max_steps=1, logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.fit(module, DataLoader(TensorImageDataset(images, torch.arange(3).repeat(2)), batch_size=6))
    neighbours = nearest(trainer.checkpoint_callback.best_model_path, images, images, k=1)
    assert neighbours.indices.flatten().tolist() == list(range(6))


# Search by example: query images in any common form are prepared as the checkpoint records.


@pytest.fixture(scope="module")
def viper_fit(viper_root, tmp_path_factory):
    """A checkpoint of one step of the VIPeR recipe (RGB, resized to 64x24, normalised), and its data module."""
    workdir = tmp_path_factory.mktemp("viper_search")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        cli = run(["fit", "--config", str(CONFIGS / "viper.yaml"), f"--data.init_args.root={viper_root}",
                   "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.max_epochs=1",
                   "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1"])
    return workdir / cli.trainer.checkpoint_callback.last_model_path, cli.datamodule


@pytest.fixture(scope="module")
def viper_index(viper_fit):
    checkpoint, datamodule = viper_fit
    return EmbeddingIndex.from_checkpoint(checkpoint, datamodule.eval_set)


def test_a_checkpoint_records_the_preprocessing_of_the_data_module_that_trained_it(viper_fit):
    checkpoint, datamodule = viper_fit
    recorded = torch.load(checkpoint, weights_only=True)["preprocessing"]
    assert recorded == datamodule.preprocessing
    assert recorded == {"channels": 3, "image_size": [64, 24], "mean": [0.5] * 3, "std": [0.25] * 3}
    assert MetricLearningModule.load_from_checkpoint(checkpoint).preprocessing == recorded


def test_one_image_in_every_form_finds_what_its_evaluation_item_finds(viper_fit, viper_index):
    checkpoint, datamodule = viper_fit
    item = datamodule.eval_set[5]  # decoded, resized and normalised by the data module
    expected = viper_index.search(item["image"].unsqueeze(0), k=4)
    assert expected.scores[0, 0] > 0.999  # a gallery image finds itself (or its copy from the other camera) first
    path = item["path"]
    pixels = np.array(Image.open(path))  # (H, W, 3) uint8, as PIL gives it
    chw = torch.from_numpy(pixels).permute(2, 0, 1)  # (3, H, W) uint8, as torchvision gives it
    forms = {
        "path": path, "Path": Path(path), "list of paths": [path], "PIL image": Image.open(path),
        "uint8 HWC array": pixels, "uint8 NHWC array": pixels[None], "uint8 CHW tensor": chw,
        "uint8 NCHW tensor": chw[None], "float HWC array": pixels / 255, "list of mixed forms": [pixels, chw],
    }
    for form, images in forms.items():
        found = viper_index.search(images, k=4)
        assert torch.equal(found.indices[:1], expected.indices), form
        assert torch.allclose(found.scores[:1], expected.scores, atol=1e-6), form
    for images in (chw.float() / 255, chw[None].float() / 255):  # float tensors are pixels when asked
        found = viper_index.search(images, k=4, preprocess=True)
        assert torch.equal(found.indices, expected.indices)
    assert torch.equal(nearest(checkpoint, datamodule.eval_set, path, k=4).indices, expected.indices)


def test_a_prepared_float_tensor_is_searched_as_it_is_with_or_without_a_batch_dimension(viper_fit, viper_index):
    _, datamodule = viper_fit
    prepared = datamodule.eval_set[7]["image"]
    with_batch, without = viper_index.search(prepared[None], k=3), viper_index.search(prepared, k=3)
    assert torch.equal(with_batch.indices, without.indices) and torch.equal(with_batch.scores, without.scores)
    assert torch.equal(viper_index.search(prepared, k=3, preprocess=False).indices, with_batch.indices)


@pytest.mark.parametrize(
    ("images", "kwargs", "message"),
    [
        (42, {}, "`images` must be an image file path, a PIL image, an array or tensor of pixels"),
        ([], {}, "`images` must be an image file path"),
        (np.zeros((0, 8, 8, 3), np.uint8), {}, r"`images` must hold at least one image, got shape \(0, 8, 8, 3\)"),
        (np.zeros((8, 8, 2), np.uint8), {}, r"`images` must be one image of shape \(H, W, C\) or \(H, W\), with C 1, 3 or 4; got shape \(8, 8, 2\)"),
        (torch.zeros(8, 8, 3, dtype=torch.uint8), {}, r"`images` must be one image of shape \(C, H, W\) or \(H, W\), with C 1, 3 or 4; got shape \(8, 8, 3\)"),
        (np.zeros((8, 8), np.int64), {}, "`images` must hold uint8 pixels \\(0-255\\) or floating-point ones \\(0-1\\), got dtype int64"),
        ([np.zeros((8, 8)), np.full((8, 8), 2.0)], {}, r"`images\[1\]`: floating-point pixels must be finite and in \[0, 1\], got \[2.0, 2.0\]"),
        (torch.full((3, 8, 8), float("nan")), {"preprocess": True}, r"`images`: floating-point pixels must be finite and in \[0, 1\]"),
        (Image.fromarray(np.zeros((8, 8), np.float32)), {}, r"`images`: its pixels are floating point \(PIL mode 'F'\)"),
        (torch.zeros(3, 8, 8, dtype=torch.uint8), {"preprocess": False}, "`images` must be a floating-point tensor of prepared images with `preprocess=False`, got dtype torch.uint8"),
        ("nowhere.png", {}, "cannot read image 'nowhere.png'"),
    ],
)
def test_query_images_of_no_known_form_are_refused_by_name(viper_index, images, kwargs, message):
    with pytest.raises(ValueError, match=message):
        viper_index.search(images, k=2, **kwargs)


def test_query_examples_need_a_model_that_records_its_preprocessing(index):
    with pytest.raises(ValueError, match="`images`: the model records no preprocessing .* pass a float tensor"):
        index.search(np.zeros((8, 8), np.uint8), k=2)


def test_query_examples_of_different_sizes_need_an_image_size(viper_index):
    unsized = EmbeddingIndex(viper_index.model, viper_index.embeddings, preprocessing={
        "channels": 3, "image_size": None, "mean": None, "std": None})
    with pytest.raises(ValueError, match=r"`images` must share one size, .* got \[\(3, 8, 8\), \(3, 9, 8\)\]"):
        unsized.search([np.zeros((8, 8, 3), np.uint8), np.zeros((9, 8, 3), np.uint8)], k=2)


# Sharded galleries.


def write_sharded_gallery(folder, shards):
    """40 items (exact duplicates among them) in `shards` shards, as a sharded export writes them: each shard in
    dataset order, the shards interleaved. Returns the manifest and the single-file gallery in dataset order."""
    g = torch.Generator().manual_seed(0)
    embeddings, labels = torch.randn(40, 6, generator=g), torch.arange(40) % 4
    embeddings[10:16] = embeddings[2]
    paths = [f"{i}.png" for i in range(40)]
    files = [shard_path(folder / "gallery.json", shard, shards) for shard in range(shards)]
    for shard, file in enumerate(files):
        rows = torch.arange(shard, 40, shards)
        save_embeddings({"embeddings": embeddings[rows], "labels": labels[rows], "indexes": rows,
                         "paths": [paths[i] for i in rows]}, file)
    save_manifest(folder / "gallery.json", files, [len(range(shard, 40, shards)) for shard in range(shards)], 6)
    return folder / "gallery.json", (embeddings, labels, paths)


def sharded_queries(embeddings):
    # Gallery rows among them, whose duplicates tie exactly.
    return torch.cat([embeddings[[2, 5, 13]], torch.randn(4, 6, generator=torch.Generator().manual_seed(1))])


def tiny_model():
    return MetricLearningModule(ConvEmbedder(1, 6, channels=[4]))


@pytest.mark.parametrize("shards", [2, 3])
def test_a_sharded_gallery_streamed_in_one_process_ranks_as_the_single_file_gallery(tmp_path, shards):
    manifest, (embeddings, labels, paths) = write_sharded_gallery(tmp_path, shards)
    sharded = ShardedEmbeddingIndex(tiny_model(), manifest)
    single = EmbeddingIndex(tiny_model(), embeddings, labels, paths)
    queries = sharded_queries(embeddings)
    got, expected = sharded.search_embeddings(queries, 9), single.search_embeddings(queries, 9)
    assert len(sharded) == 40 and torch.equal(got.scores, expected.scores)
    # Positions are in the shards' concatenation; the items, by dataset index, are the single file's.
    concatenated = torch.cat([torch.arange(shard, 40, shards) for shard in range(shards)])
    assert torch.equal(concatenated[got.indices], expected.indices)
    assert torch.equal(got.labels, expected.labels) and got.paths == expected.paths


def test_a_sharded_export_opens_from_its_manifest(trained, tmp_path):
    manifest, _ = write_sharded_gallery(tmp_path, 2)
    assert isinstance(EmbeddingIndex.from_checkpoint(trained[0], manifest), ShardedEmbeddingIndex)


def _search_across_processes(rank, world_size, manifest):
    index = ShardedEmbeddingIndex(tiny_model(), manifest, across_processes=True)
    # Each process searches its own queries; the last of three has none.
    queries = sharded_queries(torch.load(manifest.parent / "embeddings.pt"))
    found = index.search_embeddings(queries[rank::2] if rank < 2 else queries[:0], 9)
    return found.scores, found.indices, found.labels, found.paths


@pytest.mark.parametrize("world_size", [2, 3])
def test_a_sharded_gallery_searched_across_processes_ranks_as_the_single_file_gallery(tmp_path, world_size):
    manifest, (embeddings, labels, paths) = write_sharded_gallery(tmp_path, 3)
    torch.save(embeddings, tmp_path / "embeddings.pt")
    results = run_processes(_search_across_processes, tmp_path, manifest, world_size=world_size)
    expected = EmbeddingIndex(tiny_model(), embeddings, labels, paths).search_embeddings(sharded_queries(embeddings), 9)
    concatenated = torch.cat([torch.arange(shard, 40, 3) for shard in range(3)])
    for rank, (scores, indices, found_labels, found_paths) in enumerate(results[:2]):
        mine = slice(rank, None, 2)
        assert torch.equal(concatenated[indices], expected.indices[mine])
        assert torch.allclose(scores, expected.scores[mine], atol=1e-6)
        assert torch.equal(found_labels, expected.labels[mine]) and found_paths == expected.paths[mine]
    if world_size == 3:
        assert results[2][0].shape == (0, 9)


def test_a_sharded_gallery_whose_manifest_does_not_match_its_files_is_refused_by_name(tmp_path):
    manifest, _ = write_sharded_gallery(tmp_path, 2)
    save_embeddings({"embeddings": torch.randn(3, 6)}, shard_path(manifest, 1, 2))
    index = ShardedEmbeddingIndex(tiny_model(), manifest)
    with pytest.raises(ValueError, match=r"`manifest` '.*gallery.json' does not match its shard .*: it lists 20 rows"):
        index.search_embeddings(torch.randn(2, 6), 3)
    with pytest.raises(ValueError, match=r"`queries` must have shape \(Q, 6\) like the gallery, got shape \(2, 5\)"):
        index.search_embeddings(torch.randn(2, 5), 3)
