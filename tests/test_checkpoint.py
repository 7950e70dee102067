"""Specification of checkpoint files that survive kills: a save is atomic in the target's own folder and leaves no
orphans; a fit that stops on an exception leaves a full, resumable checkpoint beside ``last.ckpt``."""

import os
import signal
import subprocess
import sys
import tempfile
import textwrap

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader

from lit_metric import ConvEmbedder, MetricLearningModule
from lit_metric.checkpoint import AtomicCheckpointIO, PreemptionCheckpoint, remove_partial_files
from lit_metric.data import TensorImageDataset

OLD = {"weights": torch.arange(4.0), "epoch": 1}
NEW = {"weights": torch.ones(1000), "epoch": 2}


def contents(folder):
    return sorted(path.name for path in folder.iterdir())


def test_a_save_writes_a_hidden_file_in_the_target_folder_and_nothing_in_tmpdir(tmp_path, monkeypatch):
    elsewhere = tmp_path / "tmpdir"
    elsewhere.mkdir()
    monkeypatch.setenv("TMPDIR", str(elsewhere))
    monkeypatch.setattr(tempfile, "tempdir", str(elsewhere))
    written = []
    save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, file: (written.append(file.name), save(obj, file)))
    target = tmp_path / "run" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(NEW, target)
    assert written == [str(target.with_name(f".last.ckpt.tmp-{os.getpid()}"))]
    assert contents(target.parent) == ["last.ckpt"] and contents(elsewhere) == []
    assert torch.equal(torch.load(target, weights_only=True)["weights"], NEW["weights"])


