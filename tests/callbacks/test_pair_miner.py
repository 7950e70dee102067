"""PairMiner as a callback: its settings and their validation, the schedule, the logged statistics, YAML
configuration and mixed precision."""

from __future__ import annotations

import math
from types import SimpleNamespace

import jsonargparse
import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader

from lit_metric import ConvEmbedder, MetricLearningModule, PairMiner
from lit_metric.data import PKDataLoader, PKSampler, TensorImageDataset
from lit_metric.functional import Pairs, binomial_deviance_of_pairs, cosine_similarity
from lit_metric.functional._blocks import row_blocks
from lit_metric.functional.mining import mining_statistics, pair_counts, pair_masks, pair_weights, select_pairs


def batch(classes=4, per_class=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(per_class)
    images = torch.rand(len(labels), 1, 8, 8, generator=generator) + labels.view(-1, 1, 1, 1) / classes
    return images, labels


def loader(images, labels, batch_size=None):
    return DataLoader(TensorImageDataset(images, labels), batch_size=batch_size or len(labels))


def trainer(**kwargs):
    options = dict(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )
    return L.Trainer(**{**options, **kwargs})


def module():
    torch.manual_seed(0)
    return MetricLearningModule(ConvEmbedder(embedding_dim=8, channels=(8, 16)))


class SettingsRecorder(L.Callback):
    def __init__(self, miner):
        self.miner, self.per_epoch = miner, []

    def on_train_epoch_end(self, trainer, pl_module):
        self.per_epoch.append(dict(self.miner.settings))


# Settings and their validation.


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(strategy="semi-hard"), r"`strategy` must be one of 'all', 'hard', 'topk_negatives', got 'semi-hard'"),
        (dict(weighting="mean"), r"`weighting` must be one of 'balanced', 'per_anchor', 'uniform', got 'mean'"),
        (dict(strategy=None), r"`strategy` must be one of 'all', 'hard', 'topk_negatives', got None"),
        (dict(negative_cost=0.0), r"`negative_cost` must be a finite number > 0, got 0.0"),
        (dict(negative_cost=math.inf), r"`negative_cost` must be a finite number > 0, got inf"),
        (dict(negative_cost=True), r"`negative_cost` must be a finite number > 0, got True"),
        (dict(margin=math.nan), r"`margin` must be a finite number, got nan"),
        (dict(margin=-math.inf), r"`margin` must be a finite number, got -inf"),
        (dict(margin="0.1"), r"`margin` must be a finite number, got '0.1'"),
        (dict(negatives_per_anchor=0), r"`negatives_per_anchor` must be a positive integer, got 0"),
        (
            dict(schedule=[{"epoch": 3, "negatives_per_anchor": 2.5}]),
            r"`negatives_per_anchor` in `schedule\[0\]` must be a positive integer, got 2.5",
        ),
        (dict(schedule=[{"strategy": "hard"}]), r"`epoch` in `schedule\[0\]` must be an integer >= 0, got None"),
        (dict(schedule=[{"epoch": -1}]), r"`epoch` in `schedule\[0\]` must be an integer >= 0, got -1"),
        (
            dict(schedule=[{"epoch": 2, "stratgy": "hard"}]),
            r"`schedule\[0\]` has unknown settings \['stratgy'\]; expected some of \['strategy', 'weighting'",
        ),
        (
            dict(schedule=[{"epoch": 1}, {"epoch": 2, "weighting": "max"}]),
            r"`weighting` in `schedule\[1\]` must be one of 'balanced', 'per_anchor', 'uniform', got 'max'",
        ),
    ],
)
def test_invalid_settings_are_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PairMiner(**kwargs)


