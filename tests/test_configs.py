"""Specification of configs/: every config parses, and every training config runs a few steps on tiny data."""

from pathlib import Path

import pytest
import torch
import wandb
import yaml
from torchvision.transforms import v2

from lit_metric import load_embeddings
from lit_metric.cli import run

CONFIGS = Path(__file__).parents[1] / "configs"
# Configs without a model and data add to a training config, e.g. `--config digits.yaml --config predict.yaml`.
OVERLAY_BASE = CONFIGS / "digits.yaml"
SHORT = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=2",
    "--trainer.check_val_every_n_epoch=1",
    "--trainer.enable_progress_bar=false",
]


def config_args(path: Path) -> list[str]:
    config = yaml.safe_load(path.read_text())
    overlay = "model" not in config or "data" not in config
    return ["--config", str(OVERLAY_BASE), "--config", str(path)] if overlay else ["--config", str(path)]


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda path: path.name)
def test_config_parses(path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(["fit", *config_args(path), "--print_config"])
    printed = capsys.readouterr()
    assert exit_info.value.code in (None, 0), printed.err[-2000:]
    assert "class_path: lit_metric.MetricLearningModule" in printed.out


def fit_briefly(config: str, workdir: Path, *extra: str):
    """A few steps of ``lit-metric fit`` in ``workdir``, W&B offline; returns the CLI."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        patch.setenv("WANDB_MODE", "offline")
        patch.setenv("WANDB_DIR", str(workdir))
        # A W&B service started by an earlier test resolves relative paths against its own working directory.
        wandb.teardown()
        cli = run(["fit", "--config", str(CONFIGS / config), *SHORT, *extra])
        cli.trainer.logger.experiment.finish()
        wandb.teardown()
    return cli


def assert_metrics_and_checkpoint(cli, workdir: Path):
    """Metrics, the best checkpoint, PNG pictures beside it and an offline W&B run."""
    metrics = cli.trainer.callback_metrics
    assert 0 <= float(metrics["val/map@r"]) <= 1
    assert "train/loss" in metrics
    best = workdir / cli.trainer.checkpoint_callback.best_model_path
    assert best.is_file()
    pictures = {path.name for path in (best.parent.parent / "pictures").iterdir()}
    assert pictures == {"retrieval_grid-epoch000.png", "embedding_projection-epoch000.png"}
    save_dir = workdir / cli.trainer.logger.save_dir
    assert list(save_dir.glob("wandb/offline-run-*/run-*.wandb"))


def assert_augmented_at_the_image_size(cli):
    """The config's torchvision augmentation is built, and gives training images back at ``image_size``."""
    datamodule = cli.datamodule
    assert isinstance(datamodule.augmentation, v2.Transform)
    assert datamodule.train_set[0]["image"].shape[1:] == tuple(datamodule.preprocessing["image_size"])


def test_digits_config_runs(tmp_path):
    assert_metrics_and_checkpoint(fit_briefly("digits.yaml", tmp_path), tmp_path)


def test_att_faces_config_runs_on_orl_folders_given_by_the_environment(orl_faces, tmp_path, monkeypatch):
    monkeypatch.setenv("LIT_METRIC_ATT_FACES", str(orl_faces))
    cli = fit_briefly("att_faces.yaml", tmp_path)
    assert_metrics_and_checkpoint(cli, tmp_path)
    assert_augmented_at_the_image_size(cli)
    assert cli.datamodule.split["train"] == [f"s{i}" for i in range(1, 21)]
    assert cli.datamodule.split["val"] == [f"s{i}" for i in range(21, 41)]
    # `lit-metric predict` with the export overlay writes each held-out image's embedding with its file path.
    ckpt = str(tmp_path / cli.trainer.checkpoint_callback.best_model_path)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        run(["predict", "--config", str(CONFIGS / "att_faces.yaml"), "--config", str(CONFIGS / "predict.yaml"),
             f"--ckpt_path={ckpt}"])
    export = load_embeddings(Path(ckpt).parent.parent / "embeddings.pt")
    dataset = cli.datamodule.predict_dataloader().dataset
    assert export["paths"] == [str(path) for path in dataset.paths]
    assert export["embeddings"].shape[0] == len(dataset)


def test_a_run_shorter_than_the_att_faces_validation_interval_ends_with_metrics_and_a_best_checkpoint(
    orl_faces, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    cli = run(["fit", "--config", str(CONFIGS / "att_faces.yaml"), f"--data.init_args.root={orl_faces}",
               "--trainer.max_epochs=2", "--trainer.limit_train_batches=1", "--trainer.logger=false",
               "--trainer.enable_progress_bar=false"])
    assert 0 <= float(cli.trainer.callback_metrics["val/map@r"]) <= 1
    assert Path(cli.trainer.checkpoint_callback.best_model_path).name == "best-epoch001.ckpt"
    # The cosine schedule runs over the 2 epochs of the run, not the config's T_max of 200.
    assert cli.trainer.lr_scheduler_configs[0].scheduler.T_max == 2


def test_att_faces_config_without_a_root_names_the_option_and_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("LIT_METRIC_ATT_FACES", raising=False)
    with pytest.raises(ValueError, match=r"root PATH\) or set the environment variable LIT_METRIC_ATT_FACES"):
        fit_briefly("att_faces.yaml", tmp_path)


def test_viper_config_runs_on_cam_a_cam_b_folders(viper_root, tmp_path):
    cli = fit_briefly("viper.yaml", tmp_path, f"--data.init_args.root={viper_root}")
    assert_metrics_and_checkpoint(cli, tmp_path)
    assert_augmented_at_the_image_size(cli)
    assert float(cli.trainer.callback_metrics["val/num_queries"]) == 36
    assert len(cli.datamodule.split["test_ids"]) == 36


def tiny_backbone(weights: Path, image_size: tuple[int, int]) -> list[str]:
    """Options that swap a recipe's pretrained ResNet-50 for timm's test_resnet, read from a saved weights file."""
    network = "--model.init_args.embedding_net.init_args"
    return [
        f"{network}.name=test_resnet",
        f"{network}.pretrained=false",
        f"{network}.weights={weights}",
        f"{network}.image_size=[{image_size[0]}, {image_size[1]}]",
    ]


def test_market1501_config_runs_on_market_names(market_root, test_resnet_weights, tmp_path):
    # Two workers, one per core of the test machine, instead of the config's four; no warm-up in one epoch.
    workers = "--data.init_args.num_workers=2"
    backbone = tiny_backbone(test_resnet_weights, (32, 16))
    cli = fit_briefly("market1501.yaml", tmp_path, f"--data.init_args.root={market_root}", workers, *backbone,
                      "--model.init_args.warmup_epochs=0")
    assert_metrics_and_checkpoint(cli, tmp_path)
    assert_augmented_at_the_image_size(cli)
    assert float(cli.trainer.callback_metrics["val/num_queries"]) == 3
    assert "val/map" in cli.trainer.callback_metrics
    assert cli.datamodule.eval_set[0]["image"].shape == (3, 32, 16)


@pytest.mark.parametrize(
    ("config", "root"), [("cub200.yaml", "cub_root"), ("cars196.yaml", "cars_root"), ("sop.yaml", "sop_root")]
)
def test_benchmark_recipes_fine_tune_a_timm_backbone_from_a_weights_file(
    config, root, request, test_resnet_weights, tmp_path
):
    small = ["--data.init_args.classes_per_batch=4", "--data.init_args.samples_per_class=2",
             "--data.init_args.num_workers=0", "--data.init_args.eval_batch_size=512",
             "--model.init_args.metrics.init_args.k=[1, 2]"]  # the tiny galleries hold fewer than SOP's 100
    # Two epochs: the first with the backbone frozen and warming up, the second with the schedule.
    epochs = ["--trainer.max_epochs=2", "--model.init_args.warmup_epochs=1"]
    cli = fit_briefly(config, tmp_path, f"--data.init_args.root={request.getfixturevalue(root)}",
                      *tiny_backbone(test_resnet_weights, (32, 32)), *small, *epochs)
    metrics = cli.trainer.callback_metrics
    assert 0 <= float(metrics["val/map@r"]) <= 1 and "train/loss" in metrics
    assert_augmented_at_the_image_size(cli)
    assert cli.trainer.lr_scheduler_configs[0].scheduler._schedulers[1].T_max == 1  # max_epochs - warmup_epochs
    checkpoint = torch.load(tmp_path / cli.trainer.checkpoint_callback.best_model_path, weights_only=False)
    assert checkpoint["preprocessing"] == cli.datamodule.preprocessing
    assert checkpoint["preprocessing"]["image_size"] == [32, 32]