@pytest.mark.parametrize("error", [KeyboardInterrupt, OSError])
def test_a_save_that_fails_midway_keeps_the_previous_checkpoint_and_removes_its_partial_file(error, tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint(OLD, target)

    def broken_save(obj, file):
        file.write(b"PK\x03\x04 half a checkpoint")
        raise error("killed during the save")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(error):
        io.save_checkpoint(NEW, target)
    assert contents(tmp_path) == ["last.ckpt"]
    assert torch.equal(io.load_checkpoint(target, weights_only=True)["weights"], OLD["weights"])


KILLED_SAVE = textwrap.dedent(
    """
    import sys, time, torch
    from lit_metric.checkpoint import AtomicCheckpointIO

    def slow_save(obj, file):
        file.write(b"PK\\x03\\x04 the first bytes")
        file.flush()
        print("writing", flush=True)
        time.sleep(60)

    torch.save = slow_save
    AtomicCheckpointIO().save_checkpoint({"epoch": 2}, sys.argv[1])
    """
)


def test_a_save_killed_by_sigkill_keeps_the_previous_checkpoint_and_the_next_save_removes_its_leftover(tmp_path):
    target = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint(OLD, target)
    child = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(target)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "writing\n"
    child.send_signal(signal.SIGKILL)
    child.wait()
    leftover = f".last.ckpt.tmp-{child.pid}"
    assert contents(tmp_path) == [leftover, "last.ckpt"]
    assert torch.equal(io.load_checkpoint(target, weights_only=True)["weights"], OLD["weights"])
    assert contents(tmp_path) == ["last.ckpt"], "loading (a resume) removes the leftover"
    (tmp_path / leftover).write_bytes(b"PK")
    io.save_checkpoint(NEW, tmp_path / "best.ckpt")
    assert contents(tmp_path) == ["best.ckpt", "last.ckpt"], "a save removes the leftovers in its folder"


def test_only_leftovers_of_saves_are_removed(tmp_path):
    own = tmp_path / f".last.ckpt.tmp-{os.getpid()}"
    keep = ["notes.tmp-1", ".hidden", "last.ckpt", ".last.ckpt.tmp-x", own.name]
    for name in [*keep, ".best.ckpt.tmp-123"]:
        (tmp_path / name).write_text("")
    assert remove_partial_files(tmp_path) == [tmp_path / ".best.ckpt.tmp-123"]
    assert contents(tmp_path) == sorted(keep)


def test_remote_paths_are_saved_by_lightning_s_own_io(tmp_path):
    io = AtomicCheckpointIO()
    io.save_checkpoint(OLD, "memory://run/last.ckpt")
    assert io.load_checkpoint("memory://run/last.ckpt", weights_only=True)["epoch"] == 1


# The on-exception checkpoint of a fit.


class StopAt(L.Callback):
    """Raises ``error`` after the training batch of global step ``step``, as Lightning does after a SIGTERM."""

    def __init__(self, step, error=SIGTERMException):
        self.step, self.error = step, error

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            raise self.error()


def fit(tmp_path, *callbacks, ckpt_path=None, max_epochs=2, val=None):
    torch.manual_seed(0)
    module = MetricLearningModule(ConvEmbedder(embedding_dim=8, channels=(8,)))
    labels = torch.arange(4).repeat_interleave(6)
    images = torch.rand(len(labels), 1, 8, 8, generator=torch.Generator().manual_seed(0))
    trainer = L.Trainer(
        max_epochs=max_epochs, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, callbacks=[ModelCheckpoint(save_last=True), *callbacks],
        plugins=[AtomicCheckpointIO()],
    )
    train = DataLoader(TensorImageDataset(images, labels), batch_size=8)
    trainer.fit(module, train, val, ckpt_path=ckpt_path, weights_only=True)
    return trainer


@pytest.mark.parametrize("error", [SIGTERMException, RuntimeError])
def test_a_fit_stopped_by_an_exception_leaves_a_full_checkpoint_beside_last_ckpt(error, tmp_path):
    with pytest.raises(error):
        fit(tmp_path, StopAt(step=4, error=error), PreemptionCheckpoint())
    folder = tmp_path / "checkpoints"
    assert contents(folder) == ["epoch=0-step=3.ckpt", "last.ckpt", "on_exception.ckpt"]
    checkpoint = torch.load(folder / "on_exception.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 4 and checkpoint["epoch"] == 1
    assert {"state_dict", "optimizer_states", "loops", "callbacks", "hyper_parameters"} <= set(checkpoint)


def test_a_fit_resumes_from_the_on_exception_checkpoint_and_removes_it_when_done(tmp_path):
    with pytest.raises(SIGTERMException):
        fit(tmp_path, StopAt(step=4), PreemptionCheckpoint())
    on_exception = tmp_path / "checkpoints" / "on_exception.ckpt"
    resumed = fit(tmp_path, PreemptionCheckpoint(), ckpt_path=on_exception)
    assert resumed.global_step == 6
    assert not on_exception.exists()


def test_an_exception_before_the_checkpoint_folder_is_chosen_saves_nothing(tmp_path):
    callback = PreemptionCheckpoint()
    assert callback.ckpt_path is None

    class FailAtSetup(L.Callback):
        def setup(self, *args, **kwargs):
            raise RuntimeError("bad config")

    with pytest.raises(RuntimeError, match="bad config"):
        fit(tmp_path, FailAtSetup(), callback)
    assert not (tmp_path / "checkpoints").exists()


def test_a_given_folder_is_kept(tmp_path):
    with pytest.raises(SIGTERMException):
        fit(tmp_path, StopAt(step=1), PreemptionCheckpoint(tmp_path / "elsewhere", "preempted"))
    assert contents(tmp_path / "elsewhere") == ["preempted.ckpt"]


class SigtermInValidation(L.Callback):
    """Sends this process SIGTERM during the first validation batch of ``epoch``, as a cluster's preemption does."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking and trainer.current_epoch == self.epoch and batch_idx == 0:
            os.kill(os.getpid(), signal.SIGTERM)


def validate_on(tmp_path, *callbacks, **kwargs):
    """``fit`` with a validation of 24 images in 3 batches of 8."""
    labels = torch.arange(4).repeat_interleave(6)
    images = torch.rand(len(labels), 1, 8, 8, generator=torch.Generator().manual_seed(1))
    return fit(tmp_path, *callbacks, val=DataLoader(TensorImageDataset(images, labels), batch_size=8), **kwargs)


class ValidatedEpochs(L.Callback):
    """The epochs whose validation ran to its end, and the number of queries it scored."""

    def __init__(self):
        self.epochs = []

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.epochs.append((trainer.current_epoch, int(trainer.callback_metrics["val/num_queries"])))


def test_a_sigterm_during_validation_stops_the_fit_once_the_validation_is_over(tmp_path):
    validated = ValidatedEpochs()
    with pytest.raises(SIGTERMException):
        validate_on(tmp_path, SigtermInValidation(epoch=0), PreemptionCheckpoint(), validated)
    on_exception = tmp_path / "checkpoints" / "on_exception.ckpt"
    validate_on(tmp_path, PreemptionCheckpoint(), validated, ckpt_path=on_exception)
    assert validated.epochs == [(0, 24), (1, 24)]


def test_a_sigterm_during_the_last_validation_stops_the_fit_with_every_validation_done(tmp_path):
    validated = ValidatedEpochs()
    with pytest.raises(SIGTERMException):
        validate_on(tmp_path, SigtermInValidation(epoch=1), PreemptionCheckpoint(), validated)
    assert validated.epochs == [(0, 24), (1, 24)]
