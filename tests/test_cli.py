"""Specification of the ``lit-metric`` command: fit from a config, then validate, test and predict a checkpoint."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import wandb
from lightning.fabric.plugins import TorchCheckpointIO

import lit_metric
from lit_metric import PairMiner
from lit_metric.checkpoint import AtomicCheckpointIO, PreemptionCheckpoint
from lit_metric.cli import BUNDLED_CONFIGS, LitMetricCLI, bundled_config_names, run, wandb_offline_unless_logged_in

CONFIG = str(Path(__file__).parents[1] / "configs" / "digits.yaml")
SHORT = ["--trainer.max_epochs=2", "--trainer.limit_train_batches=2", "--trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One short fit of configs/digits.yaml with W&B offline, shared by the tests that read its outputs."""
    workdir = tmp_path_factory.mktemp("cli")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        patch.setenv("WANDB_MODE", "offline")
        patch.setenv("WANDB_DIR", str(workdir))
        # A W&B service started by an earlier test resolves relative paths against its own working directory.
        wandb.teardown()
        cli = run(["fit", "--config", CONFIG, *SHORT])
        cli.trainer.logger.experiment.finish()
        wandb.teardown()
    return workdir, cli


def test_fit_logs_metrics_and_keeps_the_best_checkpoint_by_map_at_r(fitted):
    workdir, cli = fitted
    assert {"val/map@r", "val/recall@1", "train/loss"} <= set(cli.trainer.callback_metrics)
    checkpoint = cli.trainer.checkpoint_callback
    assert checkpoint.monitor == "val/map@r"
    assert (workdir / checkpoint.best_model_path).is_file()


