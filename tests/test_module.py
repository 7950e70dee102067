"""Specification of MetricLearningModule: the steps of training, evaluation and prediction, and subclassing."""

import functools
import math
import pickle
import warnings
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from pytorch_metric_learning.losses import ContrastiveLoss, MultiSimilarityLoss, TripletMarginLoss
from torch import nn
from torch.utils.data import DataLoader

from lit_metric import (
    BackboneEmbedder,
    BinomialDevianceLoss,
    ConvEmbedder,
    MetricLearningModule,
    PairMiner,
    RetrievalMetrics,
)
from _mining_reference import loop_pairs
from lit_metric.data import TensorImageDataset
from lit_metric.functional import binomial_deviance, cosine_similarity
from lit_metric.hparams import RecordsArguments


def tiny_batch(classes=4, per_class=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(per_class)
    images = torch.rand(len(labels), 1, 8, 8, generator=generator) + labels.view(-1, 1, 1, 1) / classes
    return {"image": images, "label": labels, "index": torch.arange(len(labels))}


def rgb_batch(classes=4, per_class=3, size=16, seed=0):
    batch = tiny_batch(classes, per_class, seed)
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(len(batch["label"]), 3, size, size, generator=generator)
    return {**batch, "image": images + batch["label"].view(-1, 1, 1, 1) / classes}


def tiny_module(**kwargs):
    torch.manual_seed(0)
    return MetricLearningModule(ConvEmbedder(embedding_dim=8, channels=(8, 16)), **kwargs)


def tiny_trainer(**kwargs):
    options = dict(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )
    return L.Trainer(**{**options, **kwargs})


def loader(batch):
    return DataLoader(TensorImageDataset(batch["image"], batch["label"]), batch_size=len(batch["label"]))


class RecordingMiner(PairMiner):
    """A miner that weights only the first anchor's pairs, so its use is visible in the loss."""

    def mine(self, similarity, labels, reference_labels, anchor_index=None):
        pairs = super().mine(similarity, labels, reference_labels, anchor_index)
        pairs.positive[1:] = False
        pairs.negative[1:] = False
        self.last = pairs.matrices()
        return pairs


class LossRecorder(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.loss = outputs["loss"].detach()


def test_training_step_uses_the_miner_callbacks_pairs():
    # lr = 0 keeps the weights, and train-mode BatchNorm uses batch statistics, so the step can be replayed.
    module = tiny_module(optimizer=lambda params: torch.optim.SGD(params, lr=0.0))
    miner, recorder, batch = RecordingMiner(), LossRecorder(), tiny_batch()
    tiny_trainer(callbacks=[miner, recorder], max_steps=1).fit(module, loader(batch))
    m, w = miner.last
    module.train()
    expected = binomial_deviance(cosine_similarity(module.embed(batch["image"])), m, w)
    torch.testing.assert_close(recorder.loss, expected.detach())
    assert w[1:].sum() == 0 and w[0].sum() > 0


def test_without_a_miner_callback_the_papers_pairs_are_used():
    module, batch = tiny_module(), tiny_batch()
    module.eval()
    labels = batch["label"]
    same = labels[:, None] == labels[None, :]
    positive, negative = same & ~torch.eye(len(labels), dtype=torch.bool), ~same
    m = positive.float() - negative.float()
    w = positive / positive.sum() + negative / negative.sum()
    expected = BinomialDevianceLoss()(module.embed(batch["image"]), m, w.float())
    torch.testing.assert_close(module.training_step(batch, 0), expected)


@pytest.mark.parametrize("loss", [TripletMarginLoss, ContrastiveLoss, MultiSimilarityLoss])
def test_a_plain_loss_is_called_on_the_embeddings_and_labels_of_the_batch(loss):
    module, batch = tiny_module(criterion=loss()), tiny_batch()
    module.eval()
    expected = loss()(module.embed(batch["image"]), batch["label"])
    assert expected > 0, "a batch the loss has something to learn from"
    torch.testing.assert_close(module.training_step(batch, 0), expected)


def test_a_plain_loss_leaves_the_miner_unused_and_says_so(caplog):
    miner, recorder = RecordingMiner(), LossRecorder()
    with caplog.at_level("INFO"):
        tiny_trainer(callbacks=[miner, recorder], max_steps=1).fit(tiny_module(criterion=TripletMarginLoss()),
                                                                  loader(tiny_batch()))
    assert not hasattr(miner, "last") and miner.statistics == {}
    assert recorder.loss > 0
    assert "TripletMarginLoss is a plain loss(embeddings, labels): the PairMiner's pairs and settings are not used" in (
        caplog.text
    )


@pytest.mark.parametrize("criterion", [nn.Identity(), nn.Linear(8, 8), nn.Module(), "binomial"])
def test_a_criterion_that_is_neither_a_pair_criterion_nor_a_loss_of_embeddings_and_labels_is_refused(criterion):
    with pytest.raises(ValueError, match=r"`criterion` must be a pair criterion with from_pairs\(similarity, pairs\)"):
        tiny_module(criterion=criterion)


def test_validation_and_test_steps_return_the_embeddings_they_score():
    module, batch = tiny_module(), tiny_batch()
    module.eval()
    torch.testing.assert_close(module.validation_step(batch, 0), module.embed(batch["image"]))
    torch.testing.assert_close(module.test_step(batch, 0), module.embed(batch["image"]))


def test_predict_step_returns_the_embeddings():
    module, batch = tiny_module(), tiny_batch()
    module.eval()
    torch.testing.assert_close(module.predict_step(batch, 0), module.embed(batch["image"]))


def test_flip_test_embeds_an_image_and_its_mirror_image_outside_training():
    module, batch = tiny_module(flip_test=True), tiny_batch()
    images = batch["image"]
    module.eval()
    net = module.embedding_net
    expected = F.normalize(net(images), dim=1) + F.normalize(net(images.flip(-1)), dim=1)
    torch.testing.assert_close(module.embed(images), expected)
    # Mirror images get the same embedding, and training sees the plain network.
    torch.testing.assert_close(module.embed(images.flip(-1)), expected)
    module.train()
    torch.manual_seed(1)
    plain = net(images)
    torch.manual_seed(1)
    torch.testing.assert_close(module.embed(images), plain)


class Scaled(torch.nn.Module):
    def __init__(self, net, scale):
        super().__init__()
        self.net, self.scale = net, scale

    def forward(self, images):
        return self.net(images) * self.scale


@pytest.mark.parametrize("scale", [2.0**-100, 2.0**100])
def test_flip_test_sums_the_unit_embeddings_at_any_magnitude(scale):
    # F.normalize left rows below its eps (1e-12) shorter than 1, and made rows from 1e19 on zero in float32.
    module, images = tiny_module(flip_test=True).eval(), tiny_batch()["image"]
    expected = module.embed(images)
    module.embedding_net = Scaled(module.embedding_net, scale)
    assert torch.equal(module.embed(images), expected)


def test_validation_and_test_log_the_retrieval_metrics():
    batch = tiny_batch()
    module = tiny_module(metrics=RetrievalMetrics(k=[1, 2]))
    trainer = tiny_trainer()
    trainer.fit(module, loader(batch), loader(batch))
    assert {"val/recall@1", "val/map@r", "train/loss"} <= set(trainer.callback_metrics)
    results = trainer.test(module, loader(batch), verbose=False)[0]
    assert {"test/recall@1", "test/map@r"} <= set(results)
    assert 0 <= results["test/map@r"] <= 1


def test_optimizer_and_scheduler_are_built_from_callables():
    module = tiny_module(
        optimizer=lambda params: torch.optim.SGD(params, lr=0.5),
        scheduler=lambda optimizer: torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.1),
    )
    trainer = tiny_trainer(max_epochs=2)
    trainer.fit(module, loader(tiny_batch()))
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.5 * 0.1**2)


