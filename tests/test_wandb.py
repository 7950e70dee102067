"""Specification of W&B tracking: `lit-metric fit` with configs/wandb.yaml records, offline, the resolved config, the
losses, mining statistics and retrieval metrics, the retrieval pictures and the best checkpoint, ready for
`wandb sync`. The offline run's transaction log is read back record by record."""

import json
import struct
from pathlib import Path

import pytest
import wandb
from PIL import Image
from wandb.proto import wandb_internal_pb2

from lit_metric.cli import run

CONFIGS = Path(__file__).parents[1] / "configs"
SHORT = [
    "--trainer.max_epochs=2",
    "--trainer.limit_train_batches=2",
    "--trainer.log_every_n_steps=1",
    "--trainer.enable_progress_bar=false",
]


def read_records(path: Path) -> list[wandb_internal_pb2.Record]:
    """The records of a ``run-*.wandb`` file: a 7-byte W&B header, then LevelDB-log chunks in 32 KiB blocks."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B transaction log"
    block, position, pending, records = 32768, 7, b"", []
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # too small for a chunk header: padding up to the next block
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    """One short fit of configs/digits.yaml + configs/wandb.yaml with W&B offline: the CLI, the best checkpoint, the
    offline run folder and the records of its transaction log."""
    workdir = tmp_path_factory.mktemp("wandb")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        patch.setenv("WANDB_MODE", "offline")
        patch.setenv("WANDB_DIR", str(workdir))
        patch.setenv("WANDB_DATA_DIR", str(workdir / "wandb-data"))
        # The W&B service resolves relative paths against its own working directory, so one started by an earlier
        # test in another folder would write this run there.
        wandb.teardown()
        cli = run(["fit", "--config", str(CONFIGS / "digits.yaml"), "--config", str(CONFIGS / "wandb.yaml"), *SHORT])
        cli.trainer.logger.experiment.finish()
        wandb.teardown()  # waits for the W&B service to write the whole transaction log
    (run_dir,) = (workdir / "runs" / "digits" / "wandb").glob("offline-run-*")
    (log,) = run_dir.glob("run-*.wandb")
    best = workdir / cli.trainer.checkpoint_callback.best_model_path
    return cli, best, run_dir, read_records(log)


def of_type(records, kind):
    return [getattr(record, kind) for record in records if record.WhichOneof("record_type") == kind]


def history(records) -> list[dict]:
    """Each ``wandb.log`` call as a dict of its top-level keys; a nested value (an image) as a dict of its fields."""
    rows = []
    for entry in of_type(records, "history"):
        row = {}
        for item in entry.item:
            key = item.key or item.nested_key[0]
            value = json.loads(item.value_json)
            if len(item.nested_key) > 1:
                row.setdefault(key, {})[item.nested_key[1]] = value
            else:
                row[key] = value
        rows.append(row)
    return rows


def test_the_run_config_is_the_whole_resolved_cli_config(offline_run):
    _, _, _, records = offline_run
    config = {item.key: json.loads(item.value_json) for entry in of_type(records, "config") for item in entry.update}
    assert config["seed_everything"] == 0
    assert config["trainer"]["max_epochs"] == 2  # the command-line override, not the file's 30
    assert config["model"]["init_args"]["criterion"]["init_args"] == {"alpha": 2.0, "beta": 0.5}
    assert config["data"]["class_path"] == "lit_metric.data.DigitsDataModule"
    callbacks = [callback["class_path"] for callback in config["trainer"]["callbacks"]]
    assert callbacks == ["lit_metric.RetrievalPictures", "lightning.pytorch.callbacks.ModelCheckpoint"]
    assert config["miner"]["strategy"] == "all" and config["miner"]["negative_cost"] == 1.0


def test_losses_mining_statistics_and_retrieval_metrics_are_recorded(offline_run):
    cli, _, _, records = offline_run
    rows = history(records)
    keys = set().union(*rows)
    assert {"train/loss", "val/map@r", "val/recall@1", "trainer/global_step"} <= keys
    assert any(key.startswith("mining/") for key in keys)
    last_map = [row["val/map@r"] for row in rows if "val/map@r" in row][-1]
    assert last_map == pytest.approx(float(cli.trainer.callback_metrics["val/map@r"]))


def test_retrieval_grid_and_projection_of_the_last_epoch_are_recorded_as_images(offline_run):
    _, _, run_dir, records = offline_run
    rows = history(records)
    for key in ("val/retrieval_grid", "val/embedding_projection"):
        images = [row[key] for row in rows if key in row]
        assert len(images) == 1, f"{key} should be logged once: after the last epoch, digits.yaml draws every 10"
        for image in images:
            assert image["_type"] == "images/separated"
            (filename,) = image["filenames"]
            with Image.open(run_dir / "files" / filename) as png:
                assert png.size == (image["width"], image["height"])


def test_the_cli_also_writes_the_pictures_as_png_next_to_the_checkpoints(offline_run):
    _, best, _, _ = offline_run
    pictures = sorted(path.name for path in (best.parent.parent / "pictures").iterdir())
    assert pictures == [f"{key}-epoch{epoch:03d}.png" for key in ("embedding_projection", "retrieval_grid")
                        for epoch in (1,)]


def test_the_best_checkpoint_is_a_model_artifact_staged_for_wandb_sync(offline_run):
    _, best, _, records = offline_run
    artifacts = [artifact for artifact in of_type(records, "artifact") if "best" in artifact.aliases]
    assert len(artifacts) == 1
    artifact = artifacts[0]
    assert artifact.type == "model"
    assert artifact.metadata and json.loads(artifact.metadata)["original_filename"].startswith("best-epoch")
    (entry,) = artifact.manifest.contents
    # Offline, the file waits in W&B's staging folder for `wandb sync` to upload it.
    staged = Path(entry.local_path)
    assert staged.is_file() and staged.stat().st_size == entry.size == best.stat().st_size
