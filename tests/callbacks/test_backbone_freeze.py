"""Specification of BackboneFreeze: a frozen backbone is a fixed function, and it trains again on time."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from lit_metric import BackboneEmbedder, BackboneFreeze, ConvEmbedder, MetricLearningModule
from lit_metric.data import TensorImageDataset


def backbone_module():
    torch.manual_seed(0)
    network = BackboneEmbedder("test_resnet", embedding_dim=8, image_size=(16, 16))
    # AdamW with weight decay: a frozen parameter must escape the decay as well as the gradient step.
    return MetricLearningModule(network, optimizer=lambda params: torch.optim.AdamW(params, lr=0.01, weight_decay=0.5))


def rgb_loader(batches=2):
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat(3 * batches)
    images = torch.rand(len(labels), 3, 16, 16, generator=generator) + labels.view(-1, 1, 1, 1) / 4
    return DataLoader(TensorImageDataset(images, labels), batch_size=12)


class ModeRecorder(L.Callback):
    """Records, at every training step, whether the backbone and its BatchNorm layers train and need gradients."""

    def __init__(self):
        self.steps = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        backbone = pl_module.backbone
        norms = [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        self.steps.append(
            {
                "epoch": trainer.current_epoch,
                "training": backbone.training,
                "norms_training": any(m.training for m in norms),
                "requires_grad": any(p.requires_grad for p in backbone.parameters()),
            }
        )


def fit(module, epochs, freeze, callbacks=(), ckpt_path=None, **kwargs):
    recorder = ModeRecorder()
    trainer = L.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=bool(callbacks),
        enable_progress_bar=False, enable_model_summary=False, callbacks=[BackboneFreeze(freeze), recorder, *callbacks],
        **kwargs,
    )
    trainer.fit(module, rgb_loader(), rgb_loader(1), ckpt_path=ckpt_path, weights_only=True)
    return recorder.steps


def test_a_frozen_backbone_keeps_its_weights_and_batch_norm_statistics_while_the_head_trains():
    module = backbone_module()
    before = {k: v.clone() for k, v in module.embedding_net.state_dict().items()}
    fit(module, epochs=1, freeze=1)
    after = module.embedding_net.state_dict()
    backbone = [k for k in before if k.startswith("backbone.")]
    assert any("running_mean" in k for k in backbone)
    assert all(torch.equal(before[k], after[k]) for k in backbone)
    assert not torch.equal(before["head.0.weight"], after["head.0.weight"])


def test_a_frozen_backbone_runs_in_eval_mode_also_after_a_validation_within_the_epoch():
    steps = fit(backbone_module(), epochs=2, freeze=1, val_check_interval=1)
    frozen, thawed = steps[:2], steps[2:]
    assert [step["epoch"] for step in steps] == [0, 0, 1, 1]
    assert all(not s["training"] and not s["norms_training"] and not s["requires_grad"] for s in frozen)
    assert all(s["training"] and s["norms_training"] and s["requires_grad"] for s in thawed)


def test_the_backbone_trains_from_the_epoch_it_thaws():
    module = backbone_module()
    before = {k: v.clone() for k, v in module.backbone.state_dict().items()}
    fit(module, epochs=2, freeze=1)  # the first epoch leaves the backbone as it was, as the test above shows
    after = module.backbone.state_dict()
    assert not torch.equal(before["conv1.0.weight"], after["conv1.0.weight"])
    assert not torch.equal(before["bn1.running_mean"], after["bn1.running_mean"])


def test_a_run_resumed_within_a_frozen_epoch_or_after_its_last_batch_keeps_the_backbone_frozen(tmp_path):
    # Two batches an epoch: steps 1 and 2 are within and at the end of the first frozen epoch.
    uninterrupted = fit(backbone_module(), epochs=3, freeze=2, callbacks=[checkpoint_every_step(tmp_path)])
    for step in (1, 2):
        resumed = fit(backbone_module(), epochs=3, freeze=2, ckpt_path=tmp_path / f"step={step}.ckpt")
        assert resumed == uninterrupted[step:]


def checkpoint_every_step(directory):
    return ModelCheckpoint(directory, "{step}", every_n_train_steps=1, save_top_k=-1)


def test_a_module_without_a_backbone_is_named():
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, callbacks=[BackboneFreeze()])
    module = MetricLearningModule(ConvEmbedder(in_channels=3, embedding_dim=8, channels=(8,)))
    with pytest.raises(ValueError, match="BackboneFreeze needs a module with a `backbone`"):
        trainer.fit(module, rgb_loader())


@pytest.mark.parametrize("epochs", [-1, 1.5, True])
def test_epochs_must_be_a_non_negative_integer(epochs):
    with pytest.raises(ValueError, match="`epochs` must be a non-negative integer"):
        BackboneFreeze(epochs)
