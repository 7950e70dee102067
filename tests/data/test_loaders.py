"""PKDataLoader: a run resumed from a checkpoint taken after any batch ends bitwise as the uninterrupted one."""

from __future__ import annotations

from contextlib import nullcontext

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from lit_metric import ConvEmbedder, MetricLearningModule, PairMiner
from lit_metric.data import PKDataLoader, TensorImageDataset
from lit_metric.data.loaders import eval_loader, pk_train_loader

CLASSES, PER_CLASS, P, K = 6, 8, 3, 4  # 12 groups of K fill 4 batches of P classes an epoch
BATCHES_PER_EPOCH, EPOCHS = 4, 2


class Noise(nn.Module):
    """Augmentation that draws from torch's global generator, as torchvision's does."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image + 0.1 * torch.rand_like(image)


def dataset(augment: bool = False) -> TensorImageDataset:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(CLASSES).repeat_interleave(PER_CLASS)
    images = torch.rand(len(labels), 1, 8, 8, generator=generator) + labels.view(-1, 1, 1, 1) / CLASSES
    return TensorImageDataset(images, labels, transform=Noise() if augment else None)


class Data(L.LightningDataModule):
    def __init__(self, augment: bool, num_workers: int = 0) -> None:
        super().__init__()
        self.train, self.num_workers = dataset(augment), num_workers
        self.holdout = dataset()

    def train_dataloader(self) -> PKDataLoader:
        return pk_train_loader(self.train, P, K, replacement=False, seed=3, num_workers=self.num_workers)

    def val_dataloader(self):
        return eval_loader(self.holdout, batch_size=16, num_workers=0)


def fit(directory, augment, ckpt_path=None, num_workers=0):
    """Train with dropout, a miner schedule that changes at epoch 1 and a checkpoint after every batch; the final
    weights and the last validation and training figures."""
    L.seed_everything(0, verbose=False)
    model = MetricLearningModule(ConvEmbedder(embedding_dim=8, channels=(8, 16), dropout=0.3))
    miner = PairMiner(schedule=[{"epoch": 1, "strategy": "hard", "margin": 0.05}])
    checkpoints = ModelCheckpoint(directory, "{step}", every_n_train_steps=1, save_top_k=-1)
    trainer = L.Trainer(
        max_epochs=EPOCHS, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[checkpoints, miner],
    )
    trainer.fit(model, Data(augment, num_workers), ckpt_path=ckpt_path, weights_only=True)
    assert trainer.global_step == EPOCHS * BATCHES_PER_EPOCH
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
    return model.state_dict(), metrics


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The uninterrupted run, with augmentation drawn in the main process, and its checkpoints by step."""
    directory = tmp_path_factory.mktemp("checkpoints")
    return fit(directory, augment=True), directory


def assert_same_run(run, reference):
    weights, metrics = run
    assert weights.keys() == reference[0].keys()
    for name, value in weights.items():
        assert torch.equal(value, reference[0][name]), name
    assert metrics == reference[1]


# After the first batch, within an epoch, after its last batch, after the first batch of the next epoch.
@pytest.mark.parametrize("step", [1, 2, BATCHES_PER_EPOCH, BATCHES_PER_EPOCH + 1, 2 * BATCHES_PER_EPOCH - 1])
def test_a_run_resumed_after_any_batch_ends_bitwise_as_the_uninterrupted_one(uninterrupted, step, tmp_path):
    reference, directory = uninterrupted
    assert_same_run(fit(tmp_path, augment=True, ckpt_path=directory / f"step={step}.ckpt"), reference)


def test_with_workers_a_run_resumed_within_an_epoch_ends_bitwise_as_the_uninterrupted_one(tmp_path):
    # Without augmentation the workers draw nothing at random: the batches and their order are all that matter.
    reference = fit(tmp_path / "reference", augment=False)
    with pytest.warns(UserWarning, match="num_workers=2: batches and their order resume exactly"):
        resumed = fit(tmp_path / "resumed", False, tmp_path / "reference" / "step=6.ckpt", num_workers=2)
    assert_same_run(resumed, reference)


def loader(num_workers=0, augment=False):
    return pk_train_loader(dataset(augment), P, K, replacement=False, seed=3, num_workers=num_workers)


def batches(iterator, count):
    return [next(iterator)["index"].tolist() for _ in range(count)]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_the_state_counts_the_batches_yielded_not_those_the_workers_read_ahead(num_workers):
    interrupted = loader(num_workers)
    interrupted.sampler.set_epoch(1)
    iterator = iter(interrupted)
    seen = batches(iterator, 1)
    state = interrupted.state_dict()
    assert (state["epoch"], state["batches_done"]) == (1, 1)
    rest = batches(iterator, BATCHES_PER_EPOCH - 1)
    resumed = loader(num_workers)
    with pytest.warns(UserWarning) if num_workers else nullcontext():
        resumed.load_state_dict(state)
    assert [batch["index"].tolist() for batch in resumed] == rest
    assert seen + rest == [batch["index"].tolist() for batch in loader_at_epoch(1)]


def loader_at_epoch(epoch):
    whole = loader()
    whole.sampler.set_epoch(epoch)
    return whole


def test_a_finished_epoch_resumes_at_the_next_one_even_with_workers_that_start_before_set_epoch():
    finished = loader()
    finished.sampler.set_epoch(1)
    list(finished)
    resumed = loader(num_workers=2)
    with pytest.warns(UserWarning):
        resumed.load_state_dict(finished.state_dict())
    # Lightning creates the iterator, whose workers read the sampler at once, before it calls set_epoch.
    assert [batch["index"].tolist() for batch in resumed] == [b["index"].tolist() for b in loader_at_epoch(2)]


def test_the_next_batch_draws_the_random_numbers_the_uninterrupted_run_drew():
    interrupted = loader(augment=True)
    torch.manual_seed(0)
    iterator = iter(interrupted)
    next(iterator)
    state = interrupted.state_dict()
    expected = next(iterator)["image"]
    resumed = loader(augment=True)
    resumed.load_state_dict(state)
    torch.manual_seed(1)
    assert torch.equal(next(iter(resumed))["image"], expected)


def test_the_state_reads_back_with_weights_only(tmp_path):
    state = loader().state_dict()
    torch.save(state, tmp_path / "state.pt")
    restored = loader()
    restored.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert restored.state_dict()["random_state"]["python"] == state["random_state"]["python"]


def test_a_state_that_is_not_a_pk_loader_s_is_a_value_error():
    with pytest.raises(ValueError, match=r"`state_dict` lacks \['batches_done', 'random_state'\]"):
        loader().load_state_dict({"epoch": 0})


def test_the_sampler_must_be_a_pk_sampler():
    with pytest.raises(ValueError, match="`sampler` must be a PKSampler, got SequentialSampler"):
        PKDataLoader(dataset(), batch_size=4)