@pytest.mark.parametrize(
    "schedule, message",
    [
        ({"epoch": 3, "strategy": "hard"}, r"`schedule` must be a list of dicts, got dict"),
        (["epoch 3"], r"`schedule\[0\]` must be a dict with an `epoch`, got 'epoch 3'"),
        ([{"epoch": "5"}], r"`epoch` in `schedule\[0\]` must be an integer >= 0, got '5'"),
        ([{"epoch": True}], r"`epoch` in `schedule\[0\]` must be an integer >= 0, got True"),
        (
            [{"epoch": 5, "negative_cost": "1O"}],
            r"`negative_cost` in `schedule\[0\]` must be a finite number > 0, got '1O'",
        ),
        (
            [{"epoch": 1}, {"epoch": 5, "negative_cost": math.inf}],
            r"`negative_cost` in `schedule\[1\]` must be a finite number > 0, got inf",
        ),
        ([{"epoch": 5, "margin": ".1O"}], r"`margin` in `schedule\[0\]` must be a finite number, got '.1O'"),
        ([{"epoch": 5, "margin": math.nan}], r"`margin` in `schedule\[0\]` must be a finite number, got nan"),
        (
            [{"epoch": 5, "strategy": None}],
            r"`strategy` in `schedule\[0\]` must be one of 'all', 'hard', 'topk_negatives', got None",
        ),
    ],
)
def test_a_schedule_that_is_not_a_list_of_valid_entries_is_a_value_error_naming_the_entry(schedule, message):
    with pytest.raises(ValueError, match=message):
        PairMiner(schedule=schedule)


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("strategy", "hardest", r"`strategy` must be one of 'all', 'hard', 'topk_negatives', got 'hardest'"),
        ("negative_cost", math.inf, r"`negative_cost` must be a finite number > 0, got inf"),
        ("negatives_per_anchor", 2.5, r"`negatives_per_anchor` must be a positive integer, got 2.5"),
    ],
)
def test_a_setting_assigned_by_hand_is_checked_like_the_constructors(name, value, message):
    miner = PairMiner()
    with pytest.raises(ValueError, match=message):
        setattr(miner, name, value)


def test_anchor_index_of_the_wrong_shape_is_a_value_error():
    labels = torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match=r"`anchor_index` must be an integer tensor of the shape of `labels` \(4,\)"):
        PairMiner().mine(torch.zeros(4, 4), labels, labels, torch.arange(3))


@pytest.mark.parametrize(
    ("labels", "anchor_index", "message"),
    [
        (torch.tensor([0.0, 0.0, 1.0, 1.0]), torch.arange(4), r"`labels` must be an integer tensor, got dtype torch.float32"),
        (torch.tensor([0, 0, 1, 1]), torch.tensor([1, 0, 3, 4]), r"`anchor_index` must hold positions in \[0, 4\)"),
        (torch.tensor([0, 0, 1, 1]), torch.tensor([2, 0, 1, 3]), "`anchor_index` must point each anchor at a reference"),
    ],
)
def test_mine_checks_the_labels_and_anchor_index_of_the_whole_batch_once(labels, anchor_index, message):
    # Its blocks of rows skip the check; the batch's own check must still name the argument.
    with pytest.raises(ValueError, match=message):
        PairMiner().mine(torch.zeros(4, 4), labels, torch.tensor([0, 0, 1, 1]), anchor_index)


@pytest.mark.parametrize(
    ("similarity", "labels", "reference_labels", "message"),
    [
        (torch.zeros(16), 4, 4, r"`similarity` must have shape \(B, R\), got shape \(16,\)"),
        (torch.zeros(4, 4), 3, 4, r"`labels` must hold one label per row of `similarity` \(4, 4\), got shape \(3,\)"),
        (torch.zeros(4, 3), 4, 4, r"`reference_labels` must hold one label per column of `similarity` \(4, 3\), got "),
    ],
)
def test_labels_that_do_not_match_the_similarity_are_named(similarity, labels, reference_labels, message):
    with pytest.raises(ValueError, match=message):
        PairMiner().mine(similarity, torch.arange(labels), torch.arange(reference_labels))


def test_settings_at_applies_every_entry_up_to_the_epoch_in_epoch_order():
    miner = PairMiner(
        negative_cost=10.0,
        schedule=[{"epoch": 4, "weighting": "per_anchor"}, {"epoch": 2, "strategy": "hard", "margin": 0.2}],
    )
    assert miner.settings_at(0) == miner.settings
    assert miner.settings_at(3) == {**miner.settings, "strategy": "hard", "margin": 0.2}
    assert miner.settings_at(9) == {**miner.settings, "strategy": "hard", "margin": 0.2, "weighting": "per_anchor"}


def test_the_schedule_changes_the_settings_at_the_start_of_each_epoch():
    miner = PairMiner(schedule=[{"epoch": 1, "strategy": "hard"}, {"epoch": 2, "negatives_per_anchor": 3}])
    recorder = SettingsRecorder(miner)
    trainer(callbacks=[miner, recorder], max_epochs=3).fit(module(), loader(*batch()))
    assert [settings["strategy"] for settings in recorder.per_epoch] == ["all", "hard", "hard"]
    assert [settings["negatives_per_anchor"] for settings in recorder.per_epoch] == [10, 10, 3]