class QueriesFirst(torch.utils.data.Dataset):
    """A re-ID evaluation set read queries first, so that the first batch holds no gallery item."""

    def __init__(self, batch):
        self.batch = batch

    def __len__(self):
        return len(self.batch["label"])

    def __getitem__(self, i):
        item = {key: value[i] for key, value in self.batch.items()}
        return {**item, "is_query": torch.tensor(i < 6), "camera": torch.tensor(int(i >= 6))}


def test_the_sanity_check_does_not_score_a_partial_query_gallery_set():
    batch = tiny_batch()
    batch["label"] = torch.arange(6).repeat(2)  # each query's person is in the gallery, seen by the other camera
    evaluation = DataLoader(QueriesFirst(batch), batch_size=6)
    trainer = tiny_trainer(max_steps=1, num_sanity_val_steps=1)
    trainer.fit(tiny_module(metrics=RetrievalMetrics(k=[1, 2])), loader(batch), evaluation)
    assert float(trainer.callback_metrics["val/num_queries"]) == 6


def test_a_plateau_scheduler_watches_the_configured_metric():
    module = tiny_module(
        scheduler=lambda optimizer: torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer),
        scheduler_monitor="val/recall@1",
    )
    module.trainer = tiny_trainer()
    assert module.configure_optimizers()["lr_scheduler"]["monitor"] == "val/recall@1"


