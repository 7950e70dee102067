"""The pair-mining callback: builds the loss's ``M`` and ``W`` (as :class:`~lit_metric.functional.Pairs`) for every
training batch, logs what it kept, and changes its settings by epoch."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor

from lit_metric.distributed import sum_over_processes
from lit_metric.functional._blocks import row_blocks
from lit_metric.functional._checks import check_bool, check_choice, check_positive_int, check_real
from lit_metric.functional.mining import (
    STRATEGIES,
    WEIGHTINGS,
    check_pair_labels,
    mining_statistics,
    pair_counts,
    pair_masks,
    pair_weights,
    select_pairs,
)
from lit_metric.functional.pairs import Pairs
from lit_metric.memory import CrossBatchMemory

__all__ = ["PairMiner"]

_SETTINGS = (
    "strategy", "weighting", "negative_cost", "margin", "negatives_per_anchor", "use_memory", "batch_as_reference"
)
# The settings that only a miner with a memory has a use for.
_MEMORY_SETTINGS = ("use_memory", "batch_as_reference")


def _setting(name: str) -> property:
    """A setting of :class:`PairMiner`: reads the value in use, which the schedule may have changed; an assignment
    is checked like the constructor's argument and becomes the base that the schedule changes from."""

    def get(self: PairMiner) -> Any:
        return self._in_use[name]

    def set(self: PairMiner, value: Any) -> None:
        _check_settings({name: value}, "")
        self._base[name] = self._in_use[name] = value

    return property(get, set, doc=f"The ``{name}`` in use (see the class's arguments).")