def test_settings_assigned_before_fitting_are_the_base_that_the_schedule_changes_from():
    miner = PairMiner(schedule=[{"epoch": 1, "strategy": "topk_negatives"}])
    miner.strategy, miner.margin = "hard", 0.3
    recorder = SettingsRecorder(miner)
    trainer(callbacks=[miner, recorder], max_epochs=2).fit(module(), loader(*batch()))
    assert [settings["strategy"] for settings in recorder.per_epoch] == ["hard", "topk_negatives"]
    assert [settings["margin"] for settings in recorder.per_epoch] == [0.3, 0.3]
    assert miner.settings_at(0)["strategy"] == "hard"


def test_fitting_again_starts_from_the_base_settings_not_the_last_scheduled_ones():
    miner = PairMiner(schedule=[{"epoch": 1, "strategy": "hard"}])
    trainer(callbacks=[miner], max_epochs=2).fit(module(), loader(*batch()))
    assert miner.strategy == "hard"
    recorder = SettingsRecorder(miner)
    trainer(callbacks=[miner, recorder], max_epochs=1).fit(module(), loader(*batch()))
    assert [settings["strategy"] for settings in recorder.per_epoch] == ["all"]


def test_resuming_at_an_epoch_applies_the_base_settings_and_every_schedule_entry_up_to_it():
    # A fit resumed from a checkpoint starts its first epoch with the restored `current_epoch`; a fresh miner
    # configured as before must then hold what the uninterrupted fit held.
    miner = PairMiner(schedule=[{"epoch": 1, "strategy": "hard"}, {"epoch": 3, "negatives_per_anchor": 3}])
    miner.margin = 0.3
    miner.on_train_epoch_start(SimpleNamespace(current_epoch=2), module())
    assert miner.settings == {**PairMiner().settings, "strategy": "hard", "margin": 0.3}


def test_a_run_resumed_within_an_epoch_mines_with_that_epoch_s_settings():
    # Lightning does not call on_train_epoch_start when a run resumes within an epoch, or after its last batch.
    miner = PairMiner(schedule=[{"epoch": 1, "strategy": "hard", "margin": 0.2}])
    miner.on_train_batch_start(SimpleNamespace(current_epoch=1), module(), batch(), 0)
    assert miner.settings == {**PairMiner().settings, "strategy": "hard", "margin": 0.2}


def miner_from_yaml(text: str) -> PairMiner:
    """The miner that a YAML ``miner:`` group builds, as LightningCLI parses it."""
    parser = jsonargparse.ArgumentParser()
    parser.add_class_arguments(PairMiner, "miner")
    return parser.instantiate_classes(parser.parse_string(text)).miner


def test_the_miner_is_configured_from_yaml_with_a_schedule():
    miner = miner_from_yaml(
        "miner:\n  strategy: all\n  negative_cost: 25\n  schedule:\n    - {epoch: 5, strategy: hard, margin: 0.05}\n"
    )
    assert miner.negative_cost == 25 and miner.settings_at(5)["strategy"] == "hard"


@pytest.mark.parametrize(
    "entry, message",
    [
        ("{epoch: 5, negative_cost: 1O}", r"`negative_cost` in `schedule\[0\]` must be a finite number > 0, got '1O'"),
        ("{epoch: 5, margin: .1O}", r"`margin` in `schedule\[0\]` must be a finite number, got '.1O'"),
    ],
)
def test_a_typo_in_a_yaml_schedule_value_is_a_value_error_naming_the_entry(entry, message):
    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(PairMiner, "miner")
    config = parser.parse_string(f"miner:\n  schedule:\n    - {entry}\n")
    with pytest.raises(ValueError, match=message):
        parser.instantiate_classes(config)


def test_a_misspelt_strategy_in_yaml_is_rejected_with_the_choices():
    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(PairMiner, "miner")
    with pytest.raises(jsonargparse.ArgumentError, match="hardest"):
        parser.parse_string("miner:\n  strategy: hardest\n")


# Mining block by block.


