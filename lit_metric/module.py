"""The LightningModule that trains an embedding network with a pair criterion or a plain loss, and evaluates it."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import IO, Any

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.core.mixins import HyperparametersMixin
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters, _given_hyperparameters_context
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.parsing import collect_init_args
from torch import Tensor, nn
from torch.optim.lr_scheduler import LinearLR, ReduceLROnPlateau, SequentialLR
from typing_extensions import Self

from lit_metric.callbacks.pair_miner import PairMiner
from lit_metric.distributed import gather_rows, gather_rows_with_grad, gather_sizes, rank, world_size
from lit_metric.functional.deviance import cosine_similarity
from lit_metric.functional.norms import unit_rows
from lit_metric.functional.pairs import Pairs
from lit_metric.hparams import Unrecorded, as_config
from lit_metric.losses import BinomialDevianceLoss
from lit_metric.memory import CrossBatchMemory
from lit_metric.metrics import RetrievalMetrics

__all__ = ["MetricLearningModule"]

# The constructor arguments that set a torch schedule's length, in scheduler steps: CosineAnnealingLR's, and
# LinearLR's, PolynomialLR's and ConstantLR's.
SCHEDULE_LENGTHS = ("T_max", "total_iters")

# The module arguments that a checkpoint cannot do without: when one cannot be recorded, loading asks for it.
REQUIRED_ON_LOAD = ("embedding_net", "criterion")


class MetricLearningModule(L.LightningModule):
    """Trains ``embedding_net`` with ``criterion`` on the global batch and logs retrieval metrics.

    Batches are dicts with at least ``"image"`` and ``"label"``; evaluation batches also carry the dataset
    ``"index"`` and, for re-ID, ``"camera"``, ``"is_query"`` and ``"is_gallery"``; so do training batches when the
    miner has a cross-batch memory. Each step of the work is its own method (:meth:`embed`, :meth:`gather_reference`,
    :meth:`similarity`, :meth:`mine`, and :meth:`mine_with_memory` with the miner's memory) so that a subclass
    changes one thing at a time.

    Args:
        embedding_net: maps a batch of images to ``(B, D)`` embeddings.
        criterion: a pair criterion, with ``from_pairs(similarity, pairs)`` (``BinomialDevianceLoss()``, the
            default), which takes the pairs of the :class:`~lit_metric.PairMiner`; or a plain loss module called as
            ``criterion(embeddings, labels)``, such as ``pytorch_metric_learning.losses.TripletMarginLoss()``, which
            mines or weights pairs itself: the :class:`~lit_metric.PairMiner` then goes unused. Either sees the
            global batch under DDP (:meth:`training_step`).
        optimizer: builds the optimizer from the parameters (LightningCLI's ``OptimizerCallable``).
        scheduler: builds an LR scheduler from the optimizer, or ``None``.
        metrics: retrieval metric for validation and test (each gets its own copy); defaults to
            ``RetrievalMetrics()``.
        scheduler_monitor: the logged metric that a ``ReduceLROnPlateau`` scheduler watches.
        flip_test: outside training, embed each image as the sum of the unit embeddings of the image and of its
            left-right mirror image, the "flip test" of re-ID; validation, test, predict and search then see it.
        backbone_lr_multiplier: the learning rate of the :attr:`backbone`'s parameters relative to the others',
            e.g. 0.1 for a pretrained backbone under a new head.
        decay_norms_and_biases: ``False`` puts one-dimensional parameters (biases, the scales and shifts of norm
            layers, GeM's ``p``) in parameter groups without weight decay.
        warmup_epochs: epochs of linear warm-up, from ``warmup_start_factor`` times each learning rate to the full
            one. The ``scheduler`` then takes over for the ``max_epochs - warmup_epochs`` epochs left.
        warmup_start_factor: the first warm-up epoch's share of the learning rate, in ``(0, 1]``.

    Checkpoints hold the arguments as plain data, so that :meth:`load_from_checkpoint` rebuilds the module with
    ``weights_only=True``: the config that LightningCLI built it from, or, for a module built in Python, what
    :func:`~lit_metric.hparams.as_config` records of each argument (lit_metric's networks, criteria and metrics,
    optimizer and scheduler classes and ``functools.partial`` factories of them). An ``embedding_net`` or
    ``criterion`` that cannot be recorded must be passed to :meth:`load_from_checkpoint`; other such arguments are
    left out, and load as their defaults unless passed.

    The optimizer sees ``self.parameters()`` as before unless ``backbone_lr_multiplier`` or
    ``decay_norms_and_biases`` asks for parameter groups (:meth:`parameter_groups`). Schedulers step every epoch,
    and a schedule's length (``T_max`` of ``CosineAnnealingLR``, ``total_iters`` of ``LinearLR``, ``PolynomialLR`` and
    ``ConstantLR``) follows the trainer's ``max_epochs``: whatever the config says, it is set to the
    ``max_epochs - warmup_epochs`` epochs after the warm-up, so that a shorter or longer run still ends its schedule
    on its last epoch. The last epoch is always validated, also when ``check_val_every_n_epoch`` skips it
    (:meth:`on_train_epoch_start`).
    Freezing the backbone for the first epochs is the job of the :class:`~lit_metric.callbacks.BackboneFreeze`
    callback.
    """

    def __init__(
        self,
        embedding_net: nn.Module,
        criterion: nn.Module | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        metrics: RetrievalMetrics | None = None,
        scheduler_monitor: str = "val/map@r",
        flip_test: bool = False,
        backbone_lr_multiplier: float = 1.0,
        decay_norms_and_biases: bool = True,
        warmup_epochs: int = 0,
        warmup_start_factor: float = 0.1,
    ) -> None:
        super().__init__()
        if backbone_lr_multiplier < 0:
            raise ValueError(f"`backbone_lr_multiplier` must be >= 0, got {backbone_lr_multiplier}")
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
            raise ValueError(f"`warmup_epochs` must be a non-negative integer, got {warmup_epochs!r}")
        if not 0 < warmup_start_factor <= 1:
            raise ValueError(f"`warmup_start_factor` must be in (0, 1], got {warmup_start_factor}")
        if criterion is not None:
            _takes_pairs(criterion)  # refuses a criterion that is neither kind, by name
        self._save_hyperparameters()
        self.embedding_net = embedding_net
        self.criterion = criterion if criterion is not None else BinomialDevianceLoss()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_monitor = scheduler_monitor
        self.flip_test = flip_test
        self.backbone_lr_multiplier = backbone_lr_multiplier
        self.decay_norms_and_biases = decay_norms_and_biases
        self.warmup_epochs = warmup_epochs
        self.warmup_start_factor = warmup_start_factor
        metrics = metrics if metrics is not None else RetrievalMetrics()
        self.val_metrics = metrics.clone()
        self.test_metrics = metrics.clone()
        self._default_miner = PairMiner()
        self._recorded_preprocessing: dict | None = None

    def _save_hyperparameters(self) -> None:
        """Saves the arguments of ``__init__`` (a subclass's included) as plain data, which ``weights_only`` reads."""
        if _given_hyperparameters.get() is not None:
            # LightningCLI is building the module and gives the config it builds it from.
            self.save_hyperparameters()
            return
        hparams = {}
        for arguments in collect_init_args(inspect.currentframe().f_back, [], classes=(HyperparametersMixin,)):
            for name, value in arguments.items():
                try:
                    hparams[name] = as_config(value)
                except ValueError:
                    if name in REQUIRED_ON_LOAD:
                        hparams[name] = Unrecorded.config(name, value)
        # Lightning's loader rebuilds the arguments from these configs as it does for LightningCLI's, and nothing
        # unpicklable reaches the hyperparameters, so no "is an instance of nn.Module" warning either.
        with _given_hyperparameters_context(hparams, instantiator="lightning.pytorch.cli.instantiate_module"):
            self.save_hyperparameters()

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls,
        checkpoint_path: str | Path | IO,
        map_location: Any = None,
        hparams_file: str | Path | None = None,
        strict: bool | None = None,
        weights_only: bool = True,
        **kwargs: Any,
    ) -> Self:
        """Lightning's :meth:`~lightning.pytorch.LightningModule.load_from_checkpoint`, reading the file with
        ``weights_only=True`` unless told otherwise.

        Args:
            checkpoint_path: a checkpoint of this class or a subclass, a path, URL or file object.
            map_location: where the tensors go, as for :func:`torch.load`.
            hparams_file: a YAML or CSV file of hyperparameters that replaces the checkpoint's.
            strict: whether the checkpoint's state dict must match the module's keys exactly.
            weights_only: read only tensors and plain data, so that a malicious file cannot run code; ``False``
                unpickles any object, which only a checkpoint of a trusted source may be, e.g. an old checkpoint
                that pickled its network into its hyperparameters.
            kwargs: arguments of ``__init__`` that replace the checkpoint's, e.g. ``embedding_net=MyNet()`` for a
                network the checkpoint could not record.
        """
        return super().load_from_checkpoint(
            checkpoint_path, map_location, hparams_file, strict, weights_only=weights_only, **kwargs
        )

    def forward(self, images: Tensor) -> Tensor:
        return self.embed(images)

    @property
    def preprocessing(self) -> dict | None:
        """How images must be prepared for the network (``channels``, ``image_size``, ``mean``, ``std``), as its
        ``preprocessing`` attribute says (:class:`~lit_metric.networks.BackboneEmbedder` has one), else as the
        checkpoint it was loaded from records, or ``None``.

        The image data modules take the settings that their config leaves unset from it. Checkpoints record it
        under ``"preprocessing"``, or, for a network that declares none, the preprocessing of the data module that
        trained it, so that search by example prepares new images the same way.
        """
        return getattr(self.embedding_net, "preprocessing", None) or self._recorded_preprocessing

    @property
    def backbone(self) -> nn.Module | None:
        """The pretrained part of the network, which the fine-tuning controls address: the embedding net's
        ``backbone`` attribute (:class:`~lit_metric.networks.BackboneEmbedder` has one), or ``None``. A subclass
        overrides it to name another part."""
        backbone = getattr(self.embedding_net, "backbone", None)
        return backbone if isinstance(backbone, nn.Module) else None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        datamodule = getattr(self._trainer, "datamodule", None)
        preprocessing = self.preprocessing or getattr(datamodule, "preprocessing", None)
        if preprocessing:
            checkpoint["preprocessing"] = dict(preprocessing)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._recorded_preprocessing = checkpoint.get("preprocessing")
        if self._trainer is None:
            # Just built by load_from_checkpoint from these hyperparameters: keep their records of the arguments that
            # the rebuilt objects cannot record (LightningCLI's optimizer factories, a config's own classes), so that
            # the module's next checkpoint rebuilds the same.
            for name, value in checkpoint.get(self.CHECKPOINT_HYPER_PARAMS_KEY, {}).items():
                if name not in self.hparams:
                    try:
                        self.hparams[name] = as_config(value)
                    except ValueError:
                        pass  # an unrecordable argument given to load_from_checkpoint stays unrecorded

    def embed(self, images: Tensor) -> Tensor:
        """``(B, ...)`` images to ``(B, D)`` embeddings; with ``flip_test`` outside training, the sum of the unit
        embeddings of ``images`` and of their mirror images along the last (width) axis."""
        embeddings = self.embedding_net(images)
        if self.flip_test and not self.training:
            mirrored = self.embedding_net(images.flip(-1))
            # Unit rows first, so that neither view outweighs the other in the cosine of the sum.
            embeddings = unit_rows(embeddings) + unit_rows(mirrored)
        return embeddings

    def gather_reference(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """References that the local anchors are compared with: the global batch.

        On one process that is the batch itself. Under ``torch.distributed`` (DDP) it is every process's batch in
        rank order, gathered with gradients: the backward pass sums each reference's gradient over the processes and
        hands every process the part of its own rows. Batches of different sizes are padded for the gather and the
        padding is dropped, so no process waits on a shape that never comes.

        Args:
            embeddings: ``(B, D)`` embeddings of this process's batch.
            labels: ``(B,)`` labels of this process's batch.

        Returns:
            ``(reference_embeddings (R, D), reference_labels (R,), anchor_index (B,))``, where ``anchor_index`` is the
            position of each local anchor among the references (its global index).
        """
        anchor_index = torch.arange(len(labels), device=labels.device)
        if world_size() == 1:
            return embeddings, labels, anchor_index
        sizes = gather_sizes(len(labels), labels.device)
        if min(sizes) == 0:
            # Raised on every process alike: one that raised alone would leave the others waiting in a collective.
            raise ValueError(f"every process needs a non-empty training batch, got batch sizes {sizes} by rank")
        offset = sum(sizes[: rank()])
        # int64 on every process: labels of different widths would not fit one gather.
        return gather_rows_with_grad(embeddings, sizes), gather_rows(labels.long(), sizes), anchor_index + offset

    def similarity(self, embeddings: Tensor, reference_embeddings: Tensor) -> Tensor:
        """``(B, R)`` cosine similarity in float32, also under mixed precision."""
        if reference_embeddings is embeddings:
            return cosine_similarity(embeddings)
        return cosine_similarity(embeddings, reference_embeddings)

    @property
    def miner(self) -> PairMiner:
        """The :class:`PairMiner` among the trainer's callbacks, or the paper's all-pairs default."""
        miners = [c for c in self.trainer.callbacks if isinstance(c, PairMiner)] if self._trainer is not None else []
        if len(miners) > 1:
            # Only one can build the pairs; silently using the first would ignore, e.g., a miner added on the command line.
            raise ValueError(f"the trainer's callbacks must hold at most one PairMiner, got {len(miners)}")
        return miners[0] if miners else self._default_miner

    def mine(
        self,
        similarity: Tensor,
        labels: Tensor,
        reference_labels: Tensor,
        anchor_index: Tensor | None,
        indexes: Tensor | None = None,
        reference_indexes: Tensor | None = None,
    ) -> Pairs:
        """The miner's :class:`~lit_metric.functional.Pairs` (``M`` and ``W``) for a detached ``(B, R)`` similarity;
        ``(B,)`` ``indexes`` and ``(R,)`` ``reference_indexes`` are dataset indexes
        (:meth:`~lit_metric.PairMiner.mine`)."""
        if indexes is None:
            # The call that a miner overriding `mine` without dataset indexes (and so without a memory) accepts.
            return self.miner.mine(similarity, labels, reference_labels, anchor_index)
        return self.miner.mine(similarity, labels, reference_labels, anchor_index, indexes, reference_indexes)

    def mine_with_memory(
        self,
        memory: CrossBatchMemory,
        embeddings: Tensor,
        labels: Tensor,
        indexes: Tensor,
        reference: Tensor,
        reference_labels: Tensor,
        anchor_index: Tensor,
    ) -> tuple[Tensor, Pairs]:
        """The reference path with the miner's cross-batch memory: the similarity of the anchors to the references
        extended with the memory, and its pairs; the global batch joins the memory.

        The references are the global batch followed by the memory's earlier rows, ``(B, R + M)``, or, when the
        miner's ``batch_as_reference`` is off, the memory alone, which then ends with the batch, detached, ``(B, M)``.
        The memory's rows are detached: gradients reach the network only through the batch. Under DDP the memory
        holds the global batches, the same on every process. A subclass overrides this method to change what the
        memory contributes.

        Args:
            memory: the miner's memory, in use this step.
            embeddings: ``(B, D)`` embeddings of this process's batch, the anchors.
            labels: ``(B,)`` their labels.
            indexes: ``(B,)`` their dataset indexes, so that an anchor's earlier embedding is never its positive.
            reference: ``(R, D)`` global batch from :meth:`gather_reference`, with gradients.
            reference_labels: ``(R,)`` its labels.
            anchor_index: ``(B,)`` position of each anchor among its rows.

        Returns:
            ``(similarity, pairs)``: the ``(B, R')`` similarity, with gradients, and its
            :class:`~lit_metric.functional.Pairs`.
        """
        reference_indexes = gather_rows(indexes.long(), gather_sizes(len(indexes), indexes.device))
        # The memory's tensors are replaced by the append, not written into: these keep the rows from before it.
        earlier_embeddings, earlier_labels, earlier_indexes = memory.embeddings, memory.labels, memory.indexes
        memory.append(reference, reference_labels, reference_indexes)
        if not self.miner.batch_as_reference:
            similarity = self.similarity(embeddings, memory.embeddings)
            pairs = self.mine(similarity.detach(), labels, memory.labels, None, indexes, memory.indexes)
            return similarity, pairs
        similarity = self.similarity(embeddings, reference)
        if len(earlier_embeddings):
            # Two products rather than one against the joined references, whose backward would also compute the
            # memory's (discarded) gradient.
            similarity = torch.cat([similarity, self.similarity(embeddings, earlier_embeddings)], dim=1)
            reference_labels = torch.cat([reference_labels.long(), earlier_labels])
            reference_indexes = torch.cat([reference_indexes, earlier_indexes])
        pairs = self.mine(similarity.detach(), labels, reference_labels, anchor_index, indexes, reference_indexes)
        return similarity, pairs

    def on_fit_start(self) -> None:
        if not _takes_pairs(self.criterion) and any(isinstance(c, PairMiner) for c in self.trainer.callbacks):
            rank_zero_info(
                f"The criterion {type(self.criterion).__name__} is a plain loss(embeddings, labels): the PairMiner's "
                "pairs and settings are not used"
            )

    def on_train_epoch_start(self) -> None:
        """Makes the trainer validate the last epoch (of ``max_epochs``) even when ``check_val_every_n_epoch`` skips
        it, so that every fit ends with metrics and a checkpoint that ``ModelCheckpoint`` chose by them."""
        trainer = self.trainer
        every, last = trainer.check_val_every_n_epoch, trainer.max_epochs
        if every is not None and every > 1 and last is not None and trainer.current_epoch + 1 == last:
            # Lightning reads the setting at the end of each epoch and has no switch for the last one.
            trainer.check_val_every_n_epoch = 1

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """This process's share of the global-batch loss, scaled by the world size for DDP.

        The shares of all processes sum to the loss of one process that sees the whole global batch; DDP averages
        gradients over processes, so the factor ``world_size`` makes the applied gradient that of the sum. The
        logged ``train/loss`` is the global loss.

        A pair criterion compares this process's anchors with the global batch, so each process computes its own
        share. A plain loss, ``criterion(embeddings, labels)``, needs the whole batch at once: every process
        computes it on the gathered global batch, and its share is that loss over the world size.
        """
        labels, images = batch["label"], batch["image"]
        if labels.shape != (len(images),):
            raise ValueError(
                f"`batch['label']` must have shape ({len(images)},), one label per image, got {tuple(labels.shape)}"
            )
        embeddings = self.embed(images)
        reference, reference_labels, anchor_index = self.gather_reference(embeddings, labels)
        if _takes_pairs(self.criterion):
            memory = self.miner.memory_in_use
            if memory is None:
                similarity = self.similarity(embeddings, reference)
                pairs = self.mine(similarity.detach(), labels, reference_labels, anchor_index)
            else:
                indexes = _training_indexes(batch, len(images))
                similarity, pairs = self.mine_with_memory(
                    memory, embeddings, labels, indexes, reference, reference_labels, anchor_index
                )
            share = self.criterion.from_pairs(similarity, pairs)
        else:
            share = self.criterion(reference, reference_labels) / world_size()
        batch_size = len(reference_labels)
        self.log("train/loss", share.detach(), prog_bar=True, sync_dist=True, reduce_fx="sum", batch_size=batch_size)
        return share * world_size()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Feeds the validation metric; returns the ``(B, D)`` embeddings for callbacks such as the pictures."""
        return self._update_metrics(self.val_metrics, batch)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._update_metrics(self.test_metrics, batch)

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self.embed(batch["image"])

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val", self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test", self.test_metrics)

    def parameter_groups(self) -> list[dict]:
        """The optimizer's parameter groups: one per learning-rate scale (``backbone_lr_multiplier`` for the
        :attr:`backbone`'s parameters, 1 for the others) and, with ``decay_norms_and_biases=False``, per weight
        decay (0 for one-dimensional parameters). Each dict has ``"params"``, ``"lr_scale"`` and, for groups
        without decay, ``"weight_decay": 0.0``; the optimizer's own settings fill the rest."""
        backbone = self.backbone
        if backbone is None and self.backbone_lr_multiplier != 1:
            raise ValueError(
                f"`backbone_lr_multiplier` {self.backbone_lr_multiplier} needs a backbone: the embedding net "
                f"({type(self.embedding_net).__name__}) has no `backbone` module"
            )
        in_backbone = {id(param) for param in backbone.parameters()} if backbone is not None else set()
        groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
        for param in self.parameters():
            scale = self.backbone_lr_multiplier if id(param) in in_backbone else 1.0
            groups.setdefault((scale, not self.decay_norms_and_biases and param.ndim <= 1), []).append(param)
        return [
            {"params": params, "lr_scale": scale, **({"weight_decay": 0.0} if no_decay else {})}
            for (scale, no_decay), params in groups.items()
        ]

    def configure_optimizers(self):
        if self.backbone_lr_multiplier == 1 and self.decay_norms_and_biases:
            optimizer = self.optimizer_factory(self.parameters())
        else:
            optimizer = self.optimizer_factory(self.parameter_groups())
            for group in optimizer.param_groups:
                group["lr"] *= group["lr_scale"]
        scheduler = self._scheduler(optimizer)
        if scheduler is None:
            return optimizer
        config = {"scheduler": scheduler}
        if isinstance(scheduler, ReduceLROnPlateau):
            # Stepped after the epochs that validate only: the monitored metric exists then, and a misspelt monitor
            # still fails loudly.
            every = self.trainer.check_val_every_n_epoch if self._trainer is not None else None
            config.update(monitor=self.scheduler_monitor, frequency=every or 1)
        return {"optimizer": optimizer, "lr_scheduler": config}

    def _scheduler(self, optimizer: torch.optim.Optimizer):
        """The configured scheduler over the epochs after the warm-up, preceded by ``warmup_epochs`` of linear warm-up
        when there are any."""
        scheduler = self.scheduler_factory(optimizer) if self.scheduler_factory is not None else None
        max_epochs = self.trainer.max_epochs if self._trainer is not None else None
        if scheduler is not None and max_epochs is not None and max_epochs > self.warmup_epochs:
            _set_length(scheduler, max_epochs - self.warmup_epochs)
        if not self.warmup_epochs:
            return scheduler
        if isinstance(scheduler, ReduceLROnPlateau):
            raise ValueError(
                "`warmup_epochs` cannot precede a ReduceLROnPlateau scheduler, which follows a metric rather than "
                "the epochs; set `warmup_epochs: 0` or choose an epoch schedule"
            )
        if max_epochs is None or not self.warmup_epochs < max_epochs:
            raise ValueError(f"`warmup_epochs` ({self.warmup_epochs}) must be fewer than max_epochs ({max_epochs})")
        warmup = LinearLR(optimizer, self.warmup_start_factor, total_iters=self.warmup_epochs)
        if scheduler is None:
            return warmup
        return SequentialLR(optimizer, [warmup, scheduler], milestones=[self.warmup_epochs])

    def _update_metrics(self, metrics: RetrievalMetrics, batch: dict[str, Tensor]) -> Tensor:
        embeddings = self.embed(batch["image"])
        metrics.update(
            embeddings,
            batch["label"],
            batch["index"],
            is_query=batch.get("is_query"),
            is_gallery=batch.get("is_gallery"),
            cameras=batch.get("camera"),
        )
        return embeddings

    def _log_metrics(self, stage: str, metrics: RetrievalMetrics) -> None:
        if self.trainer.sanity_checking:
            # The sanity check sees only the first batches: scores of a few items would be logged as the epoch's.
            metrics.reset()
            return
        values = metrics.compute()
        metrics.reset()
        # Every process holds the same synced values; sync_dist only tells Lightning so.
        self.log_dict({f"{stage}/{name}": value.float() for name, value in values.items()}, sync_dist=True)


def _set_length(scheduler: object, epochs: int) -> None:
    """Set the schedule length of ``scheduler`` (its :data:`SCHEDULE_LENGTHS` attribute, if any) to ``epochs``."""
    for length in SCHEDULE_LENGTHS:
        configured = getattr(scheduler, length, None)
        if configured is not None and configured != epochs:
            # Set after construction: the first step, at epoch 0, does not depend on the length.
            setattr(scheduler, length, epochs)
            rank_zero_info(f"{type(scheduler).__name__} follows max_epochs: {length}={epochs} epochs, not {configured}")


def _takes_pairs(criterion: object) -> bool:
    """Whether ``criterion`` is a pair criterion (``from_pairs``) rather than a plain ``loss(embeddings, labels)``
    module; a ValueError naming ``criterion`` when it is neither."""
    if callable(getattr(criterion, "from_pairs", None)):
        return True
    if isinstance(criterion, nn.Module) and _called_with_embeddings_and_labels(criterion):
        return False
    raise ValueError(
        "`criterion` must be a pair criterion with from_pairs(similarity, pairs), such as "
        "lit_metric.BinomialDevianceLoss, or a loss module called as criterion(embeddings, labels), such as "
        f"pytorch_metric_learning.losses.TripletMarginLoss; got {type(criterion).__name__}"
    )


def _called_with_embeddings_and_labels(module: nn.Module) -> bool:
    if type(module).forward is nn.Module.forward:  # no forward of its own: calling it raises NotImplementedError
        return False
    try:
        inspect.signature(module.forward).bind("embeddings", "labels")
    except TypeError:
        return False
    return True


def _training_indexes(batch: dict[str, Tensor], size: int) -> Tensor:
    """The ``(B,)`` dataset indexes of a training batch, which the miner's memory needs."""
    indexes = batch.get("index")
    if not isinstance(indexes, Tensor) or indexes.shape != (size,):
        got = f"shape {tuple(indexes.shape)}" if isinstance(indexes, Tensor) else repr(indexes)
        raise ValueError(
            f"the miner's memory needs `batch['index']`, the dataset index of each image, of shape ({size},), so "
            f"that an anchor's earlier embedding is never its positive; got {got} (lit_metric's data sets yield it)"
        )
    return indexes