def test_a_plateau_scheduler_steps_after_the_epochs_that_validate():
    module = tiny_module(scheduler=lambda optimizer: torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer))
    batch = tiny_batch()
    trainer = tiny_trainer(max_epochs=4, check_val_every_n_epoch=2)
    trainer.fit(module, loader(batch), loader(batch))
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 2


def test_a_fit_shorter_than_the_validation_interval_validates_its_last_epoch(tmp_path):
    batch = tiny_batch()
    checkpoint = ModelCheckpoint(tmp_path, monitor="val/map@r", mode="max", filename="best")
    trainer = tiny_trainer(max_epochs=3, check_val_every_n_epoch=20, callbacks=[checkpoint], enable_checkpointing=True)
    trainer.fit(tiny_module(metrics=RetrievalMetrics(k=[1, 2])), loader(batch), loader(batch))
    assert "val/map@r" in trainer.callback_metrics
    assert checkpoint.best_model_path == str(tmp_path / "best.ckpt") and (tmp_path / "best.ckpt").is_file()
    assert torch.load(tmp_path / "best.ckpt", weights_only=False)["epoch"] == 2


class ValidatedEpochs(L.Callback):
    def __init__(self):
        self.epochs = []

    def on_validation_epoch_end(self, trainer, pl_module):
        self.epochs.append(trainer.current_epoch)


def test_the_validation_interval_holds_before_the_last_epoch():
    batch, validated = tiny_batch(), ValidatedEpochs()
    trainer = tiny_trainer(max_epochs=5, check_val_every_n_epoch=2, num_sanity_val_steps=0, callbacks=[validated])
    trainer.fit(tiny_module(metrics=RetrievalMetrics(k=[1, 2])), loader(batch), loader(batch))
    assert validated.epochs == [1, 3, 4]


class OtherMiner(PairMiner):
    """A miner of another class, whose state is saved apart from PairMiner's."""


def test_two_miner_callbacks_are_refused():
    trainer = tiny_trainer(callbacks=[PairMiner(), OtherMiner(strategy="hard")], max_steps=1)
    with pytest.raises(ValueError, match="at most one PairMiner, got 2"):
        trainer.fit(tiny_module(), loader(tiny_batch()))
    # Two of one class are refused by Lightning already: their states (the memory) would share a checkpoint entry.
    with pytest.raises(RuntimeError, match="more than one stateful callback of type `PairMiner`"):
        tiny_trainer(callbacks=[PairMiner(), PairMiner(strategy="hard")], max_steps=1)