@pytest.mark.parametrize("strategy", ["all", "hard", "topk_negatives"])
@pytest.mark.parametrize("weighting", ["balanced", "per_anchor", "uniform"])
def test_mining_row_blocks_gives_the_whole_batch_pairs_and_statistics(strategy, weighting):
    # 600 x 600 similarities span two of mine's cache blocks; the functional core applied to the whole batch at
    # once is the reference.
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 40, (600,), generator=generator)
    similarity = cosine_similarity(torch.randn(600, 16, generator=generator))
    assert len(row_blocks(similarity)) > 1
    miner = PairMiner(strategy=strategy, weighting=weighting, negative_cost=3.0, negatives_per_anchor=7)
    pairs = miner.mine(similarity, labels, labels, torch.arange(600))
    candidates = pair_masks(labels, labels, torch.arange(600))
    positive, negative = select_pairs(similarity, *candidates, strategy, miner.margin, 7)
    counts = pair_counts(positive, negative)
    assert torch.equal(pairs.positive, positive) and torch.equal(pairs.negative, negative)
    expected = Pairs(positive, negative, *pair_weights(positive, negative, weighting, counts), 3.0).matrices()
    for ours, reference in zip(pairs.matrices(), expected):
        torch.testing.assert_close(ours, reference, rtol=0, atol=0)
    sums = mining_statistics(similarity, candidates[1], torch.tensor(600 * 599), positive, negative)
    assert miner.statistics["num_positive"] == counts[0] and miner.statistics["num_negative"] == counts[1]
    torch.testing.assert_close(miner.statistics["pairs_kept"], counts[:2].sum().float() / sums[0])
    torch.testing.assert_close(miner.statistics["positive_similarity"], sums[1] / counts[0])
    torch.testing.assert_close(miner.statistics["negative_similarity"], sums[2] / counts[1])
    torch.testing.assert_close(miner.statistics["hardest_negative_similarity"], sums[3] / sums[4])


# Statistics.


def test_the_statistics_describe_the_pairs_kept():
    miner = PairMiner(strategy="hard", margin=0.05)
    trainer(callbacks=[miner], max_steps=1).fit(module(), loader(*batch()))
    statistics = miner.statistics
    assert set(statistics) == {
        "pairs_kept",
        "num_positive",
        "num_negative",
        "positive_similarity",
        "negative_similarity",
        "hardest_negative_similarity",
    }
    # 16 samples make 16 * 15 candidate pairs; hard mining keeps some, not all.
    assert 0 < statistics["pairs_kept"] < 1
    kept = statistics["num_positive"] + statistics["num_negative"]
    assert float(kept) == pytest.approx(float(statistics["pairs_kept"]) * 16 * 15)


def test_statistics_by_hand_on_a_fixed_similarity():
    labels = torch.tensor([0, 0, 1, 1])
    similarity = torch.tensor(
        [[1.0, 0.8, 0.5, 0.1], [0.8, 1.0, 0.9, 0.15], [0.5, 0.9, 1.0, 0.3], [0.1, 0.15, 0.3, 1.0]]
    )
    miner = PairMiner(strategy="hard", margin=0.1)
    miner.mine(similarity, labels, labels, torch.arange(4))
    # Kept: positives (1,0) 0.8 and (2,3) 0.3; negatives (1,2) 0.9, (2,0) 0.5, (2,1) 0.9; 12 candidate pairs.
    expected = {
        "pairs_kept": 5 / 12,
        "num_positive": 2.0,
        "num_negative": 3.0,
        "positive_similarity": (0.8 + 0.3) / 2,
        "negative_similarity": (0.9 + 0.5 + 0.9) / 3,
        "hardest_negative_similarity": (0.5 + 0.9 + 0.9 + 0.15) / 4,
    }
    assert {name: pytest.approx(float(value)) for name, value in miner.statistics.items()} == expected


@pytest.mark.parametrize("weighting", ["balanced", "per_anchor", "uniform"])
def test_float64_similarities_get_float64_weights(weighting):
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    similarity = cosine_similarity(torch.randn(9, 5, dtype=torch.float64))
    pairs = PairMiner(weighting=weighting).mine(similarity, labels, labels, torch.arange(9))
    _, w = pairs.matrices(torch.float64)
    assert pairs.positive_weight.dtype == torch.float64
    # Every anchor has both kinds of pair here, so each weighting's weights sum to exactly 2 or 1 in float64.
    total = 1.0 if weighting == "uniform" else 2.0
    assert abs(float(w.sum()) - total) < 1e-14


