"""The pair-mining callback: builds the loss's ``M`` and ``W`` (as :class:`~lit_metric.functional.Pairs`) for every
training batch, logs what it kept, and changes its settings by epoch."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor

from lit_metric.distributed import sum_over_processes
from lit_metric.functional._blocks import row_blocks
from lit_metric.functional._checks import check_choice, check_positive_int, check_real
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

__all__ = ["PairMiner"]

_SETTINGS = ("strategy", "weighting", "negative_cost", "margin", "negatives_per_anchor")


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

    A setting assigned after construction (``miner.strategy = "hard"``) is checked like the constructor's arguments
    and becomes the base that the schedule changes from.
    """

    strategy = _setting("strategy")
    weighting = _setting("weighting")
    negative_cost = _setting("negative_cost")
    margin = _setting("margin")
    negatives_per_anchor = _setting("negatives_per_anchor")

    def __init__(
        self,
        strategy: Literal["all", "hard", "topk_negatives"] = "all",
        weighting: Literal["balanced", "per_anchor", "uniform"] = "balanced",
        negative_cost: float = 1.0,
        margin: float = 0.1,
        negatives_per_anchor: int = 10,
        schedule: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        base = dict(
            strategy=strategy,
            weighting=weighting,
            negative_cost=negative_cost,
            margin=margin,
            negatives_per_anchor=negatives_per_anchor,
        )
        _check_settings(base, "")
        # The base is kept apart from the settings in use, so that every fit, resumed or not, starts from it.
        self._base = base
        self._in_use = dict(base)
        self.schedule = _checked_schedule(schedule)
        self.statistics: dict[str, Tensor] = {}

    @property
    def settings(self) -> dict[str, Any]:
        """The current strategy, weighting, negative cost, margin and negatives per anchor."""
        return dict(self._in_use)

    def settings_at(self, epoch: int) -> dict[str, Any]:
        """The settings that :attr:`schedule` gives for ``epoch``, from the ones set at construction or by hand."""
        settings = dict(self._base)
        for entry in self.schedule:
            if entry["epoch"] <= epoch:
                settings.update({name: value for name, value in entry.items() if name != "epoch"})
        return settings

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The schedule's entries were checked with the constructor's arguments.
        self._in_use = self.settings_at(trainer.current_epoch)

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
        self, similarity: Tensor, labels: Tensor, reference_labels: Tensor, anchor_index: Tensor | None = None
    ) -> Pairs:
        """The pairs of a batch that count and their weights: ``M`` and ``W`` in factored form.

        The masks are built, selected, counted and summarised block of rows by block of rows, so that the work
        stays in cache and nothing of float ``(B, R)`` size is allocated; ``pairs.matrices()`` gives dense ``M``, ``W``.

        Args:
            similarity: ``(B, R)`` detached similarities of the anchors against the references.
            labels: ``(B,)`` anchor labels.
            reference_labels: ``(R,)`` reference labels (the global batch under ``torch.distributed``).
            anchor_index: ``(B,)`` position of each anchor among the references, or ``None``.

        Returns:
            :class:`~lit_metric.functional.Pairs` with ``(B, R)`` masks.
        """
        if similarity.ndim != 2:
            raise ValueError(f"`similarity` must have shape (B, R), got shape {tuple(similarity.shape)}")
        check_pair_labels(labels, reference_labels, anchor_index)
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
            candidate_positive, candidate_negative = pair_masks(
                labels[rows], reference_labels, None if anchor_index is None else anchor_index[rows], validate_args=False
            )
            # Every pair is a candidate but an anchor with itself: counted without a pass over the masks.
            num_candidates = torch.tensor(
                float(block.numel() - (0 if anchor_index is None else block.shape[0])),
                dtype=torch.float32,
                device=block.device,
            )
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