@pytest.mark.parametrize("labels", [torch.arange(12).view(12, 1), torch.arange(11)])
def test_a_batch_needs_one_label_per_image(labels):
    batch = {**tiny_batch(), "label": labels}
    with pytest.raises(ValueError, match=r"`batch\['label'\]` must have shape \(12,\), one label per image"):
        tiny_module().training_step(batch, 0)


def checkpoint_of(module, tmp_path, batch=None):
    """The checkpoint of one training step of ``module``."""
    trainer = tiny_trainer(max_steps=1, enable_checkpointing=True, default_root_dir=tmp_path)
    trainer.fit(module, loader(batch if batch is not None else tiny_batch()))
    return trainer.checkpoint_callback.best_model_path


def assert_same_weights(loaded, module):
    assert loaded.state_dict().keys() == module.state_dict().keys()
    for name, value in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value)


def test_a_checkpoint_of_a_module_built_in_python_loads_with_weights_only_and_its_objects(tmp_path):
    module = tiny_module(
        criterion=BinomialDevianceLoss(alpha=3.0),
        optimizer=functools.partial(torch.optim.SGD, lr=0.1),
        scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=2),
        metrics=RetrievalMetrics(k=(1, 3)),
    )
    path = checkpoint_of(module, tmp_path)
    hparams = torch.load(path, weights_only=True)["hyper_parameters"]
    assert hparams["embedding_net"] == {
        "class_path": "lit_metric.networks.ConvEmbedder",
        "init_args": {"in_channels": 1, "embedding_dim": 8, "channels": [8, 16], "dropout": 0.0},
    }
    loaded = MetricLearningModule.load_from_checkpoint(path)
    assert type(loaded.embedding_net) is ConvEmbedder and loaded.criterion.alpha == 3.0
    assert loaded.val_metrics.k == (1, 3)
    optimizer = loaded.optimizer_factory(loaded.parameters())
    assert type(optimizer) is torch.optim.SGD and optimizer.defaults["lr"] == 0.1
    assert loaded.scheduler_factory(optimizer).step_size == 2
    assert_same_weights(loaded, module)


