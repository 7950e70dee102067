"""Exact distributed training: two gloo processes on CPU give the loss, gradients and weights of one process that
sees the whole global batch, also with a cross-batch memory, which is the same on every process, and the P x K
sampler gives each rank disjoint, class-balanced batches."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from pytorch_metric_learning.losses import ContrastiveLoss, MultiSimilarityLoss, TripletMarginLoss
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler

from _ddp import run_processes
from lit_metric import MetricLearningModule, PairMiner
from lit_metric.data import PKSampler, TensorImageDataset

SETTINGS = [
    dict(strategy=strategy, weighting=weighting)
    for strategy, weighting in itertools.product(["all", "hard", "topk_negatives"], ["balanced", "per_anchor", "uniform"])
] + [dict(strategy="hard", weighting="balanced", negative_cost=25.0, margin=0.3)]
# Unequal shards: rank 0 holds 13 rows of the global batch and rank 1 the other 11.
SHARDS = [slice(0, 13), slice(13, 24)]


class MinerModule(MetricLearningModule):
    """The module with a fixed miner, for steps taken without a trainer."""

    def __init__(self, miner: PairMiner) -> None:
        super().__init__(embedding_net())
        self._miner = miner

    @property
    def miner(self) -> PairMiner:
        return self._miner


class StepAsForward(nn.Module):
    """Makes the training step DDP's forward, as Lightning's wrapper does."""

    def __init__(self, module: MetricLearningModule) -> None:
        super().__init__()
        self.module = module

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.module.training_step(batch, 0)


def embedding_net() -> nn.Module:
    # No BatchNorm: its batch statistics are per process unless synchronised, which is not what is under test.
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 16))


def global_batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(5, (24,), generator=generator)
    images = torch.rand(24, 1, 8, 8, generator=generator) + labels.view(-1, 1, 1, 1) / 5
    return {"image": images, "label": labels}


def gradients(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: parameter.grad.clone() for name, parameter in module.named_parameters()}


def pair_criterion_modules() -> list[MetricLearningModule]:
    """The binomial deviance under every miner setting."""
    return [MinerModule(PairMiner(**settings)) for settings in SETTINGS]


def plain_loss_modules() -> list[MetricLearningModule]:
    """Losses of pytorch-metric-learning, called as loss(embeddings, labels): each process computes one on the global
    batch."""
    return [MetricLearningModule(embedding_net(), criterion=loss()) for loss in (TripletMarginLoss, ContrastiveLoss,
                                                                                 MultiSimilarityLoss)]


def one_step_of_each(rank: int, world_size: int, modules) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """Each module's share of the loss and DDP-averaged gradients after one step on this rank's shard."""
    shard = {name: value[SHARDS[rank]] for name, value in global_batch().items()}
    results = []
    for module in modules():
        model = DistributedDataParallel(StepAsForward(module))
        loss = model(shard)
        loss.backward()
        results.append((loss.detach() / world_size, gradients(module)))
    return results


@pytest.mark.parametrize("modules", [pair_criterion_modules, plain_loss_modules], ids=lambda modules: modules.__name__)
def test_one_step_gives_the_single_process_loss_and_gradients(modules, tmp_path):
    per_rank = run_processes(one_step_of_each, tmp_path, modules)
    for index, module in enumerate(modules()):
        label = f"module {index}, {module.criterion!r}, {module.miner.settings}"
        loss = module.training_step(global_batch(), 0)
        loss.backward()
        assert loss > 0, label
        # Each process's share of the loss; the shares sum to the global loss.
        shares = torch.stack([per_rank[rank][index][0] for rank in range(2)])
        torch.testing.assert_close(shares.sum(), loss.detach(), atol=1e-6, rtol=1e-5, msg=f"loss, {label}")
        expected = gradients(module)
        for rank in range(2):
            for name, grad in per_rank[rank][index][1].items():
                torch.testing.assert_close(grad, expected[name], atol=1e-5, rtol=1e-5, msg=f"{name}, {label}")


def one_step_with_labels_of_rank_dtype(rank: int, world_size: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    shard = {name: value[SHARDS[rank]] for name, value in global_batch().items()}
    shard["label"] = shard["label"].to(torch.int32 if rank == 0 else torch.int64)
    module = MinerModule(PairMiner())
    model = DistributedDataParallel(StepAsForward(module))  # held: its hooks average the gradients in backward
    model(shard).backward()
    return gradients(module)


def items_batch(items: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """A global batch of dataset ``items``; an item's label is the same in every batch."""
    labels = torch.randint(5, (40,), generator=torch.Generator().manual_seed(1))[items]
    images = torch.rand(len(items), 1, 8, 8, generator=torch.Generator().manual_seed(seed)) + labels.view(-1, 1, 1, 1) / 5
    return {"image": images, "label": labels, "index": items}


