"""The benchmark scripts run end to end at toy sizes and print their tables, so that the commands that the README and
docs/benchmarks.md quote keep working. Their timings mean nothing here; the figures there come from full runs."""

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def run(script, *args):
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, timeout=240, check=True
    )
    return completed.stdout


def test_loss_benchmark_prints_both_tables():
    out = run("loss.py", "--sizes", "64", "--repeats", "1")
    for method in ("| 64 | lit_metric |", "| 64 | lit_metric, pairs |", "| 64 | naive |", "| 64 | floor |"):
        assert method in out
    for strategy in ("all", "hard", "topk_negatives"):
        assert f"| 64 | {strategy} |" in out


def test_retrieval_benchmark_prints_all_three_methods_with_equal_scores():
    out = run("retrieval.py", "--n", "300", "--repeats", "2")
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| 300 |")]
    assert [row[2].strip() for row in rows] == ["pytorch-metric-learning", "lit_metric", "torchmetrics"]
    # R-Precision and Recall@1 agree across the three implementations (MAP@R is not in torchmetrics).
    assert len({(row[8], row[9]) for row in rows}) == 1
    # The wall time is the median of the calls, inside the printed range.
    for row in rows:
        fastest, slowest = map(float, row[4].split("-"))
        assert fastest <= float(row[3]) <= slowest


def test_gpu_retrieval_benchmark_runs_small_on_the_cpu():
    out = run("retrieval_gpu.py", "--device", "cpu", "--exact-n", "300", "--n", "400", "--scale", "900",
              "--queries", "50", "--repeats", "1")
    assert "of 300 rankings (k = 49) equal float64's" in out
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| 400 |") or line.startswith("| 900 |")]
    assert [(row[1].strip(), row[2].strip(), row[3].strip()) for row in rows] == [
        ("400", "all", "8192"), ("400", "all", "16384"), ("900", "50", "8192"), ("900", "all", "32768")
    ]
    # Leave-one-out scores do not depend on the tiling.
    assert rows[0][6:] == rows[1][6:]


def test_backbone_step_benchmark_prints_the_embedder_against_the_classifier():
    out = run("backbone_step.py", "--model", "test_resnet", "--batch", "8", "--size", "32", "--repeats", "1")
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ") and "ms" not in line]
    assert [row[0].strip() for row in rows] == ["lit_metric", "lit_metric, channels_last", "timm classifier"]
    assert float(rows[2][2]) == 1.0


def test_image_checks_benchmark_times_every_kind_of_file():
    out = run("image_checks.py", "--n", "20", "--repeats", "1")
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| 20 |")]
    assert [row[1].strip() for row in rows] == ["JPEG 128x64", "JPEG 256x256", "PNG 256x256"]
    assert all(float(seconds) >= 0 for row in rows for seconds in row[3:])


def test_fault_injection_kills_a_run_with_each_signal_during_a_save_and_both_resume_bitwise(tmp_path):
    output = tmp_path / "fault_injection.json"
    run("fault_injection.py", "--runs", "2", "--epochs", "2", "--train-batches", "2", "--embedding-dim", "4096",
        "--seed", "1", "--workdir", str(tmp_path / "runs"), "--output", str(output))
    summary = json.loads(output.read_text())["summary"]
    assert (summary["sigterm"], summary["sigkill"], summary["kills_during_save"]) == (1, 1, 2)
    assert summary["same_weights_and_metrics"] == 2
    assert summary["orphan_bytes"] == 0


def test_openmp_benchmark_times_both_wait_policies_at_every_stage():
    out = run("openmp.py", "--size", "64", "--rounds", "1", "--repeats", "1")
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| unset") or line.startswith("| PASSIVE")]
    assert [row[0].strip() for row in rows] == ["unset", "PASSIVE"]
    # Each child ends with torch's OpenMP runtime and faiss's.
    assert [row[-1].strip() for row in rows] == ["2", "2"]


def test_memory_benchmark_prints_each_strategy_with_and_without_the_memory():
    out = run("memory.py", "--batch", "32", "--memory", "64", "--dim", "16", "--repeats", "1")
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ") and "ms" not in line]
    assert [(row[0].strip(), row[1].strip()) for row in rows] == [
        (strategy, memory) for strategy in ("all", "hard", "topk_negatives") for memory in ("-", "64")
    ]
    assert all(float(row[3]) == 1.0 for row in rows[::2])


def test_sharded_benchmark_prints_gathered_sharded_and_single_process_rows_with_equal_scores():
    out = run("sharded.py", "--n", "600", "--queries", "60", "--repeats", "1")
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| 600 |")]
    assert [(row[3].strip(), row[4].strip()) for row in rows] == [("2", "gathered"), ("2", "sharded"), ("1", "single")]
    assert len({tuple(row[9:12]) for row in rows}) == 1 and "DIFFER" not in out
    assert float(rows[0][8]) == 1.0  # memory relative to the gathered evaluation