def test_construction_and_loading_warn_of_nothing(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module = tiny_module(criterion=BinomialDevianceLoss(alpha=3.0))
    path = checkpoint_of(module, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MetricLearningModule.load_from_checkpoint(path)


class Flatten(torch.nn.Module):
    """A user's network that lit_metric cannot record."""

    def __init__(self, pixels=64, dim=8):
        super().__init__()
        self.linear = torch.nn.Linear(pixels, dim)

    def forward(self, images):
        return self.linear(images.flatten(1))


class RecordedFlatten(RecordsArguments, Flatten):
    """The same network, recording the arguments it is built with."""


class LossWithTensor(BinomialDevianceLoss):
    def __init__(self, weights=torch.ones(2)):
        super().__init__()


def test_a_network_that_cannot_be_recorded_is_asked_for_by_name_on_load(tmp_path):
    torch.manual_seed(0)
    module = MetricLearningModule(Flatten())
    path = checkpoint_of(module, tmp_path)
    with pytest.raises(ValueError, match=r"`embedding_net`: .*test_module\.Flatten.*embedding_net=\.\.\."):
        MetricLearningModule.load_from_checkpoint(path)
    loaded = MetricLearningModule.load_from_checkpoint(path, embedding_net=Flatten())
    assert_same_weights(loaded, module)


def test_a_criterion_that_cannot_be_recorded_is_asked_for_by_name_on_load(tmp_path):
    path = checkpoint_of(tiny_module(criterion=LossWithTensor()), tmp_path)
    with pytest.raises(ValueError, match="`criterion`: .*LossWithTensor"):
        MetricLearningModule.load_from_checkpoint(path)
    assert type(MetricLearningModule.load_from_checkpoint(path, criterion=LossWithTensor()).criterion) is LossWithTensor


def test_a_user_network_that_records_its_arguments_loads_without_being_passed(tmp_path):
    torch.manual_seed(0)
    module = MetricLearningModule(RecordedFlatten(dim=5))
    loaded = MetricLearningModule.load_from_checkpoint(checkpoint_of(module, tmp_path))
    assert type(loaded.embedding_net) is RecordedFlatten and loaded.embedding_net.linear.out_features == 5
    assert_same_weights(loaded, module)


class ScaledModule(MetricLearningModule):
    """A user's subclass with an argument of its own."""

    def __init__(self, embedding_net, scale: float = 1.0, **kwargs):
        super().__init__(embedding_net, **kwargs)
        self.scale = scale


def test_a_subclass_s_own_arguments_are_recorded_with_the_module_s(tmp_path):
    torch.manual_seed(0)
    path = checkpoint_of(ScaledModule(ConvEmbedder(embedding_dim=8, channels=(8,)), scale=3.0, flip_test=True), tmp_path)
    loaded = ScaledModule.load_from_checkpoint(path)
    assert loaded.scale == 3.0 and loaded.flip_test


def test_an_optimizer_that_cannot_be_recorded_is_left_out_and_loads_as_the_default(tmp_path):
    module = tiny_module(optimizer=lambda params: torch.optim.SGD(params, lr=0.5))
    path = checkpoint_of(module, tmp_path)
    assert "optimizer" not in torch.load(path, weights_only=True)["hyper_parameters"]
    loaded = MetricLearningModule.load_from_checkpoint(path)
    assert type(loaded.optimizer_factory(loaded.parameters())) is torch.optim.Adam


def test_a_loaded_module_records_what_its_checkpoint_recorded(tmp_path):
    module = tiny_module(optimizer=functools.partial(torch.optim.SGD, lr=0.1))
    first = checkpoint_of(module, tmp_path / "first")
    loaded = MetricLearningModule.load_from_checkpoint(first)
    # LightningCLI's parser rebuilds the optimizer as a factory of its own, which records nothing by itself.
    second = checkpoint_of(loaded, tmp_path / "second")
    assert torch.load(second, weights_only=True)["hyper_parameters"]["optimizer"] == {
        "class_path": "torch.optim.sgd.SGD", "init_args": {"lr": 0.1}
    }


def test_an_old_checkpoint_with_pickled_objects_loads_only_when_trusted(tmp_path):
    module = tiny_module()
    path = tmp_path / "old.ckpt"
    hparams = {"embedding_net": module.embedding_net}
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hparams, "pytorch-lightning_version": "2.5.0"}, path)
    with pytest.raises(pickle.UnpicklingError, match="ConvEmbedder"):
        MetricLearningModule.load_from_checkpoint(path)
    assert_same_weights(MetricLearningModule.load_from_checkpoint(path, weights_only=False), module)


class DotProductModule(MetricLearningModule):
    """A user's subclass that changes one thing: the similarity, to a scaled dot product."""

    def similarity(self, embeddings, reference_embeddings):
        return torch.tanh(embeddings @ reference_embeddings.T)


def test_a_subclass_overrides_one_hook_and_trains():
    torch.manual_seed(0)
    module = DotProductModule(ConvEmbedder(embedding_dim=8, channels=(8, 16)))
    batch = tiny_batch()
    module.eval()
    embeddings = module.embed(batch["image"])
    m, w = module.mine(torch.tanh(embeddings @ embeddings.T), batch["label"], batch["label"], batch["index"]).matrices()
    expected = binomial_deviance(torch.tanh(embeddings @ embeddings.T), m, w)
    torch.testing.assert_close(module.training_step(batch, 0), expected)
    module.train()
    trainer = tiny_trainer(max_steps=3)
    trainer.fit(module, loader(batch))
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


def test_a_checkpoint_records_the_network_s_preprocessing(tmp_path):
    module = MetricLearningModule(BackboneEmbedder("test_resnet", embedding_dim=8, image_size=(16, 16)))
    trainer = tiny_trainer(max_steps=1, enable_checkpointing=True, default_root_dir=tmp_path)
    trainer.fit(module, loader(rgb_batch()))
    checkpoint = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=True)
    assert checkpoint["preprocessing"] == {"channels": 3, "image_size": [16, 16], "mean": [0.5] * 3, "std": [0.5] * 3}


