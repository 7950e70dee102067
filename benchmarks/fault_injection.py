"""Fault injection: ``lit-metric fit`` runs on digits, each killed once and resumed, against one uninterrupted run.

Every run is ``lit-metric fit --config configs/digits.yaml`` shortened by command-line options: ``--epochs`` epochs,
a wide embedding (``--embedding-dim``) so that a checkpoint is tens of MB and its save takes measurable time, a
``ModelCheckpoint`` that writes ``last.ckpt`` after every training step, and a CSV logger instead of W&B. Run ``i``
is killed once, with ``SIGTERM`` when ``i`` is even, else ``SIGKILL``; its ``$TMPDIR`` is a fresh folder on
``/dev/shm`` (another file system than the run folder) for half the runs of each signal, else on the run folder's.
Half the kills of each signal are aimed at a checkpoint save: the benchmark watches the checkpoint folder for the
temporary file that a save writes (``.last.ckpt.tmp-PID``) and sends the signal while it is there; the other kills
fall at a uniformly random moment of the uninterrupted run's wall time (drawn again, within the time it took, for a
run that ends before that moment). A kill counts as during a save when the
temporary file existed just before and just after the signal was sent.

Each killed run is then resumed with ``fit --ckpt_path`` from its newest checkpoint (``on_exception.ckpt``, which
``SIGTERM`` writes, else ``last.ckpt``, else from scratch) and finished. A run *matches* when its final ``last.ckpt``
holds bitwise the uninterrupted run's weights and the last validation metrics it logged (over the killed and the
resumed process) are bitwise the uninterrupted run's. Orphans are the bytes left, after all runs, in the runs'
``$TMPDIR`` folders and as temporary checkpoint files (``.*.tmp-*``) in the run folders.

Run: ``python benchmarks/fault_injection.py`` (``--runs 4`` for a quick try); ``--output FILE`` writes the JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

CONFIG = Path(__file__).parents[1] / "configs" / "digits.yaml"
SAVE_MARK = ".last.ckpt.tmp-"


def fit_command(folder: Path, args: argparse.Namespace, ckpt_path: Path | None = None) -> list[str]:
    """The shortened digits fit, writing everything under ``folder``."""
    checkpoints = folder / "checkpoints"
    command = [
        sys.executable, "-m", "lit_metric", "fit", "--config", str(CONFIG),
        f"--trainer.max_epochs={args.epochs}", f"--trainer.limit_train_batches={args.train_batches}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.save_dir={folder}",
        "--trainer.logger.flush_logs_every_n_steps=1",
        "--trainer.callbacks=lightning.pytorch.callbacks.ModelCheckpoint",
        f"--trainer.callbacks.dirpath={checkpoints}", "--trainer.callbacks.every_n_train_steps=1",
        "--trainer.callbacks.save_top_k=0", "--trainer.callbacks.save_last=true",
        f"--model.init_args.embedding_net.init_args.embedding_dim={args.embedding_dim}",
    ]
    return command + ([f"--ckpt_path={ckpt_path}"] if ckpt_path is not None else [])


def environment(tmpdir: Path) -> dict[str, str]:
    # One thread: the same float sums in every run whatever else loads the machine.
    return {**os.environ, "TMPDIR": str(tmpdir), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}


def saving(checkpoints: Path) -> bool:
    try:
        return any(entry.name.startswith(SAVE_MARK) for entry in os.scandir(checkpoints))
    except FileNotFoundError:
        return False


def run_and_kill(command, env, log, sig, saves_to_skip: int | None, delay: float, checkpoints: Path) -> dict:
    """Start ``command``, send ``sig`` during the save after ``saves_to_skip`` saves, or when ``saves_to_skip`` is
    ``None``, after ``delay`` seconds."""
    at_save = saves_to_skip is not None
    start = time.monotonic()
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    was_saving = False
    while process.poll() is None:
        if at_save:
            if saving(checkpoints):
                if saves_to_skip == 0:
                    break
                saves_to_skip -= 1
                while saving(checkpoints) and process.poll() is None:
                    time.sleep(0.002)
        elif time.monotonic() - start >= delay:
            break
        time.sleep(0.002)
    killed = process.poll() is None
    if killed:
        before = saving(checkpoints)
        process.send_signal(sig)
        was_saving = before and saving(checkpoints)
    code = process.wait()
    return {"killed": killed, "during_save": was_saving, "kill_time_s": round(time.monotonic() - start, 2),
            "exit_code": code}


def final_weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def last_validation(folder: Path) -> dict[str, str]:
    """The last row of ``val/*`` metrics over the run's CSV logs in version order, as logged (exact decimal text)."""
    row = {}
    versions = sorted(folder.glob("*/version_*/metrics.csv"), key=lambda p: int(p.parent.name[8:]))
    for path in versions:
        with open(path) as file:
            for line in csv.DictReader(file):
                values = {k: v for k, v in line.items() if k.startswith("val/") and v}
                if values:
                    row = values
    return row


