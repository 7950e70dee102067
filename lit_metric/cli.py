"""The ``lit-metric`` command: LightningCLI over lit_metric's module and any LightningDataModule."""

from __future__ import annotations

import netrc
import os

import lightning as L
import yaml
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info

from lit_metric.module import MetricLearningModule

__all__ = ["LitMetricCLI", "main", "run", "wandb_offline_unless_logged_in"]


def wandb_offline_unless_logged_in() -> None:
    """Set ``WANDB_MODE=offline`` when the user has neither chosen a mode nor given W&B an API key.

    Runs then stay on disk and ``wandb sync`` can upload them later, instead of W&B prompting for a login.
    """
    if "WANDB_MODE" in os.environ or os.environ.get("WANDB_API_KEY"):
        return
    try:
        logged_in = netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        logged_in = False
    if not logged_in:
        os.environ["WANDB_MODE"] = "offline"


class LogConfigCallback(SaveConfigCallback):
    """Saves the resolved config next to the logs, as LightningCLI does, and logs it as hyperparameters.

    Every logger (W&B, TensorBoard, CSV) then holds the whole run configuration, defaults included, as a nested
    dict under ``trainer``, ``model``, ``data``, ``seed_everything`` and so on, instead of only the module's
    ``__init__`` arguments.
    """

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # The YAML dump turns classes, callables and paths into the plain strings of the config file.
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in trainer.loggers:
            logger.log_hyperparams(config)


class LitMetricCLI(LightningCLI):
    """LightningCLI with :class:`~lit_metric.MetricLearningModule` (or a subclass) and any data module.

    After ``fit`` it prints the last validation metrics and where the best checkpoint is.
    """

    def after_fit(self) -> None:
        trainer = self.trainer
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if metrics:
            width = max(map(len, metrics))
            lines = [f"{name:<{width}}  {value:.4f}" for name, value in sorted(metrics.items())]
            rank_zero_info("Validation retrieval metrics after fit:\n" + "\n".join(lines))
        if trainer.checkpoint_callback is not None and trainer.checkpoint_callback.best_model_path:
            rank_zero_info(f"Best checkpoint: {trainer.checkpoint_callback.best_model_path}")


def main() -> None:
    """Entry point of ``lit-metric`` and ``python -m lit_metric``: runs the command line in ``sys.argv``."""
    run()


def run(args: list[str] | None = None) -> LitMetricCLI:
    """Runs ``lit-metric`` with ``args`` (default: ``sys.argv``) and returns the CLI, with its trainer and model."""
    wandb_offline_unless_logged_in()
    return LitMetricCLI(
        MetricLearningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=LogConfigCallback,
        save_config_kwargs={"overwrite": True},
        args=args,
    )