def test_a_network_without_preprocessing_records_none():
    checkpoint = {}
    tiny_module().on_save_checkpoint(checkpoint)
    assert "preprocessing" not in checkpoint


def test_a_network_without_preprocessing_records_the_data_module_s_and_gets_it_back_on_loading():
    settings = {"channels": 3, "image_size": [64, 24], "mean": [0.5] * 3, "std": [0.25] * 3}
    trained, checkpoint = tiny_module(), {}
    trained._trainer = SimpleNamespace(datamodule=SimpleNamespace(preprocessing=settings))
    trained.on_save_checkpoint(checkpoint)
    assert checkpoint["preprocessing"] == settings
    loaded = tiny_module()
    assert loaded.preprocessing is None
    loaded.on_load_checkpoint(checkpoint)
    assert loaded.preprocessing == settings


# Fine-tuning controls: parameter groups, weight decay, warm-up.


class LearningRates(L.Callback):
    """The learning rate of every parameter group at the start of every training epoch."""

    def __init__(self):
        self.epochs = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.epochs.append([group["lr"] for group in trainer.optimizers[0].param_groups])


def backbone_module(**kwargs):
    torch.manual_seed(0)
    return MetricLearningModule(BackboneEmbedder("test_resnet", embedding_dim=8, image_size=(16, 16)), **kwargs)


def test_the_backbone_learns_at_its_multiple_of_the_rate_and_norms_and_biases_without_decay():
    module = backbone_module(
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05),
        backbone_lr_multiplier=0.1,
        decay_norms_and_biases=False,
    )
    module.trainer = tiny_trainer()
    groups = module.configure_optimizers().param_groups
    setting = {id(p): (group["lr"], group["weight_decay"]) for group in groups for p in group["params"]}
    assert len(setting) == len(list(module.parameters()))
    backbone = {id(p) for p in module.backbone.parameters()}
    for name, param in module.named_parameters():
        lr, decay = setting[id(param)]
        assert lr == pytest.approx(1e-4 if id(param) in backbone else 1e-3), name
        assert decay == (0.0 if param.ndim <= 1 else 0.05), name  # biases, norm scales and shifts


def test_without_fine_tuning_settings_the_optimizer_gets_the_parameters_as_before():
    module = backbone_module(optimizer=lambda params: torch.optim.SGD(params, lr=0.5))
    module.trainer = tiny_trainer()
    (group,) = module.configure_optimizers().param_groups
    assert group["lr"] == 0.5 and len(group["params"]) == len(list(module.parameters()))


def test_a_backbone_multiplier_without_a_backbone_is_named():
    module = tiny_module(backbone_lr_multiplier=0.1)
    with pytest.raises(ValueError, match=r"`backbone_lr_multiplier` 0.1 needs a backbone: the embedding net \(ConvEmbedder\)"):
        module.configure_optimizers()


def fit_epochs(module, max_epochs):
    rates = LearningRates()
    tiny_trainer(max_epochs=max_epochs, callbacks=[rates]).fit(module, loader(rgb_batch()))
    return rates.epochs


def test_warm_up_comes_first_then_the_schedule_over_the_epochs_left():
    cosine = lambda optimizer: torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=100)  # noqa: E731
    module = backbone_module(
        optimizer=lambda params: torch.optim.SGD(params, lr=1.0),
        scheduler=cosine,
        backbone_lr_multiplier=0.1,
        warmup_epochs=2,
        warmup_start_factor=0.1,
    )
    head_rates = [rates[1] for rates in fit_epochs(module, max_epochs=6)]
    # Linear from 0.1 to 1 over 2 epochs, then cosine over the 6 - 2 = 4 epochs left, whatever T_max said.
    expected = [0.1, 0.55, 1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 - math.cos(math.pi / 4))]
    assert head_rates == pytest.approx(expected)
    backbone_rates = [rates[0] for rates in module.trainer.callbacks[0].epochs]
    assert backbone_rates == pytest.approx([0.1 * rate for rate in expected])


