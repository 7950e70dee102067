"""Specification of notebooks/quickstart.ipynb: it runs top to bottom on CPU in a fresh folder and shows the metrics,
the retrieval pictures and the subclassed module's results. It takes about 30 s on two idle cores; a cell that takes
over a minute fails the test."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "quickstart.ipynb"


def test_the_quickstart_notebook_runs_and_shows_metrics_pictures_and_the_subclass(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # The kernel named "python3" is the interpreter running the tests, so it imports this checkout of lit_metric.
    client = NotebookClient(
        notebook, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, if any cell fails

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    text = "".join(output.get("text", "") for output in outputs)
    assert "val/map@r" in text and "val/map@r with the head:" in text and "neighbour digits:" in text
    assert sum("image/png" in output.get("data", {}) for output in outputs) == 2  # the grid and the projection
    assert (tmp_path / "runs" / "quickstart" / "pictures" / "retrieval_grid-epoch002.png").is_file()