# The memory is filled by a global batch of items 12-35; the next holds items 0-23, so 12 anchors have an earlier
# embedding in it.
MEMORY_BATCHES = [items_batch(torch.arange(12, 36), seed=2), items_batch(torch.arange(24), seed=3)]
MEMORY_SETTINGS = [dict(settings, batch_as_reference=True) for settings in SETTINGS] + [
    dict(strategy=strategy, weighting="per_anchor", batch_as_reference=False) for strategy in ("all", "hard")
]


def memory_step(module: MetricLearningModule, batches: list[dict[str, torch.Tensor]], model: nn.Module) -> torch.Tensor:
    """Fill the memory with the first batch, without gradients, then the loss of the second through ``model``."""
    with torch.no_grad():
        module.training_step(batches[0], 0)
    loss = model(batches[1])
    loss.backward()
    return loss.detach()


def one_memory_step_per_setting(rank: int, world_size: int) -> list[tuple]:
    """Each setting's loss share, DDP-averaged gradients and memory after a step against a filled memory."""
    shards = [{name: value[SHARDS[rank]] for name, value in batch.items()} for batch in MEMORY_BATCHES]
    results = []
    for settings in MEMORY_SETTINGS:
        module = MinerModule(PairMiner(**settings, memory_size=30))
        loss = memory_step(module, shards, DistributedDataParallel(StepAsForward(module)))
        memory = module.miner.memory
        results.append((loss / world_size, gradients(module), (memory.embeddings, memory.labels, memory.indexes)))
    return results


def test_a_step_with_memory_gives_the_single_process_loss_gradients_and_memory_for_every_setting(tmp_path):
    per_rank = run_processes(one_memory_step_per_setting, tmp_path)
    for index, settings in enumerate(MEMORY_SETTINGS):
        module = MinerModule(PairMiner(**settings, memory_size=30))
        loss = memory_step(module, MEMORY_BATCHES, StepAsForward(module))
        shares = torch.stack([per_rank[rank][index][0] for rank in range(2)])
        torch.testing.assert_close(shares.sum(), loss, atol=1e-6, rtol=1e-5, msg=f"loss, {settings}")
        expected = gradients(module)
        memory = module.miner.memory
        for rank in range(2):
            for name, grad in per_rank[rank][index][1].items():
                torch.testing.assert_close(grad, expected[name], atol=1e-5, rtol=1e-5, msg=f"{name}, {settings}")
            # The global batches, rank 0's rows first, in every process's memory.
            for held, single in zip(per_rank[rank][index][2], (memory.embeddings, memory.labels, memory.indexes)):
                torch.testing.assert_close(held, single, atol=1e-6, rtol=1e-5)
        assert memory.indexes.tolist() == list(range(30, 36)) + list(range(24))


def test_processes_may_hold_labels_of_different_integer_widths(tmp_path):
    module = MinerModule(PairMiner())
    module.training_step(global_batch(), 0).backward()
    expected = gradients(module)
    for rank_gradients in run_processes(one_step_with_labels_of_rank_dtype, tmp_path):
        for name, grad in rank_gradients.items():
            torch.testing.assert_close(grad, expected[name], atol=1e-5, rtol=1e-5, msg=name)


def one_step_with_an_empty_batch_on_rank_one(rank: int, world_size: int) -> str:
    shard = {name: value[:5] if rank == 0 else value[:0] for name, value in global_batch().items()}
    try:
        MinerModule(PairMiner()).training_step(shard, 0)
    except ValueError as error:
        return str(error)
    return "no error"