@pytest.mark.parametrize(
    ("scheduler", "expected"),
    [
        (lambda optimizer: torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=200), [1.0, 0.75, 0.25]),
        (lambda optimizer: torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, 0.25, total_iters=100), [1.0, 0.75, 0.5]),
    ],
)
def test_without_warm_up_the_schedule_also_runs_over_max_epochs(scheduler, expected):
    module = tiny_module(optimizer=lambda params: torch.optim.SGD(params, lr=1.0), scheduler=scheduler)
    rates = LearningRates()
    tiny_trainer(max_epochs=3, callbacks=[rates]).fit(module, loader(tiny_batch()))
    assert [rate for (rate,) in rates.epochs] == pytest.approx(expected)


def test_warm_up_without_a_scheduler_keeps_the_full_rate_afterwards():
    module = backbone_module(optimizer=lambda params: torch.optim.SGD(params, lr=1.0), warmup_epochs=2)
    assert [rates[0] for rates in fit_epochs(module, max_epochs=4)] == pytest.approx([0.1, 0.55, 1.0, 1.0])


def test_warm_up_cannot_precede_a_plateau_scheduler():
    module = tiny_module(scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau, warmup_epochs=1)
    module.trainer = tiny_trainer()
    with pytest.raises(ValueError, match="`warmup_epochs` cannot precede a ReduceLROnPlateau scheduler"):
        module.configure_optimizers()


def test_warm_up_must_end_before_training_does():
    module = tiny_module(warmup_epochs=3)
    module.trainer = tiny_trainer(max_epochs=3)
    with pytest.raises(ValueError, match=r"`warmup_epochs` \(3\) must be fewer than max_epochs \(3\)"):
        module.configure_optimizers()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"backbone_lr_multiplier": -1.0}, "`backbone_lr_multiplier` must be >= 0, got -1.0"),
        ({"warmup_epochs": 1.5}, "`warmup_epochs` must be a non-negative integer, got 1.5"),
        ({"warmup_start_factor": 0.0}, r"`warmup_start_factor` must be in \(0, 1\], got 0.0"),
    ],
)
def test_bad_fine_tuning_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_module(**kwargs)


# The reference path with the miner's cross-batch memory.


class FixedMinerModule(MetricLearningModule):
    """The module with a given miner, for steps taken without a trainer."""

    def __init__(self, embedding_net, miner):
        super().__init__(embedding_net)
        self._miner = miner

    @property
    def miner(self):
        return self._miner


def items_batch(items, seed):
    """Samples of dataset ``items``, labelled ``item % 3``, as float64 feature rows."""
    generator = torch.Generator().manual_seed(seed)
    items = torch.tensor(items)
    return {"image": torch.randn(len(items), 6, generator=generator, dtype=torch.float64), "label": items % 3,
            "index": items}