class PairMiner(L.Callback):
    """Chooses the pairs of a training batch and their weights.

    :class:`~lit_metric.MetricLearningModule` calls :meth:`mine` on the miner registered as a trainer callback
    (or on a default ``PairMiner()`` when there is none), so mining changes by configuration, not by code.

    A miner registered as a callback logs, every training step and over the global batch: ``mining/pairs_kept``
    (fraction of the candidate pairs kept), ``mining/num_positive`` and ``mining/num_negative`` (kept pairs),
    ``mining/positive_similarity`` and ``mining/negative_similarity`` (mean over the kept pairs, NaN when there are
    none) and ``mining/hardest_negative_similarity`` (each anchor's most similar negative, averaged over anchors).

    Under ``torch.distributed``, :meth:`mine` gets this process's rows against the global batch and sums its pair
    counts over processes, so the weights are those of the global batch and the local losses add up to the
    single-process loss. It is then a collective call: every process must call it once per step.

    Args:
        strategy: which pairs count. ``"all"``: every pair ``i != j``, as in the paper. ``"hard"``: the
            multi-similarity selection: negatives more similar than the anchor's hardest positive minus ``margin``,
            positives less similar than its hardest negative plus ``margin``. ``"topk_negatives"``: every positive
            and the ``negatives_per_anchor`` most similar negatives of each anchor.
        weighting: how counted pairs are weighted. ``"balanced"``: ``1 / n_pos`` on positives and ``1 / n_neg`` on
            negatives over the global batch, as in the paper. ``"per_anchor"``: each anchor's positives and negatives
            averaged separately, then averaged over the anchors that have pairs. ``"uniform"``: the mean over all
            counted pairs.
        negative_cost: the asymmetric cost ``C`` of negative pairs (``M = -C``). 1 is the loss's symmetric form;
            the literature used about 10 for person re-identification and 25 for product and bird retrieval, where
            negatives vastly outnumber positives.
        margin: slack of the ``"hard"`` strategy.
        negatives_per_anchor: ``k`` of the ``"topk_negatives"`` strategy.
        schedule: changes of settings by epoch, e.g. ``[{"epoch": 5, "strategy": "hard"}]``. From each entry's
            epoch on, its settings replace the ones before; settings it does not name carry over.
        memory_size: ``M``, the rows of a cross-batch memory (XBM, :class:`~lit_metric.memory.CrossBatchMemory`):
            the detached embeddings, labels and dataset indexes of the last ``M`` training samples (of the global
            batches under DDP), against which the anchors are mined too. ``None``: no memory.
        use_memory: whether the memory is filled and mined against. XBM needs a network that has warmed up: start
            it with ``use_memory=False`` and a schedule entry such as ``{"epoch": 10, "use_memory": True}``. While
            it is off the memory is emptied, so that it never serves embeddings of a network long gone.
        batch_as_reference: with the memory in use, whether the anchors are also mined against the batch itself,
            as references through which gradients flow (``True``), or against the memory alone, which then holds the
            batch too, detached (``False``).

    With the memory in use, :class:`~lit_metric.MetricLearningModule` mines each anchor against the references
    extended with the memory (:meth:`~lit_metric.MetricLearningModule.mine_with_memory`), with every strategy and
    weighting; gradients reach the network only through the batch. An anchor's own earlier embeddings in the memory,
    those of its dataset ``index``, are never its positives. The memory is part of the :meth:`state_dict`, so that a
    resumed fit, also from a checkpoint taken mid-epoch, mines against the memory of the interrupted one.

    A setting assigned after construction (``miner.strategy = "hard"``) is checked like the constructor's arguments
    and becomes the base that the schedule changes from.
    """

    strategy = _setting("strategy")
    weighting = _setting("weighting")
    negative_cost = _setting("negative_cost")
    margin = _setting("margin")
    negatives_per_anchor = _setting("negatives_per_anchor")
    use_memory = _setting("use_memory")
    batch_as_reference = _setting("batch_as_reference")

    def __init__(
        self,
        strategy: Literal["all", "hard", "topk_negatives"] = "all",
        weighting: Literal["balanced", "per_anchor", "uniform"] = "balanced",
        negative_cost: float = 1.0,
        margin: float = 0.1,
        negatives_per_anchor: int = 10,
        schedule: list[dict[str, Any]] | None = None,
        memory_size: int | None = None,
        use_memory: bool = True,
        batch_as_reference: bool = True,
    ) -> None:
        super().__init__()
        base = dict(
            strategy=strategy,
            weighting=weighting,
            negative_cost=negative_cost,
            margin=margin,
            negatives_per_anchor=negatives_per_anchor,
            use_memory=use_memory,
            batch_as_reference=batch_as_reference,
        )
        _check_settings(base, "")
        self.memory = CrossBatchMemory(memory_size) if memory_size is not None else None
        # The base is kept apart from the settings in use, so that every fit, resumed or not, starts from it.
        self._base = base
        self._in_use = dict(base)
        self.schedule = _checked_schedule(schedule)
        if self.memory is None:
            _check_no_memory_settings(batch_as_reference, self.schedule)
        self.statistics: dict[str, Tensor] = {}

    @property
    def settings(self) -> dict[str, Any]:
        """The current strategy, weighting, negative cost, margin, negatives per anchor and memory settings."""
        return dict(self._in_use)

    @property
    def memory_in_use(self) -> CrossBatchMemory | None:
        """The memory, when there is one and the settings in use turn it on; ``None`` otherwise."""
        return self.memory if self.memory is not None and self.use_memory else None

    def settings_at(self, epoch: int) -> dict[str, Any]:
        """The settings that :attr:`schedule` gives for ``epoch``, from the ones set at construction or by hand."""
        settings = dict(self._base)
        for entry in self.schedule:
            if entry["epoch"] <= epoch:
                settings.update({name: value for name, value in entry.items() if name != "epoch"})
        return settings

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.memory is None or stage != "fit":
            return
        criterion = getattr(pl_module, "criterion", None)
        if not hasattr(criterion, "from_pairs"):
            raise ValueError(
                f"`memory_size` needs a criterion with `from_pairs(similarity, pairs)`, which the memory's pairs are "
                f"scored by; got {type(criterion).__name__}, a plain `loss(embeddings, labels)`: drop `memory_size` or "
                "choose a pair-based criterion such as BinomialDevianceLoss"
            )
        # Every fit starts from an empty memory; a resumed one then loads its checkpoint's (load_state_dict).
        self.memory.clear()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.memory is not None:
            # A checkpoint's memory is restored on the CPU.
            self.memory.to(pl_module.device)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The schedule's entries were checked with the constructor's arguments.
        self._in_use = self.settings_at(trainer.current_epoch)
        if self.memory is not None and not self.use_memory:
            self.memory.clear()

    def state_dict(self) -> dict[str, Any]:
        return {} if self.memory is None else {"memory": self.memory.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # A checkpoint's memory is dropped when this miner has none: the run was resumed without the memory.
        if self.memory is not None and "memory" in state_dict:
            self.memory.load_state_dict(state_dict["memory"])

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # Lightning does not call on_train_epoch_start in a run resumed from a checkpoint taken within an epoch or
        # after its last batch, so the settings are derived from the epoch here too: they need no checkpoint entry.
        self._in_use = self.settings_at(trainer.current_epoch)
        # A batch that the module does not mine (a subclass may skip some) must not log the previous batch's numbers.
        self.statistics = {}

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # The statistics are already global (summed in `mine`), so no sync_dist is needed.
        for name, value in self.statistics.items():
            pl_module.log(f"mining/{name}", value, on_step=True, on_epoch=False)

    def mine(
        self,
        similarity: Tensor,
        labels: Tensor,
        reference_labels: Tensor,
        anchor_index: Tensor | None = None,
        indexes: Tensor | None = None,
        reference_indexes: Tensor | None = None,
    ) -> Pairs:
        """The pairs of a batch that count and their weights: ``M`` and ``W`` in factored form.

        The masks are built, selected, counted and summarised block of rows by block of rows, so that the work
        stays in cache and nothing of float ``(B, R)`` size is allocated; ``pairs.matrices()`` gives dense ``M``, ``W``.

        Args:
            similarity: ``(B, R)`` detached similarities of the anchors against the references.
            labels: ``(B,)`` anchor labels.
            reference_labels: ``(R,)`` reference labels (the global batch under ``torch.distributed``, followed by
                the memory when it is in use).
            anchor_index: ``(B,)`` position of each anchor among the references, or ``None``.
            indexes: ``(B,)`` dataset indexes of the anchors, given with ``reference_indexes`` (``(R,)``): a
                reference of the anchor's own index, e.g. its earlier embedding in the memory, is not a candidate.

        Returns:
            :class:`~lit_metric.functional.Pairs` with ``(B, R)`` masks.
        """
        if similarity.ndim != 2:
            raise ValueError(f"`similarity` must have shape (B, R), got shape {tuple(similarity.shape)}")
        check_pair_labels(labels, reference_labels, anchor_index, indexes, reference_indexes)
        rows, columns = similarity.shape
        for name, x, size, axis in (
            ("labels", labels, rows, "row"),
            ("reference_labels", reference_labels, columns, "column"),
        ):
            if len(x) != size:
                raise ValueError(
                    f"`{name}` must hold one label per {axis} of `similarity` {tuple(similarity.shape)}, "
                    f"got shape {tuple(x.shape)}"
                )
        similarity = similarity.detach()
        positive = torch.empty(similarity.shape, dtype=torch.bool, device=similarity.device)
        negative = torch.empty_like(positive)
        counts = torch.zeros(3, dtype=torch.long, device=similarity.device)
        sums = torch.zeros(5, dtype=torch.float32, device=similarity.device)
        for rows in row_blocks(similarity):
            block = similarity[rows]
            anchors = None if anchor_index is None else anchor_index[rows]
            anchor_indexes = None if indexes is None else indexes[rows]
            candidate_positive, candidate_negative = pair_masks(
                labels[rows], reference_labels, anchors, False, anchor_indexes, reference_indexes
            )
            num_candidates = _num_candidates(block, anchors, anchor_indexes, reference_indexes)
            kept_positive, kept_negative = select_pairs(
                block, candidate_positive, candidate_negative, self.strategy, self.margin, self.negatives_per_anchor
            )
            positive[rows], negative[rows] = kept_positive, kept_negative
            counts += pair_counts(kept_positive, kept_negative)
            sums += mining_statistics(block, candidate_negative, num_candidates, kept_positive, kept_negative)
        counts, sums = sum_over_processes(counts), sum_over_processes(sums)
        # float32 at least, as the loss computes; float64 weights for a float64 loss, which float32 would round.
        dtype = torch.promote_types(similarity.dtype, torch.float32)
        positive_weight, negative_weight = pair_weights(positive, negative, self.weighting, counts, dtype)
        self.statistics = _statistics(counts, sums)
        return Pairs(positive, negative, positive_weight, negative_weight, float(self.negative_cost))


def _num_candidates(
    block: Tensor, anchor_index: Tensor | None, indexes: Tensor | None, reference_indexes: Tensor | None
) -> Tensor:
    """The candidate pairs of a ``(b, R)`` block of rows: every pair but those of an anchor with itself, now (its
    ``anchor_index``) or earlier (a reference of its dataset index), counted without a pass over the masks."""
    if indexes is not None:
        # A tensor, not a Python number: reading it back would stall the GPU every step.
        return (block.numel() - (indexes[:, None] == reference_indexes[None, :]).sum()).float()
    excluded = 0 if anchor_index is None else block.shape[0]
    return torch.tensor(float(block.numel() - excluded), dtype=torch.float32, device=block.device)


def _statistics(counts: Tensor, sums: Tensor) -> dict[str, Tensor]:
    """Logged statistics from the global :func:`pair_counts` and :func:`mining_statistics`.

    A mean over an empty set (e.g. no negatives kept) is NaN; testing for it here would stall the GPU every step.
    """
    num_positive, num_negative = counts[0].float(), counts[1].float()
    num_candidates, positive_sum, negative_sum, hardest_sum, num_with_negative = sums
    return {
        "pairs_kept": (num_positive + num_negative) / num_candidates.clamp_min(1),
        "num_positive": num_positive,
        "num_negative": num_negative,
        "positive_similarity": positive_sum / num_positive,
        "negative_similarity": negative_sum / num_negative,
        "hardest_negative_similarity": hardest_sum / num_with_negative,
    }


def _check_settings(settings: dict[str, Any], where: str) -> None:
    """Raise a ValueError naming the first invalid setting; ``where`` locates it, e.g. in a schedule entry."""
    for name, choices in (("strategy", STRATEGIES), ("weighting", WEIGHTINGS)):
        if name in settings:
            check_choice(name, settings[name], choices, where)
    if "negative_cost" in settings:
        check_real("negative_cost", settings["negative_cost"], positive=True, where=where)
    if "margin" in settings:
        check_real("margin", settings["margin"], where=where)
    if "negatives_per_anchor" in settings:
        check_positive_int("negatives_per_anchor", settings["negatives_per_anchor"], where)
    for name in _MEMORY_SETTINGS:
        if name in settings:
            check_bool(name, settings[name], where)


def _check_no_memory_settings(batch_as_reference: bool, schedule: list[dict[str, Any]]) -> None:
    """Raise a ValueError when a miner without a memory is given a memory setting that it would silently ignore."""
    if not batch_as_reference:
        raise ValueError("`batch_as_reference=False` needs a memory to mine against: set `memory_size`")
    for position, entry in enumerate(schedule):
        named = [name for name in _MEMORY_SETTINGS if name in entry]
        if named:
            raise ValueError(f"`{named[0]}` in `schedule[{position}]` needs a memory: set `memory_size`")


def _checked_schedule(schedule: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The schedule's entries sorted by epoch, each checked like the constructor's arguments."""
    if schedule is None:
        return []
    if not isinstance(schedule, list):
        raise ValueError(f"`schedule` must be a list of dicts, got {type(schedule).__name__}")
    entries = []
    for position, entry in enumerate(schedule):
        if not isinstance(entry, dict):
            raise ValueError(f"`schedule[{position}]` must be a dict with an `epoch`, got {entry!r}")
        where = f" in `schedule[{position}]`"
        epoch = entry.get("epoch")
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"`epoch`{where} must be an integer >= 0, got {epoch!r}")
        unknown = sorted(set(entry) - {"epoch", *_SETTINGS}, key=str)
        if unknown:
            raise ValueError(f"`schedule[{position}]` has unknown settings {unknown}; expected some of {list(_SETTINGS)}")
        _check_settings(entry, where)
        entries.append(dict(entry))
    return sorted(entries, key=lambda entry: entry["epoch"])
