"""The split protocol runner: train and evaluate splits 0..N-1 of a config, report mean ± sd at the final epoch.

Re-ID benchmarks such as VIPeR are scored as the mean over 10 random halvings of the people. ::

    lit-metric-protocol --splits 10 --output viper.json -- --config configs/viper.yaml --data.init_args.root PATH

Everything after ``--`` goes to ``lit-metric fit`` unchanged, once per split, with ``--data.init_args.split_index``
set to the split. Each split is scored by the weights of its final epoch, validated once more after fit: never by a
checkpoint picked on the people being scored, since validation here runs on the test people.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from lit_metric.cli import run

__all__ = ["main", "run_protocol", "summarize"]

REPORTED = ("cmc@", "map")


def run_protocol(fit_args: Sequence[str], splits: Sequence[int]) -> list[dict[str, float]]:
    """Fit ``lit-metric fit fit_args`` once per split and score its final weights.

    Args:
        fit_args: the ``lit-metric fit`` arguments, without the subcommand and without ``split_index``.
        splits: the split indices to run.

    Returns:
        One dict per split: ``split`` (an int), ``seconds`` (fit and final evaluation) and the validation metrics whose
        names start with ``cmc@`` or are ``map`` or ``map@r``, without the ``val/`` prefix.
    """
    rows = []
    for split in splits:
        start = time.perf_counter()
        with warnings.catch_warnings():
            # The runner's own command line is in sys.argv; LightningCLI warns that it ignores it, which it should.
            warnings.filterwarnings("ignore", "LightningCLI's args parameter is intended to run from within Python")
            cli = run(["fit", *fit_args, f"--data.init_args.split_index={split}"])
        # The module as it is after its last epoch, not a checkpoint: ckpt_path=None with a model given.
        (metrics,) = cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)
        row: dict[str, float] = {"split": split, "seconds": time.perf_counter() - start}
        for name, value in metrics.items():
            short = name.removeprefix("val/")
            if short.startswith(REPORTED[0]) or short in ("map", "map@r"):
                row[short] = float(value)
        rows.append(row)
    return rows


def summarize(rows: Sequence[dict[str, float]]) -> dict[str, tuple[float, float]]:
    """``(mean, sample sd)`` of every column of ``rows`` but ``split``; the sd of one row is 0."""
    names = [name for name in rows[0] if name != "split"]
    summary = {}
    for name in names:
        values = [row[name] for row in rows]
        mean = sum(values) / len(values)
        spread = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
        summary[name] = (mean, math.sqrt(spread))
    return summary


def format_table(rows: Sequence[dict[str, float]]) -> str:
    """The per-split rows and a ``mean ± sd`` line, metrics in percent, as a plain-text table."""
    summary = summarize(rows)
    names = list(summary)

    def cell(name: str, value: float) -> str:
        return f"{value:.0f}" if name == "seconds" else f"{100 * value:.1f}"

    lines = ["split  " + "  ".join(f"{name:>12}" for name in names)]
    lines += [f"{int(row['split']):>5}  " + "  ".join(f"{cell(n, row[n]):>12}" for n in names) for row in rows]
    means = [f"{cell(n, mean)} ± {cell(n, sd)}" for n, (mean, sd) in summary.items()]
    lines.append("mean   " + "  ".join(f"{m:>12}" for m in means))
    return "\n".join(lines)


def write_results(rows: Sequence[dict[str, float]], path: Path) -> None:
    """The rows and their summary as JSON (``.json``) or the rows as CSV (``.csv``)."""
    if path.suffix == ".json":
        summary = {name: {"mean": mean, "sd": sd} for name, (mean, sd) in summarize(rows).items()}
        path.write_text(json.dumps({"splits": list(rows), "summary": summary}, indent=2) + "\n")
    elif path.suffix == ".csv":
        with path.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        raise ValueError(f"`--output` must end in .json or .csv, got {str(path)!r}")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``lit-metric-protocol`` and ``python -m lit_metric.protocol``."""
    parser = argparse.ArgumentParser(
        prog="lit-metric-protocol",
        description="Fit and score splits 0..N-1 of a config at the final epoch; print mean ± sd.",
        epilog="Arguments after -- go to `lit-metric fit` for every split.",
    )
    parser.add_argument("--splits", type=int, default=10, help="number of splits, from --first-split on (10)")
    parser.add_argument("--first-split", type=int, default=0, help="the first split index (0)")
    parser.add_argument(
        "--output", type=Path, help="also write the results to this .json or .csv file, after every split"
    )
    args, fit_args = parser.parse_known_args(argv)
    if fit_args[:1] == ["--"]:
        fit_args = fit_args[1:]
    if args.splits < 1 or args.first_split < 0:
        parser.error(f"--splits must be >= 1 and --first-split >= 0, got {args.splits} and {args.first_split}")
    if args.output is not None and args.output.suffix not in (".json", ".csv"):
        parser.error(f"--output must end in .json or .csv, got {str(args.output)!r}")
    if any(arg.startswith("--data.init_args.split_index") for arg in fit_args):
        parser.error("--data.init_args.split_index is set by the runner; use --splits and --first-split")
    rows = []
    for split in range(args.first_split, args.first_split + args.splits):
        rows += run_protocol(fit_args, [split])
        if args.output is not None:
            # After every split, so that an interrupted run keeps the splits it finished.
            write_results(rows, args.output)
    print(format_table(rows))


if __name__ == "__main__":
    main()