def test_fit_writes_an_offline_wandb_run(fitted):
    workdir, _ = fitted
    runs = list((workdir / "runs" / "digits" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("run-*.wandb")), "the offline run has no event log for `wandb sync`"


def test_the_resolved_config_goes_into_the_run_s_own_folder_only(fitted):
    workdir, _ = fitted
    (run,) = (workdir / "runs" / "digits" / "wandb").glob("offline-run-*")
    saved = (run / "files" / "config.yaml").read_text()
    assert "max_epochs: 2" in saved and "class_path: lit_metric.MetricLearningModule" in saved
    # Not where runs share a folder: the logger's save_dir, or the working directory.
    assert not (workdir / "runs" / "digits" / "config.yaml").exists() and not (workdir / "config.yaml").exists()


def test_without_a_logger_no_config_file_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text("# the user's own file\n")
    run(["fit", "--config", CONFIG, *SHORT[1:], "--trainer.max_epochs=1", "--trainer.logger=false"])
    assert (tmp_path / "config.yaml").read_text() == "# the user's own file\n"


@pytest.mark.parametrize("subcommand", ["validate", "test"])
def test_validate_and_test_a_checkpoint(fitted, subcommand, monkeypatch):
    workdir, cli = fitted
    monkeypatch.chdir(workdir)
    ckpt = cli.trainer.checkpoint_callback.best_model_path
    stage = "val" if subcommand == "validate" else "test"
    result = run([subcommand, "--config", CONFIG, "--trainer.logger=false", f"--ckpt_path={ckpt}"])
    metrics = result.trainer.callback_metrics
    assert 0 <= float(metrics[f"{stage}/map@r"]) <= 1
    # The checkpoint's weights are the ones evaluated: the best score is reproduced.
    best = float(cli.trainer.checkpoint_callback.best_model_score)
    assert float(metrics[f"{stage}/map@r"]) == pytest.approx(best, abs=1e-5)


def test_predict_returns_embeddings_of_the_checkpoint(fitted, monkeypatch):
    workdir, cli = fitted
    monkeypatch.chdir(workdir)
    ckpt = cli.trainer.checkpoint_callback.best_model_path
    result = run(["predict", "--config", CONFIG, "--trainer.logger=false", f"--ckpt_path={ckpt}"])
    embeddings = torch.cat(result.trainer.predict_loop.predictions)
    assert embeddings.shape == (540, 64)


def test_config_typos_are_rejected_with_the_key(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run(["fit", "--config", CONFIG, "--model.init_args.criterion.init_args.alpah=3"])
    assert "alpah" in capsys.readouterr().err


def test_a_miner_setting_on_the_command_line_reaches_the_miner_that_mines(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run(["fit", "--config", CONFIG, "--miner.strategy", "hard", "--miner.margin=0.05",
               "--trainer.fast_dev_run=true", "--trainer.logger=false"])
    (miner,) = [callback for callback in cli.trainer.callbacks if isinstance(callback, PairMiner)]
    assert cli.model.miner is miner
    assert miner.settings == {**PairMiner().settings, "strategy": "hard", "margin": 0.05}
    assert miner.statistics, "the miner built the pairs of the training step"


def test_a_second_miner_in_the_trainer_callbacks_is_refused_when_the_command_line_is_parsed(monkeypatch, capsys):
    instantiated = []
    monkeypatch.setattr(LitMetricCLI, "instantiate_classes", lambda cli: instantiated.append(cli))
    with pytest.raises(SystemExit):
        run(["fit", "--config", CONFIG, "--trainer.callbacks+=lit_metric.PairMiner"])
    error = capsys.readouterr().err
    assert "`trainer.callbacks` must not hold a PairMiner" in error and "`miner:`" in error and "`--miner.*`" in error
    assert not instantiated, "nothing is built or set up"


def printed_config(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run(["fit", *args, "--print_config"])
    printed = capsys.readouterr()
    assert exit_info.value.code in (None, 0), printed.err[-2000:]
    return printed.out


@pytest.mark.parametrize("name", ["digits", "digits.yaml"])
def test_a_bundled_config_is_found_by_name_from_any_folder(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    by_path = printed_config(capsys, "--config", str(BUNDLED_CONFIGS / "digits.yaml"))
    assert printed_config(capsys, "--config", name) == by_path
    assert "class_path: lit_metric.data.DigitsDataModule" in by_path


def test_bundled_overlays_stack_by_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    printed = printed_config(capsys, "--config", "digits", "--config", "predict")
    assert "class_path: lit_metric.EmbeddingWriter" in printed


@pytest.mark.parametrize("value", ["digit", "digits.yml", "configs/nothing.yaml"])
def test_a_config_that_is_neither_a_file_nor_bundled_is_refused_with_the_bundled_names(value, tmp_path, monkeypatch,
                                                                                     capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        run(["fit", "--config", value])
    error = capsys.readouterr().err
    assert f"--config {value!r} is neither a file nor a config bundled with lit_metric" in error
    assert f"bundled: {', '.join(bundled_config_names())}" in error
    assert {"digits", "att_faces", "wandb"} <= set(bundled_config_names())


def test_a_file_in_the_working_directory_wins_over_a_bundled_config_of_the_same_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "digits.yaml").write_text((BUNDLED_CONFIGS / "digits.yaml").read_text().replace("seed_everything: 0",
                                                                                               "seed_everything: 7"))
    assert "seed_everything: 7" in printed_config(capsys, "--config", "digits.yaml")


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"lit-metric {lit_metric.__version__} (lightning ")


def test_console_script_exits_zero_after_a_run(tmp_path):
    script = Path(sys.executable).with_name("lit-metric")
    result = subprocess.run(
        [script, "fit", "--config", CONFIG, "--trainer.fast_dev_run=true", "--trainer.logger=false"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_python_dash_m_is_the_console_script():
    result = subprocess.run([sys.executable, "-m", "lit_metric", "--help"], capture_output=True, text=True, check=True)
    assert "{fit,validate,test,predict}" in result.stdout


LOGIN = "machine api.wandb.ai\n  login user\n  password k\n"


@pytest.mark.parametrize(
    ("env", "netrc", "mode", "expected"),
    [
        ({}, "", 0o600, "offline"),
        ({"WANDB_API_KEY": "k"}, "", 0o600, None),
        ({"WANDB_MODE": "online"}, "", 0o600, "online"),
        ({}, LOGIN, 0o600, None),
        # wandb reads a netrc that others may read too, as Python's netrc refuses to by default.
        ({}, LOGIN, 0o644, None),
        ({"WANDB_BASE_URL": "https://wandb.example.com"}, LOGIN, 0o600, "offline"),
        ({"WANDB_BASE_URL": "https://wandb.example.com"}, LOGIN.replace("api.wandb.ai", "wandb.example.com"), 0o600, None),
        ({"NETRC": "elsewhere"}, LOGIN, 0o600, None),
    ],
)
def test_wandb_goes_offline_without_an_api_key(env, netrc, mode, expected, tmp_path, monkeypatch):
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, str(tmp_path / value) if name == "NETRC" else value)
    netrc_file = tmp_path / env.get("NETRC", ".netrc")
    netrc_file.write_text(netrc)
    netrc_file.chmod(mode)
    monkeypatch.setenv("HOME", str(tmp_path))
    wandb_offline_unless_logged_in()
    assert __import__("os").environ.get("WANDB_MODE") == expected


# Preemption: atomic checkpoint files, a checkpoint and a failing status on SIGTERM.


def test_fit_writes_checkpoints_atomically_and_saves_one_beside_last_ckpt_on_an_exception(fitted):
    _, cli = fitted
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    (preemption,) = [c for c in cli.trainer.callbacks if isinstance(c, PreemptionCheckpoint)]
    assert preemption.dirpath is None, "it follows the ModelCheckpoint's folder"


def test_the_user_s_plugins_are_kept_and_their_checkpoint_io_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fast = ["fit", "--config", CONFIG, "--trainer.fast_dev_run=true", "--trainer.logger=false"]
    environment = "lightning.pytorch.plugins.environments.LightningEnvironment"
    cli = run([*fast, f"--trainer.plugins={environment}"])
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert type(cli.trainer._accelerator_connector.cluster_environment).__name__ == "LightningEnvironment"
    cli = run([*fast, "--trainer.plugins=lightning.fabric.plugins.TorchCheckpointIO"])
    assert type(cli.trainer.strategy.checkpoint_io) is TorchCheckpointIO


def test_only_a_fit_that_checkpoints_gets_an_on_exception_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run(["fit", "--config", CONFIG, "--trainer.fast_dev_run=true", "--trainer.logger=false",
               "--trainer.enable_checkpointing=false", "--trainer.callbacks=[]"])
    assert not [c for c in cli.trainer.callbacks if isinstance(c, PreemptionCheckpoint)]


SIGTERM_AT = '''
import os, signal
import lightning as L

class SigtermAt(L.Callback):
    """Sends this process a SIGTERM after the training batch of global step `step`, as a scheduler would."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)
'''


def test_sigterm_saves_a_resumable_checkpoint_and_fails_the_command(tmp_path, monkeypatch):
    (tmp_path / "sigterm_at.py").write_text(SIGTERM_AT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    args = ["fit", "--config", CONFIG, "--trainer.logger=false", "--trainer.max_epochs=2",
            "--trainer.limit_train_batches=3", "--trainer.enable_progress_bar=false"]
    stop = '--trainer.callbacks+={"class_path": "sigterm_at.SigtermAt", "init_args": {"step": 4}}'
    result = subprocess.run(
        [sys.executable, "-m", "lit_metric", *args, stop], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert result.returncode == 143, result.stderr[-2000:]
    folder = tmp_path / "checkpoints"
    saved = torch.load(folder / "on_exception.ckpt", weights_only=True)
    assert saved["global_step"] == 4 and saved["epoch"] == 1 and saved["optimizer_states"]
    monkeypatch.chdir(tmp_path)
    resumed = run([*args, f"--ckpt_path={folder / 'on_exception.ckpt'}"])
    assert resumed.trainer.global_step == 6
    assert sorted(path.name for path in folder.iterdir()) == ["best-epoch01.ckpt", "last.ckpt"]