def test_an_empty_batch_on_one_process_is_refused_on_every_process(tmp_path):
    messages = run_processes(one_step_with_an_empty_batch_on_rank_one, tmp_path)
    assert messages == ["every process needs a non-empty training batch, got batch sizes [5, 0] by rank"] * 2


# A few steps of Lightning DDP against one process on the same global batches.

CLASSES, PER_CLASS, P, K = 8, 12, 4, 3


def dataset() -> TensorImageDataset:
    generator = torch.Generator().manual_seed(2)
    labels = torch.arange(CLASSES).repeat_interleave(PER_CLASS)
    templates = torch.randn(CLASSES, 1, 8, 8, generator=generator)
    return TensorImageDataset(templates[labels] + torch.randn(len(labels), 1, 8, 8, generator=generator), labels)


class GlobalBatches(Sampler):
    """The batches that two ranks of ``sampler`` train on together, one global batch per step, rank 0's rows first."""

    def __init__(self, sampler: PKSampler) -> None:
        self.sampler = sampler

    def __iter__(self):
        batches = self.sampler.global_batches()
        return iter(torch.cat(batches[i : i + 2]).tolist() for i in range(0, len(batches), 2))

    def __len__(self) -> int:
        return len(self.sampler.global_batches()) // 2

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)


class Recorder(L.Callback):
    """Saves each step's batch and logged values, and the final weights, to a file per rank."""

    def __init__(self, directory) -> None:
        self.directory = directory
        self.steps = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        logged = {name: float(value) for name, value in trainer.callback_metrics.items()}
        self.steps.append({"epoch": trainer.current_epoch, "index": batch["index"].tolist(), **logged})

    def on_train_end(self, trainer, pl_module):
        weights = {name: value.detach().clone() for name, value in pl_module.state_dict().items()}
        recorded = {"steps": self.steps, "weights": weights, "memory": pl_module.miner.memory.state_dict()}
        torch.save(recorded, self.directory / f"rank{trainer.global_rank}.pt")


def fit(directory, loader: DataLoader, **trainer_options) -> None:
    torch.manual_seed(0)
    module = MetricLearningModule(embedding_net(), optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9))
    # Epoch 0 mines all pairs; epoch 1 mines hard pairs weighted per anchor, which needs the all-reduced counts,
    # against a memory of the last 40 samples of the global batches (24 a step).
    second = {"epoch": 1, "strategy": "hard", "weighting": "per_anchor", "negative_cost": 4.0, "use_memory": True}
    miner = PairMiner(memory_size=40, use_memory=False, schedule=[second])
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        callbacks=[miner, Recorder(directory)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer_options,
    )
    trainer.fit(module, loader)


@pytest.fixture(scope="module")
def ddp_and_single_runs(tmp_path_factory):
    """A two-process DDP fit and the single-process fit on the same global batches."""
    ddp_dir, single_dir = tmp_path_factory.mktemp("ddp"), tmp_path_factory.mktemp("single")
    data = dataset()
    # Built before the processes exist: the sampler must find its rank when iterated, not here.
    sampler = PKSampler(data.labels, classes_per_batch=P, samples_per_class=K, seed=3)
    fit(ddp_dir, DataLoader(data, sampler=sampler, batch_size=P * K, drop_last=True), strategy="ddp_fork", devices=2)
    global_sampler = PKSampler(data.labels, classes_per_batch=P, samples_per_class=K, num_replicas=2, seed=3)
    fit(single_dir, DataLoader(data, batch_sampler=GlobalBatches(global_sampler)), devices=1)
    ddp = [torch.load(ddp_dir / f"rank{rank}.pt") for rank in range(2)]
    return ddp, torch.load(single_dir / "rank0.pt")


def test_a_few_lightning_ddp_steps_give_the_single_process_weights(ddp_and_single_runs):
    ddp, single = ddp_and_single_runs
    # 8 classes x 4 groups of K make 8 batches of P groups per epoch: 4 steps per epoch on each rank.
    assert len(single["steps"]) == len(ddp[0]["steps"]) == len(ddp[1]["steps"]) == 8
    for rank in range(2):
        for name, value in single["weights"].items():
            torch.testing.assert_close(ddp[rank]["weights"][name], value, atol=1e-5, rtol=1e-5, msg=name)