def test_a_batch_that_is_not_mined_logs_no_statistics():
    miner, logged = PairMiner(), []
    miner.mine(torch.rand(4, 4), torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 1, 1]))
    assert miner.statistics
    pl_module = SimpleNamespace(log=lambda name, *args, **kwargs: logged.append(name))
    miner.on_train_batch_start(SimpleNamespace(current_epoch=0), pl_module, None, 1)
    miner.on_train_batch_end(None, pl_module, None, None, 1)
    assert miner.statistics == {} and logged == []


def test_the_statistics_reach_the_trainers_logged_metrics():
    miner = PairMiner()
    fit_trainer = trainer(callbacks=[miner], max_steps=1)
    fit_trainer.fit(module(), loader(*batch()))
    logged = {name: float(value) for name, value in fit_trainer.callback_metrics.items() if name.startswith("mining/")}
    assert logged == {f"mining/{name}": pytest.approx(float(value)) for name, value in miner.statistics.items()}
    assert logged["mining/pairs_kept"] == 1.0 and logged["mining/num_positive"] == 4 * 4 * 3


def test_a_mean_over_no_pairs_is_logged_as_nan():
    labels = torch.arange(4)  # all distinct: no positive pair
    miner = PairMiner()
    miner.mine(torch.eye(4), labels, labels, torch.arange(4))
    assert miner.statistics["num_positive"] == 0
    assert math.isnan(miner.statistics["positive_similarity"])


# Mixed precision.


@pytest.mark.parametrize("strategy", ["all", "hard", "topk_negatives"])
def test_bf16_mixed_training_gives_a_finite_loss_and_weights(strategy):
    miner = PairMiner(strategy=strategy, weighting="per_anchor", negative_cost=25.0)
    model = module()
    fit_trainer = trainer(callbacks=[miner], max_steps=3, precision="bf16-mixed")
    fit_trainer.fit(model, loader(*batch(), batch_size=8))
    assert math.isfinite(fit_trainer.callback_metrics["train/loss"])
    assert all(torch.isfinite(parameter).all() for parameter in model.parameters())


@pytest.mark.parametrize("strategy", ["all", "hard", "topk_negatives"])
def test_fp16_autocast_mining_and_loss_are_finite_and_in_float32(strategy):
    # Lightning turns precision="16-mixed" into bf16-mixed on CPU, so fp16 autocast is exercised directly.
    torch.manual_seed(0)
    net = nn.Linear(64, 16)
    images, labels = batch()
    with torch.autocast("cpu", dtype=torch.float16):
        embeddings = net(images.flatten(1))
        similarity = cosine_similarity(embeddings)
        pairs = PairMiner(strategy=strategy, negative_cost=25.0).mine(
            similarity.detach(), labels, labels, torch.arange(len(labels))
        )
        loss = binomial_deviance_of_pairs(similarity, pairs, alpha=40.0)
    assert embeddings.dtype == torch.float16
    assert similarity.dtype == pairs.positive_weight.dtype == pairs.negative_weight.dtype == loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in net.parameters())


