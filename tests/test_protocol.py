"""Specification of the split protocol runner: every split fitted, each scored at its final epoch, mean ± sd."""

import csv
import json
import math
from pathlib import Path

import pytest

from lit_metric import protocol

VIPER = str(Path(__file__).parents[1] / "configs" / "viper.yaml")
TINY = [
    "--trainer.max_epochs=2",
    "--trainer.limit_train_batches=2",
    "--trainer.check_val_every_n_epoch=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.logger=false",
]


@pytest.fixture(scope="module")
def two_splits(viper_root, tmp_path_factory):
    """The runner over splits 0 and 1 of a generated 72-person VIPeR layout: its fits, JSON and CSV results."""
    workdir = tmp_path_factory.mktemp("protocol")
    fits = []
    original = protocol.run

    def recording_run(args):
        fits.append(original(args))
        return fits[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        patch.setattr(protocol, "run", recording_run)
        fit_args = ["--config", VIPER, f"--data.init_args.root={viper_root}", *TINY]
        protocol.main(["--splits", "2", "--output", "viper.json", "--", *fit_args])
        rows = protocol.run_protocol(fit_args, [1])
    protocol.write_results(rows, workdir / "split1.csv")
    return fits, json.loads((workdir / "viper.json").read_text()), workdir / "split1.csv"


def test_every_split_is_fitted_on_its_own_people(two_splits):
    fits, results, _ = two_splits
    assert [fit.datamodule.hparams.split_index for fit in fits] == [0, 1, 1]
    assert fits[0].datamodule.split["train_ids"] != fits[1].datamodule.split["train_ids"]
    assert [row["split"] for row in results["splits"]] == [0, 1]
    assert all(type(row["split"]) is int for row in results["splits"])


def test_each_split_is_scored_by_its_final_epoch(two_splits):
    fits, results, _ = two_splits
    for fit, row in zip(fits, results["splits"]):
        # Validation ran after the last epoch, so the fit's last logged metrics are the final weights' metrics.
        assert fit.trainer.current_epoch == 2
        assert row["cmc@1"] == pytest.approx(float(fit.trainer.callback_metrics["val/cmc@1"]))
        assert {"cmc@1", "cmc@5", "cmc@10", "cmc@20", "map", "seconds"} <= set(row)


def test_the_summary_is_the_mean_and_sample_sd_over_splits(two_splits):
    _, results, _ = two_splits
    values = [row["cmc@1"] for row in results["splits"]]
    mean = sum(values) / 2
    assert results["summary"]["cmc@1"]["mean"] == pytest.approx(mean)
    assert results["summary"]["cmc@1"]["sd"] == pytest.approx(math.sqrt(sum((v - mean) ** 2 for v in values)))


def test_a_csv_holds_one_row_per_split(two_splits):
    fits, _, path = two_splits
    with path.open() as file:
        (row,) = list(csv.DictReader(file))
    assert row["split"] == "1" and 0 <= float(row["cmc@1"]) <= 1


def test_an_interrupted_run_keeps_the_splits_it_finished(tmp_path, monkeypatch):
    def one_split(fit_args, splits):
        (split,) = splits
        if split == 1:
            raise KeyboardInterrupt
        return [{"split": split, "seconds": 1.0, "cmc@1": 0.5}]

    monkeypatch.setattr(protocol, "run_protocol", one_split)
    output = tmp_path / "results.json"
    with pytest.raises(KeyboardInterrupt):
        protocol.main(["--splits", "3", "--output", str(output), "--", "--config", VIPER])
    assert [row["split"] for row in json.loads(output.read_text())["splits"]] == [0]


def test_the_table_shows_splits_and_mean_in_percent():
    rows = [{"split": 0, "cmc@1": 0.25, "seconds": 10.0}, {"split": 1, "cmc@1": 0.35, "seconds": 12.0}]
    table = protocol.format_table(rows)
    assert "25.0" in table and "35.0" in table
    assert table.splitlines()[-1].split() == ["mean", "30.0", "±", "7.1", "11", "±", "1"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--splits", "0"], "--splits must be >= 1"),
        (["--output", "results.txt"], "--output must end in .json or .csv"),
        (["--", "--data.init_args.split_index=3"], "split_index is set by the runner"),
    ],
)
def test_bad_runner_arguments_are_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        protocol.main(argv)
    assert message in capsys.readouterr().err