def test_every_rank_ends_with_the_single_process_memory(ddp_and_single_runs):
    ddp, single = ddp_and_single_runs
    assert single["memory"]["indexes"].shape == (40,)
    for rank in range(2):
        assert torch.equal(ddp[rank]["memory"]["indexes"], single["memory"]["indexes"])
        assert torch.equal(ddp[rank]["memory"]["labels"], single["memory"]["labels"])
        torch.testing.assert_close(ddp[rank]["memory"]["embeddings"], single["memory"]["embeddings"], atol=1e-5, rtol=1e-5)


def test_the_logged_loss_and_mining_statistics_are_those_of_the_global_batch(ddp_and_single_runs):
    ddp, single = ddp_and_single_runs
    keys = ["train/loss", "mining/pairs_kept", "mining/num_positive", "mining/num_negative"]
    for rank in range(2):
        for ddp_step, single_step in zip(ddp[rank]["steps"], single["steps"]):
            for key in keys:
                assert ddp_step[key] == pytest.approx(single_step[key], rel=1e-5), key
    # The schedule switched to hard mining in the second epoch.
    assert all(step["mining/pairs_kept"] == 1.0 for step in single["steps"] if step["epoch"] == 0)
    assert all(step["mining/pairs_kept"] < 1.0 for step in single["steps"] if step["epoch"] == 1)


def test_under_lightning_ddp_each_rank_gets_disjoint_class_balanced_batches(ddp_and_single_runs):
    ddp, _ = ddp_and_single_runs
    labels = dataset().labels
    for epoch in range(2):
        per_rank = [[step["index"] for step in ddp[rank]["steps"] if step["epoch"] == epoch] for rank in range(2)]
        assert len(per_rank[0]) == len(per_rank[1]) == 4
        seen = [index for batches in per_rank for batch in batches for index in batch]
        assert len(seen) == len(set(seen)), f"a sample is used twice in epoch {epoch}"
        for batch in itertools.chain(*per_rank):
            classes, counts = torch.unique(labels[batch], return_counts=True)
            assert len(classes) == P and bool((counts == K).all())
    first, second = ([step["index"] for step in ddp[0]["steps"] if step["epoch"] == e] for e in range(2))
    assert first != second, "the second epoch must reshuffle"


def test_a_short_ddp_fit_from_the_cli(tmp_path):
    config = Path(__file__).parents[1] / "configs" / "ddp_cpu.yaml"
    command = [sys.executable, "-m", "lit_metric", "fit", f"--config={config}", "--trainer.logger=false"]
    limits = ["--trainer.max_epochs=1", "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false"]
    result = subprocess.run(command + limits, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Validation retrieval metrics after fit" in result.stdout + result.stderr
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in result.stdout + result.stderr
    # Both ranks gather the embeddings for the pictures; rank 0 draws them once.
    pictures = sorted(path.name for path in (tmp_path / "lightning_logs" / "version_0" / "pictures").iterdir())
    assert pictures == ["embedding_projection-epoch000.png", "retrieval_grid-epoch000.png"]


def test_a_ddp_fit_on_a_folder_of_images_from_the_cli(orl_faces, tmp_path):
    # configs/att_faces.yaml on 2 processes: each rank reads the folder, takes its own P x K batches of the 20
    # training people and evaluates its share of the held-out people; the metric and the pictures see all of them.
    config = Path(__file__).parents[1] / "configs" / "att_faces.yaml"
    command = [sys.executable, "-m", "lit_metric", "fit", f"--config={config}", "--trainer.logger=false"]
    options = [
        f"--data.init_args.root={orl_faces}",
        "--data.init_args.val_classes=s21..s39",
        "--data.init_args.classes_per_batch=5",
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
        "--trainer.max_epochs=1",
        "--trainer.check_val_every_n_epoch=1",
        "--trainer.enable_progress_bar=false",
    ]
    result = subprocess.run(command + options, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in output
    # 19 held-out people x 5 images, each scored once although DistributedSampler pads one rank's share of 95.
    assert re.search(r"val/num_queries\s+95\.0000", output)
    pictures = sorted(path.name for path in (tmp_path / "lightning_logs" / "version_0" / "pictures").iterdir())
    assert pictures == ["embedding_projection-epoch000.png", "retrieval_grid-epoch000.png"]
