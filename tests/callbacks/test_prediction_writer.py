"""Specification of EmbeddingWriter: `lit-metric predict` with configs/predict.yaml writes the checkpoint's embeddings
of the predict set, with labels, dataset indexes and file paths, in dataset order, to a .pt or .npz file."""

from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lit_metric import ConvEmbedder, MetricLearningModule
from lit_metric.callbacks.prediction_writer import EmbeddingWriter
from lit_metric.cli import run
from lit_metric.data import TensorImageDataset
from lit_metric.io import load_embeddings, load_manifest, load_shard

from _ddp import run_processes

CONFIGS = Path(__file__).parents[2] / "configs"
QUIET = ["--trainer.logger=false", "--trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
    """A one-step CLI fit, then `lit-metric predict` of its checkpoint with configs/predict.yaml, in a fresh folder."""
    workdir = tmp_path_factory.mktemp("predict")
    digits = ["--config", str(CONFIGS / "digits.yaml")]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        fit = run(["fit", *digits, *QUIET, "--trainer.max_epochs=1", "--trainer.limit_train_batches=1"])
        checkpoint = workdir / fit.trainer.checkpoint_callback.best_model_path
        run(["predict", *digits, "--config", str(CONFIGS / "predict.yaml"), *QUIET, f"--ckpt_path={checkpoint}"])
    return workdir, checkpoint, fit.datamodule


def test_predict_writes_the_checkpoint_embeddings_of_the_predict_set_in_dataset_order(predicted):
    _, checkpoint, datamodule = predicted
    # Into the checkpoint's run folder, not the working directory.
    export = load_embeddings(checkpoint.parent.parent / "embeddings.pt")
    holdout = datamodule.holdout_set
    model = MetricLearningModule.load_from_checkpoint(checkpoint).eval()
    with torch.no_grad():
        expected = model.embed(holdout.images)
    assert set(export) == {"embeddings", "labels", "indexes"}  # digits have no file paths
    assert torch.allclose(export["embeddings"], expected, atol=1e-6)
    assert torch.equal(export["labels"], holdout.labels)
    assert torch.equal(export["indexes"], torch.arange(len(holdout)))


def test_the_pt_file_is_a_plain_dict_for_torch_load(predicted):
    _, checkpoint, _ = predicted
    export = torch.load(checkpoint.parent.parent / "embeddings.pt", weights_only=True)
    assert export["embeddings"].shape == (540, 64) and export["embeddings"].dtype == torch.float32


class ShuffledFiles(Dataset):
    """Six items with file paths, as an image-folder data set yields them."""

    def __len__(self):
        return 6

    def __getitem__(self, index):
        return {"image": torch.full((1, 4, 4), float(index)), "label": torch.tensor(index % 2),
                "index": torch.tensor(index), "path": f"class{index % 2}/{index}.png"}


@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_rows_are_in_dataset_order_with_their_paths_whatever_the_batch_order(suffix, tmp_path):
    output = tmp_path / "out" / f"embeddings{suffix}"
    loader = DataLoader(ShuffledFiles(), batch_size=4, sampler=[5, 2, 0, 4, 1, 3])
    model = MetricLearningModule(ConvEmbedder(1, 8, channels=[4]))
    trainer = L.Trainer(logger=False, enable_progress_bar=False, callbacks=[EmbeddingWriter(output)])
    trainer.predict(model, loader, return_predictions=False)
    export = load_embeddings(output)
    assert export["indexes"].tolist() == [0, 1, 2, 3, 4, 5]
    assert export["paths"] == [f"class{i % 2}/{i}.png" for i in range(6)]
    with torch.no_grad():
        expected = model.eval().embed(torch.stack([ShuffledFiles()[i]["image"] for i in range(6)]))
    assert torch.allclose(export["embeddings"], expected, atol=1e-6)
    if suffix == ".npz":
        with np.load(output) as arrays:  # plain NumPy, no pickled objects
            assert arrays["paths"].dtype.kind == "U" and arrays["embeddings"].shape == (6, 8)


def test_under_ddp_the_file_is_the_single_process_file(tmp_path):
    # 7 items on 2 processes: DistributedSampler pads one duplicate, which must not reach the file.
    dataset = TensorImageDataset(torch.rand(7, 1, 8, 8), torch.arange(7) % 3)
    model = MetricLearningModule(ConvEmbedder(1, 8, channels=[4]))
    for name, devices, strategy in (("single.pt", 1, "auto"), ("ddp.pt", 2, "ddp_spawn")):
        trainer = L.Trainer(accelerator="cpu", devices=devices, strategy=strategy, logger=False,
                            enable_progress_bar=False, callbacks=[EmbeddingWriter(tmp_path / name)])
        trainer.predict(model, DataLoader(dataset, batch_size=3), return_predictions=False)
    single, ddp = load_embeddings(tmp_path / "single.pt"), load_embeddings(tmp_path / "ddp.pt")
    assert ddp["indexes"].tolist() == list(range(7))
    assert torch.equal(ddp["labels"], single["labels"])
    assert torch.allclose(ddp["embeddings"], single["embeddings"], atol=1e-6)


def test_only_pt_and_npz_files_are_written():
    message = r"`output_path` must end in \.pt or \.npz, or in \.json for a sharded export, got 'embeddings.csv'"
    with pytest.raises(ValueError, match=message):
        EmbeddingWriter("embeddings.csv")


def test_predict_step_must_return_embeddings(tmp_path):
    class Dicts(MetricLearningModule):
        def predict_step(self, batch, batch_idx):
            return {"embeddings": self.embed(batch["image"])}

    trainer = L.Trainer(logger=False, enable_progress_bar=False, callbacks=[EmbeddingWriter(tmp_path / "e.pt")])
    with pytest.raises(ValueError, match=r"`predict_step` must return \(B, D\) embeddings.*got dict"):
        trainer.predict(Dicts(ConvEmbedder(1, 8, channels=[4])), DataLoader(ShuffledFiles(), batch_size=3))


def _export_in_shards(rank, world_size, output):
    # Items 0-6 (ShuffledFiles makes any index) dealt out as DistributedSampler does: shuffled, padded with copies.
    order = list(DistributedSampler(range(7), world_size, rank, shuffle=True, seed=1))
    trainer = SimpleNamespace(global_rank=rank, world_size=world_size, is_global_zero=rank == 0)
    writer = EmbeddingWriter(output)
    writer.on_predict_epoch_start(trainer, None)
    for batch_idx, start in enumerate(range(0, len(order), 2)):
        batch = [ShuffledFiles()[i] for i in order[start : start + 2]]
        embeddings = torch.stack([item["image"].flatten()[:3] for item in batch])
        batch = {key: [item[key] for item in batch] for key in ("path",)} | {
            key: torch.stack([item[key] for item in batch]) for key in ("label", "index")
        }
        writer.write_on_batch_end(trainer, None, embeddings, None, batch, batch_idx, 0)
    writer.on_predict_epoch_end(trainer, None)


@pytest.mark.parametrize("world_size", [2, 3])
def test_a_sharded_export_holds_every_item_once_in_one_file_per_process_and_a_manifest(tmp_path, world_size):
    run_processes(_export_in_shards, tmp_path, tmp_path / "out" / "gallery.json", world_size=world_size)
    manifest = load_manifest(tmp_path / "out" / "gallery.json")
    assert [file.name for file in manifest.files] == [f"gallery-{r:05d}-of-{world_size:05d}.pt" for r in
                                                      range(world_size)]
    shards = [load_shard(manifest, shard) for shard in range(world_size)]
    for shard in shards:
        assert shard["indexes"].tolist() == sorted(shard["indexes"].tolist())  # dataset order within a shard
    indexes = torch.cat([shard["indexes"] for shard in shards])
    assert sorted(indexes.tolist()) == list(range(7))
    paths = [path for shard in shards for path in shard["paths"]]
    assert paths == [f"class{i % 2}/{i}.png" for i in indexes.tolist()]
    embeddings = torch.cat([shard["embeddings"] for shard in shards])
    assert torch.equal(embeddings, indexes[:, None].float().expand(-1, 3))
