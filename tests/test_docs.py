"""The pages under docs/ are manuals too: every Python example in them runs, and every config they name exists."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md"))
EXAMPLES = [
    (page, source) for page in PAGES for source in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
]


@pytest.mark.parametrize(("page", "source"), EXAMPLES, ids=[f"{p.name}-{i}" for i, (p, _) in enumerate(EXAMPLES)])
def test_python_examples_run(page, source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples may write files, such as a weights file
    exec(compile(source, str(page), "exec"), {"__name__": "docs"})


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_config_a_page_names_exists(page):
    for config in set(re.findall(r"(?:benchmarks/)?configs/[\w.]+\.yaml", page.read_text())):
        assert (ROOT / config).is_file(), config