# The cross-batch memory.


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(memory_size=0), r"`memory_size` must be a positive integer, got 0"),
        (dict(memory_size=-8), r"`memory_size` must be a positive integer, got -8"),
        (dict(memory_size=16, use_memory="yes"), r"`use_memory` must be true or false, got 'yes'"),
        (
            dict(memory_size=16, schedule=[{"epoch": -1, "use_memory": True}]),
            r"`epoch` in `schedule\[0\]` must be an integer >= 0, got -1",
        ),
        (
            dict(memory_size=16, schedule=[{"epoch": 2, "batch_as_reference": 0}]),
            r"`batch_as_reference` in `schedule\[0\]` must be true or false, got 0",
        ),
        (dict(batch_as_reference=False), r"`batch_as_reference=False` needs a memory to mine against: set `memory_size`"),
        (dict(schedule=[{"epoch": 3, "use_memory": True}]), r"`use_memory` in `schedule\[0\]` needs a memory"),
    ],
)
def test_invalid_memory_settings_are_value_errors_naming_the_setting(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PairMiner(**kwargs)


class MemoryRecorder(L.Callback):
    """Each step's epoch, memory size and pair counts."""

    def __init__(self, miner):
        self.miner, self.steps = miner, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        statistics = self.miner.statistics
        self.steps.append(
            (trainer.current_epoch, len(self.miner.memory), int(statistics["num_positive"]), int(statistics["num_negative"]))
        )


def test_the_memory_is_configured_from_yaml_and_started_by_the_schedule():
    miner = miner_from_yaml(
        "miner:\n  memory_size: 32\n  use_memory: false\n  schedule:\n    - {epoch: 1, use_memory: true}\n"
    )
    recorder = MemoryRecorder(miner)
    # Batches of 4 samples of one class, in class order: a batch alone has 12 positive pairs and no negative one.
    trainer(callbacks=[miner, recorder], max_epochs=3).fit(module(), loader(*batch(), batch_size=4))
    steps = recorder.steps
    assert steps[:4] == [(0, 0, 12, 0)] * 4, "the memory is off in epoch 0"
    # From epoch 1 each anchor also meets the earlier batches of the other classes, as negatives.
    assert steps[4:8] == [(1, 4, 12, 0), (1, 8, 12, 16), (1, 12, 12, 32), (1, 16, 12, 48)]
    # In epoch 2 the memory holds every sample's embedding of epoch 1. Of the 4 of its class, an anchor pairs with
    # the 3 of the other samples, not with its own: 12 more positive pairs per batch, not 16.
    assert steps[8:] == [(2, 20, 24, 48), (2, 24, 24, 64), (2, 28, 24, 80), (2, 32, 24, 96)]


class PlainCriterion(nn.Module):
    """A criterion of embeddings and labels, without `from_pairs`."""

    def forward(self, embeddings, labels):
        return embeddings.pow(2).mean()


def test_a_memory_with_a_criterion_without_from_pairs_is_refused_by_name():
    torch.manual_seed(0)
    plain = MetricLearningModule(ConvEmbedder(embedding_dim=8, channels=(8, 16)), criterion=PlainCriterion())
    with pytest.raises(ValueError, match=r"`memory_size` needs a criterion with `from_pairs.*got PlainCriterion"):
        trainer(callbacks=[PairMiner(memory_size=8)], max_steps=1).fit(plain, loader(*batch()))


def test_every_fit_starts_with_an_empty_memory():
    miner = PairMiner(memory_size=64)
    trainer(callbacks=[miner], max_epochs=2).fit(module(), loader(*batch(), batch_size=4))
    assert len(miner.memory) == 32
    trainer(callbacks=[miner], max_steps=1).fit(module(), loader(*batch(), batch_size=4))
    assert miner.memory.indexes.tolist() == [0, 1, 2, 3]


def fit_with_memory(tmp_path, ckpt_path=None):
    """Three epochs of 4 P x K batches (2 x 3) with a memory of 10 rows, checkpointed every 6 steps; the module and
    the miner. The PKDataLoader resumes mid-epoch with the batches that the interrupted fit had still to train on."""
    images, labels = batch(classes=4, per_class=6)
    sampler = PKSampler(labels, classes_per_batch=2, samples_per_class=3, seed=1)
    data = PKDataLoader(TensorImageDataset(images, labels), sampler=sampler, batch_size=sampler.batch_size)
    miner = PairMiner(strategy="hard", weighting="per_anchor", memory_size=10)
    checkpoints = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=6, save_top_k=-1)
    fit_trainer = trainer(callbacks=[miner, checkpoints], max_epochs=3, enable_checkpointing=True)
    fitted = module()
    fit_trainer.fit(fitted, data, ckpt_path=ckpt_path)
    return fitted, miner


def test_a_fit_resumed_mid_epoch_continues_with_the_checkpoints_memory(tmp_path):
    whole, whole_miner = fit_with_memory(tmp_path)
    # Step 6 is the second of epoch 1's four batches.
    checkpoint = tmp_path / "epoch=1-step=6.ckpt"
    saved = torch.load(checkpoint, weights_only=True)["callbacks"]["PairMiner"]["memory"]
    assert saved["indexes"].shape == (10,) and saved["embeddings"].shape == (10, 8)
    resumed, resumed_miner = fit_with_memory(tmp_path / "resumed", ckpt_path=checkpoint)
    for name in ("embeddings", "labels", "indexes"):
        torch.testing.assert_close(getattr(resumed_miner.memory, name), getattr(whole_miner.memory, name))
    for name, value in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, msg=name)
