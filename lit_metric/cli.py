"""The ``lit-metric`` command: LightningCLI over lit_metric's module and any LightningDataModule."""

from __future__ import annotations

import importlib
import netrc
import os
import re
import signal
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import lightning as L
import torch
import yaml
from jsonargparse import ActionConfigFile
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.callbacks import OnExceptionCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lit_metric import __version__
from lit_metric.callbacks.pair_miner import PairMiner
from lit_metric.checkpoint import AtomicCheckpointIO, PreemptionCheckpoint
from lit_metric.module import MetricLearningModule

__all__ = [
    "BUNDLED_CONFIGS", "LitMetricCLI", "bundled_config", "bundled_config_names", "main", "run",
    "wandb_offline_unless_logged_in",
]

BUNDLED_CONFIGS = Path(__file__).parent / "configs"
"""The configs that ship with lit_metric; ``--config NAME`` picks one by name."""


def bundled_config_names() -> list[str]:
    """The names of the bundled configs, e.g. ``digits`` for ``BUNDLED_CONFIGS/digits.yaml``, sorted."""
    return sorted(path.stem for path in BUNDLED_CONFIGS.glob("*.yaml"))


def bundled_config(value: str) -> str:
    """The ``--config`` value to read: ``value`` itself when it is a file or a config string, else a bundled config.

    A bare name such as ``digits`` or ``digits.yaml`` names ``BUNDLED_CONFIGS/digits.yaml``. A name or path that is
    neither a file nor bundled raises a ``TypeError`` that lists the bundled configs.
    """
    # A config string holds a colon, braces or brackets; a name or path does not (an existing path returns first).
    if Path(value).is_file() or not re.fullmatch(r"[^\s:{}\[\]]+", value):
        return value
    bundled = BUNDLED_CONFIGS / (value if value.endswith(".yaml") else f"{value}.yaml")
    if Path(value).name == value and bundled.is_file():
        return str(bundled)
    raise TypeError(
        f"--config {value!r} is neither a file nor a config bundled with lit_metric; "
        f"bundled: {', '.join(bundled_config_names())}"
    )


class BundledConfigFile(ActionConfigFile):
    """``--config``: a config file, a config string, or the name of a bundled config (see :func:`bundled_config`)."""

    def __call__(self, parser: Any, cfg: Any, values: Any, option_string: str | None = None) -> None:
        super().__call__(parser, cfg, bundled_config(values) if isinstance(values, str) else values, option_string)


def wandb_offline_unless_logged_in() -> None:
    """Set ``WANDB_MODE=offline`` when the user has neither chosen a mode nor given W&B an API key.

    Runs then stay on disk and ``wandb sync`` can upload them later, instead of W&B prompting for a login. The key
    is looked up where ``wandb login`` puts it: the netrc file (``NETRC``, else ``~/.netrc`` or ``~/_netrc``) entry
    of the W&B host (``WANDB_BASE_URL``, else api.wandb.ai).
    """
    if "WANDB_MODE" in os.environ or os.environ.get("WANDB_API_KEY"):
        return
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    home = Path.home()
    files = [Path(os.environ["NETRC"])] if os.environ.get("NETRC") else [home / ".netrc", home / "_netrc"]
    if not any(_has_login(file, host) for file in files):
        os.environ["WANDB_MODE"] = "offline"


def _has_login(file: Path, host: str | None) -> bool:
    try:
        # An explicit path: netrc's default file is refused when others may read it, which wandb does not do.
        return netrc.netrc(str(file)).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class LogConfigCallback(SaveConfigCallback):
    """Saves the resolved config into each logger's run folder and logs it as hyperparameters.

    Every logger (W&B, TensorBoard, CSV) then holds the whole run configuration, defaults included, as a nested
    dict under ``trainer``, ``model``, ``data``, ``seed_everything`` and so on, instead of only the module's
    ``__init__`` arguments. The ``config.yaml`` goes into the run's own folder (W&B's run files, which sync uploads,
    or a CSV or TensorBoard version folder), never into a folder that runs share, such as the working directory
    without a logger, where it could replace a user's file.
    """

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # The YAML dump turns classes, callables and paths into the plain strings of the config file.
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in trainer.loggers:
            logger.log_hyperparams(config)
            folder = _run_folder(logger)
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
                self.parser.save(
                    self.config, str(folder / self.config_filename), skip_none=False, overwrite=True,
                    multifile=self.multifile,
                )


def _run_folder(logger: Logger) -> Path | None:
    """The folder of this run alone: W&B's run files, a versioned log folder, or ``None`` for a logger without one."""
    if isinstance(logger, WandbLogger):
        return Path(logger.experiment.dir)
    log_dir = logger.log_dir
    return None if log_dir is None else Path(log_dir)