@pytest.mark.parametrize("batch_as_reference", [True, False])
@pytest.mark.parametrize(
    "strategy, weighting", [(s, w) for s in ("all", "hard", "topk_negatives") for w in ("balanced", "per_anchor", "uniform")]
)
def test_a_step_with_memory_gives_the_loss_and_gradients_written_out_by_hand(strategy, weighting, batch_as_reference):
    torch.manual_seed(0)
    settings = dict(negative_cost=2.0, margin=0.2, negatives_per_anchor=3)
    miner = PairMiner(strategy, weighting, **settings, memory_size=9, batch_as_reference=batch_as_reference)
    module = FixedMinerModule(torch.nn.Linear(6, 4).double(), miner)
    module.training_step(items_batch([0, 1, 2, 3, 4, 5], seed=1), 0)
    held = miner.memory.embeddings, miner.memory.labels, miner.memory.indexes
    # Items 3, 4 and 5 come again: their embeddings in the memory are no positives of theirs.
    batch = items_batch([3, 4, 5, 6, 7, 8], seed=2)
    loss = module.training_step(batch, 1)
    loss.backward()
    embeddings = module.embedding_net(batch["image"])
    if batch_as_reference:
        reference = torch.cat([embeddings, held[0]])
        reference_labels, reference_indexes = torch.cat([batch["label"], held[1]]), torch.cat([batch["index"], held[2]])
    else:
        # The memory alone, updated with the batch, detached.
        reference = torch.cat([held[0], embeddings.detach()])[-9:]
        reference_labels = torch.cat([held[1], batch["label"]])[-9:]
        reference_indexes = torch.cat([held[2], batch["index"]])[-9:]
    similarity = F.normalize(embeddings, dim=1) @ F.normalize(reference, dim=1).T
    m, w = loop_pairs(
        similarity.detach(), batch["label"].tolist(), reference_labels.tolist(),
        lambda i, j: batch["index"][i] == reference_indexes[j], strategy, weighting, 2.0, 0.2, 3,
    )
    expected = (w * torch.log1p(torch.exp(-2.0 * (similarity - 0.5) * m))).sum()
    gradients = {name: parameter.grad.clone() for name, parameter in module.named_parameters()}
    module.zero_grad()
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
    for name, parameter in module.named_parameters():
        torch.testing.assert_close(gradients[name], parameter.grad, rtol=1e-12, atol=1e-14, msg=name)
    assert miner.memory.indexes.tolist() == [3, 4, 5, 3, 4, 5, 6, 7, 8]


@pytest.mark.parametrize("index, got", [(None, "None"), (torch.arange(5), r"shape \(5,\)")])
def test_a_step_with_memory_needs_the_dataset_index_of_every_image(index, got):
    module = FixedMinerModule(torch.nn.Linear(6, 4).double(), PairMiner(memory_size=4))
    batch = {**items_batch([0, 1, 2, 3], seed=0), "index": index}
    with pytest.raises(ValueError, match=rf"the miner's memory needs `batch\['index'\]`.* of shape \(4,\).*got {got}"):
        module.training_step(batch, 0)


class BatchOnlyModule(FixedMinerModule):
    """A user's subclass that keeps filling the memory but mines the batch alone."""

    def mine_with_memory(self, memory, embeddings, labels, indexes, reference, reference_labels, anchor_index):
        memory.append(reference, reference_labels, indexes)
        similarity = self.similarity(embeddings, reference)
        return similarity, self.mine(similarity.detach(), labels, reference_labels, anchor_index)


def test_a_subclass_overrides_the_memory_hook():
    batches = [items_batch([0, 1, 2, 3], seed=1), items_batch([4, 5, 6, 7], seed=2)]
    torch.manual_seed(0)
    plain = FixedMinerModule(torch.nn.Linear(6, 4).double(), PairMiner())
    torch.manual_seed(0)
    module = BatchOnlyModule(torch.nn.Linear(6, 4).double(), PairMiner(memory_size=8))
    for step, batch in enumerate(batches):
        torch.testing.assert_close(module.training_step(batch, step), plain.training_step(batch, step))
    assert module.miner.memory.indexes.tolist() == list(range(8))


def test_a_memory_restored_for_a_network_of_another_width_is_refused_not_reset():
    saved = PairMiner(memory_size=8)
    FixedMinerModule(torch.nn.Linear(6, 4).double(), saved).training_step(items_batch([0, 1, 2, 3], seed=1), 0)
    miner = PairMiner(memory_size=8)
    miner.load_state_dict(saved.state_dict())
    module = FixedMinerModule(torch.nn.Linear(6, 3).double(), miner)
    with pytest.raises(ValueError, match=r"the memory holds embeddings of width 4, got embeddings of width 3"):
        module.training_step(items_batch([4, 5, 6, 7], seed=2), 1)
    assert miner.memory.indexes.tolist() == [0, 1, 2, 3]
