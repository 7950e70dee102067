"""Freezing the backbone for the first epochs of fine-tuning, so that a new head learns before it moves."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import BaseFinetuning
from torch.optim import Optimizer

__all__ = ["BackboneFreeze"]


class BackboneFreeze(BaseFinetuning):
    """Trains only the parts outside the module's ``backbone`` for the first ``epochs`` epochs, then all of it.

    While frozen, the backbone is a fixed function. Its parameters get no gradients, so the optimizer leaves them
    alone: no update, no weight decay, no momentum. It runs in eval mode, so its BatchNorm layers normalise with
    their (pretrained) running statistics and keep them, and dropout is off: the features are those that
    evaluation sees. From epoch ``epochs`` on, the backbone trains in train mode.

    Unlike Lightning's ``BackboneFinetuning``, which adds the backbone to the optimizer in a new parameter group
    when it thaws, the optimizer holds the backbone's parameters from the start, in the groups that
    :meth:`~lit_metric.MetricLearningModule.parameter_groups` makes: the learning-rate multiplier, the warm-up and
    the schedule cover them throughout. The backbone is frozen at the start of each frozen epoch rather than before
    training, after DDP has wrapped the model: DDP then synchronises its parameters once they train, provided it
    tolerates the epochs without their gradients (``strategy: ddp_find_unused_parameters_true``).

    Args:
        epochs: epochs to keep the backbone frozen; 0 never freezes it.
    """

    def __init__(self, epochs: int = 1) -> None:
        super().__init__()
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"`epochs` must be a non-negative integer, got {epochs!r}")
        self.epochs = epochs

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        # Nothing is frozen yet (see the class docstring); only the backbone's presence is checked, before training.
        if getattr(pl_module, "backbone", None) is None:
            raise ValueError(
                f"BackboneFreeze needs a module with a `backbone`; {type(pl_module).__name__}'s is None (its "
                "embedding net has no `backbone` module)"
            )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A run resumed within an epoch, or after its last batch, starts training without the on_train_epoch_start
        # where BaseFinetuning freezes: the epoch it resumes in is frozen or thawed here.
        self.finetune_function(pl_module, trainer.current_epoch, trainer.optimizers[0])

    def finetune_function(self, pl_module: L.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        backbone = pl_module.backbone
        if epoch < self.epochs:
            self.freeze(backbone, train_bn=False)
            backbone.eval()
        elif epoch == self.epochs:
            self.make_trainable(backbone)
            backbone.train()