class LitMetricCLI(LightningCLI):
    """LightningCLI with :class:`~lit_metric.MetricLearningModule` (or a subclass) and any data module.

    The :class:`~lit_metric.PairMiner` is a top-level group, ``miner:`` in a config and ``--miner.*`` on the command
    line (e.g. ``--miner.strategy hard``), and joins the trainer's callbacks; a second one in ``trainer.callbacks``
    is refused when the command line is parsed. After ``fit`` it prints the last validation metrics and where the
    best checkpoint is.

    Checkpoints are written by :class:`~lit_metric.checkpoint.AtomicCheckpointIO` unless ``trainer.plugins`` holds
    another ``CheckpointIO``, and a ``fit`` that checkpoints also gets a
    :class:`~lit_metric.checkpoint.PreemptionCheckpoint` unless ``trainer.callbacks`` holds one (or Lightning's
    ``OnExceptionCheckpoint``): on ``SIGTERM`` it saves ``on_exception.ckpt`` beside ``last.ckpt``.
    """

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        kwargs.setdefault("dump_header", [f"lightning.pytorch=={L.__version__}"])
        parser = self.parser_class(**kwargs)
        parser.add_argument(
            "-c", "--config", action=BundledConfigFile,
            help=f"A config file in YAML or JSON, or the name of a bundled config: {', '.join(bundled_config_names())}",
        )
        return parser

    def setup_parser(
        self, add_subcommands: bool, main_kwargs: dict[str, Any], subparser_kwargs: dict[str, Any]
    ) -> None:
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        self.parser.add_argument(
            "--version", action="version",
            version=f"lit-metric {__version__} (lightning {L.__version__}, torch {torch.__version__})",
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(PairMiner, "miner")

    def before_instantiate_classes(self) -> None:
        # The module takes the one PairMiner among the callbacks; finding two only at the first step would come after
        # the set-up, and they could not both build the pairs.
        callbacks = self._get(self.config, "trainer.callbacks") or []
        for callback in callbacks if isinstance(callbacks, list) else [callbacks]:
            if _is_pair_miner(callback.class_path):
                self.parser.error(
                    f"`trainer.callbacks` must not hold a PairMiner ({callback.class_path}), a second miner: configure "
                    "the one miner under `miner:` in a config or with `--miner.*` options, e.g. `--miner.strategy hard`"
                )

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        config = self._get(self.config_init, "trainer", default={})
        plugins = _as_list(kwargs.pop("plugins", config.get("plugins")))
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            plugins.append(AtomicCheckpointIO())
        callbacks = _as_list(kwargs.pop("callbacks", config.get("callbacks")))
        if (
            self.subcommand == "fit"
            and config.get("enable_checkpointing") is not False
            and not any(isinstance(c, (PreemptionCheckpoint, OnExceptionCheckpoint)) for c in callbacks)
        ):
            callbacks.append(PreemptionCheckpoint())
        return super().instantiate_trainer(plugins=plugins, callbacks=callbacks, **kwargs)

    def after_fit(self) -> None:
        trainer = self.trainer
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if metrics:
            width = max(map(len, metrics))
            lines = [f"{name:<{width}}  {value:.4f}" for name, value in sorted(metrics.items())]
            rank_zero_info("Validation retrieval metrics after fit:\n" + "\n".join(lines))
        if trainer.checkpoint_callback is not None and trainer.checkpoint_callback.best_model_path:
            rank_zero_info(f"Best checkpoint: {trainer.checkpoint_callback.best_model_path}")


def _as_list(value: Any) -> list:
    """A trainer argument that takes one object or a list of them, as a new list."""
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _is_pair_miner(class_path: str) -> bool:
    module, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name, None)
    return isinstance(cls, type) and issubclass(cls, PairMiner)


def main() -> None:
    """Entry point of ``lit-metric`` and ``python -m lit_metric``: runs the command line in ``sys.argv``.

    A run that ``SIGTERM`` stopped, after saving its checkpoint, exits with status 143 (128 + ``SIGTERM``, what a shell
    reports for a process that ``SIGTERM`` ended). Lightning's ``SIGTERMException`` is a ``SystemExit`` without a
    status, which would exit 0: schedulers and ``&&`` chains would take a preempted run for a finished one.
    """
    try:
        run()
    except SIGTERMException as stop:
        raise SystemExit(128 + signal.SIGTERM) from stop


def run(args: list[str] | None = None) -> LitMetricCLI:
    """Runs ``lit-metric`` with ``args`` (default: ``sys.argv``) and returns the CLI, with its trainer and model."""
    wandb_offline_unless_logged_in()
    return LitMetricCLI(
        MetricLearningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=LogConfigCallback,
        # LightningCLI's own save goes to trainer.log_dir, which W&B runs share and which is the working directory
        # without a logger; LogConfigCallback saves into each run's folder instead.
        save_config_kwargs={"save_to_log_dir": False},
        args=args,
    )