def orphan_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-batches", type=int, default=7, help="per epoch; digits has 7")
    parser.add_argument("--embedding-dim", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a fresh folder in the system temp dir")
    parser.add_argument("--shm", type=Path, default=Path("/dev/shm"), help="the other file system for $TMPDIR")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--only", type=int, nargs="+", default=None, help="run only these of the runs")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fault_injection-"))
    workdir.mkdir(parents=True, exist_ok=True)
    tmp_roots = {False: workdir / "tmp", True: Path(tempfile.mkdtemp(prefix="fault_injection-", dir=args.shm))}
    for root in tmp_roots.values():
        root.mkdir(exist_ok=True)

    reference_folder = workdir / "reference"
    reference_tmp = tmp_roots[False] / "reference"
    reference_tmp.mkdir()
    started = time.monotonic()
    with open(workdir / "reference.log", "w") as log:
        subprocess.run(fit_command(reference_folder, args), env=environment(reference_tmp),
                       stdout=log, stderr=subprocess.STDOUT, check=True)
    reference_time = time.monotonic() - started
    reference = final_weights(reference_folder), last_validation(reference_folder)
    steps = torch.load(reference_folder / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    print(f"uninterrupted run: {reference_time:.1f} s, {reference[1]}", flush=True)

    results = []
    for i in args.only if args.only is not None else range(args.runs):
        # A stream of its own for every run, so that --only repeats a run's draws.
        rng = random.Random(f"{args.seed}-{i}")
        sig = signal.SIGTERM if i % 2 == 0 else signal.SIGKILL
        on_shm = (i // 2) % 2 == 0
        at_save = (i // 4) % 2 == 0
        folder, tmpdir = workdir / f"run{i:02d}", tmp_roots[on_shm] / f"run{i:02d}"
        tmpdir.mkdir()
        env = environment(tmpdir)
        command = fit_command(folder, args)
        checkpoints = folder / "checkpoints"
        latest = reference_time
        with open(workdir / f"run{i:02d}.log", "w") as log:
            while True:
                saves_to_skip = rng.randrange(steps) if at_save else None
                kill = run_and_kill(command, env, log, sig, saves_to_skip, rng.uniform(0, latest), checkpoints)
                if kill["killed"]:
                    break
                # The run ended before the moment drawn (the machine's load varies): draw again within its time.
                latest = kill["kill_time_s"]
                shutil.rmtree(folder)
            newest = (checkpoints / "on_exception.ckpt", checkpoints / "last.ckpt")
            resume_from = next((path for path in newest if path.is_file()), None)
            resumed = subprocess.run(fit_command(folder, args, resume_from), env=env,
                                     stdout=log, stderr=subprocess.STDOUT)
        weights, metrics = final_weights(folder), last_validation(folder)
        same_weights = weights.keys() == reference[0].keys() and all(
            torch.equal(value, reference[0][name]) for name, value in weights.items()
        )
        result = {
            "run": i, "signal": sig.name, "tmpdir_on_other_fs": on_shm, "aimed_at_save": at_save, **kill,
            "resumed_from": resume_from.name if resume_from else None, "resume_exit_code": resumed.returncode,
            "same_weights": same_weights, "same_metrics": metrics == reference[1] and bool(metrics),
        }
        results.append(result)
        print(json.dumps(result), flush=True)

    orphans = sum(orphan_bytes(root) for root in tmp_roots.values())
    orphans += sum(path.stat().st_size for path in workdir.glob("run*/checkpoints/.*.tmp-*"))
    summary = {
        "runs": len(results),
        "sigterm": sum(r["signal"] == "SIGTERM" for r in results),
        "sigkill": sum(r["signal"] == "SIGKILL" for r in results),
        "tmpdir_on_other_fs": sum(r["tmpdir_on_other_fs"] for r in results),
        "kills_during_save": sum(r["during_save"] for r in results),
        "killed_before_a_checkpoint": sum(r["resumed_from"] is None for r in results),
        "same_weights": sum(r["same_weights"] for r in results),
        "same_metrics": sum(r["same_metrics"] for r in results),
        "same_weights_and_metrics": sum(r["same_weights"] and r["same_metrics"] for r in results),
        "orphan_bytes": orphans,
        "uninterrupted_run_s": round(reference_time, 1),
        "total_s": round(time.monotonic() - started, 1),
        "checkpoint_mb": round((reference_folder / "checkpoints" / "last.ckpt").stat().st_size / 2**20, 1),
    }
    print(json.dumps(summary, indent=1))
    if args.output is not None:
        args.output.write_text(json.dumps({"summary": summary, "runs": results}, indent=1) + "\n")
    shutil.rmtree(tmp_roots[True])


if __name__ == "__main__":
    main()
