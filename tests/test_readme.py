"""The README is the user's manual: short, every Python example in it runs, and every command and config it shows
exists."""

import re
import shlex
import shutil
from pathlib import Path

import pytest

from lit_metric.cli import bundled_config_names, run
from lit_metric.data import DigitsDataModule

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)
PROGRAMS = {"make", "pip", "lit-metric", "lit-metric-protocol", "python", "wandb", "torchrun", "srun"}


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    """What the examples assume a user has: `best.ckpt` from `lit-metric fit`, `embeddings.pt` from `predict`."""
    workdir = tmp_path_factory.mktemp("readme")
    config = str(ROOT / "configs" / "digits.yaml")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        fitted = run(["fit", "--config", config, "--trainer.max_epochs=1", "--trainer.logger=false",
                      "--trainer.enable_progress_bar=false"])
        shutil.copy(fitted.trainer.checkpoint_callback.best_model_path, workdir / "best.ckpt")
        run(["predict", "--config", config, "--config", str(ROOT / "configs" / "predict.yaml"),
             f"--ckpt_path={workdir / 'best.ckpt'}"])
    return workdir


@pytest.mark.parametrize("source", PYTHON_BLOCKS, ids=[f"block{i}" for i in range(len(PYTHON_BLOCKS))])
def test_python_examples_run(source, user_files, monkeypatch):
    monkeypatch.chdir(user_files)
    monkeypatch.setenv("WANDB_MODE", "offline")
    digits = DigitsDataModule()
    digits.setup()
    namespace = {"__name__": "readme", "gallery": digits.holdout_set.images, "new_images": digits.train_set.images[:3]}
    exec(compile(source, "README.md", "exec"), namespace)


def test_the_readme_is_a_manual_of_at_most_15_kib():
    assert len(README.encode()) <= 15 * 1024


def test_every_config_the_readme_names_exists():
    for config in set(re.findall(r"(?:benchmarks/)?configs/[\w.]+\.yaml", README)):
        assert (ROOT / config).is_file(), config
    names = set(re.findall(r"--config (\w+)", README))
    assert names and names <= set(bundled_config_names()), names - set(bundled_config_names())


def test_the_commands_shown_are_make_targets_or_installed_programs():
    makefile = (ROOT / "Makefile").read_text()
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in filter(None, (line.split("#")[0].strip() for line in block.splitlines())):
            words = [word for word in shlex.split(line) if not re.fullmatch(r"[A-Z_]+=\S*", word)]
            assert words[0] in PROGRAMS, line
            if words[0] == "make":
                assert re.search(rf"^{words[1]}:", makefile, flags=re.M), line


def test_the_table_of_contents_links_to_headings():
    # GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens.
    headings = {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
                for heading in re.findall(r"^#+ (.+)$", README, flags=re.M)}
    anchors = set(re.findall(r"\]\(#([^)]+)\)", README))
    assert anchors and anchors <= headings, anchors - headings
