"""The README is the user's manual: every Python example in it runs, and every command it names exists."""

import re
import shlex
from pathlib import Path

import pytest

README = (Path(__file__).parents[1] / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


@pytest.mark.parametrize("source", PYTHON_BLOCKS, ids=[f"block{i}" for i in range(len(PYTHON_BLOCKS))])
def test_python_examples_run(source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    exec(compile(source, "README.md", "exec"), {"__name__": "readme"})


def test_every_config_the_readme_names_exists():
    root = Path(__file__).parents[1]
    for config in set(re.findall(r"configs/[\w.]+\.yaml", README)):
        assert (root / config).is_file(), config


def test_the_commands_shown_are_make_targets_or_lit_metric():
    makefile = (Path(__file__).parents[1] / "Makefile").read_text()
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in filter(None, (line.split("#")[0].strip() for line in block.splitlines())):
            program, *rest = shlex.split(line)
            if program == "make":
                assert re.search(rf"^{rest[0]}:", makefile, flags=re.M), line
            else:
                assert program in {"lit-metric", "python", "wandb", "torchrun", "srun", "sbatch"}, line
