"""The pages under docs/ are manuals too: every Python example in them runs, every config they name exists, and the
site with the API reference builds in strict mode, so that a broken link or cross-reference fails."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import griffe
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


def test_the_site_builds_in_strict_mode_with_the_docstrings_cross_referenced(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    training = (tmp_path / "reference" / "training" / "index.html").read_text()
    # MetricLearningModule's docstring names the callback as :class:`~lit_metric.callbacks.BackboneFreeze`.
    assert 'href="#lit_metric.callbacks.backbone_freeze.BackboneFreeze"><code>BackboneFreeze</code>' in training
    for page in (tmp_path / "reference").rglob("*.html"):
        assert not re.search(r":(class|meth|func|attr|mod|data):`", page.read_text()), page


@pytest.fixture(scope="module")
def sphinx_roles():
    """docs/_ext/sphinx_roles.py, the griffe extension of the docs build, and lit_metric as griffe reads it."""
    spec = importlib.util.spec_from_file_location("sphinx_roles", ROOT / "docs" / "_ext" / "sphinx_roles.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SphinxRoles(), griffe.load("lit_metric", search_paths=[str(ROOT)])


@pytest.mark.parametrize(
    ("role", "seen_from", "expected"),
    [
        # In full, shortened by ~, and through the package's re-export to the defining module.
        (":class:`~lit_metric.PairMiner`", "search", "[`PairMiner`][lit_metric.callbacks.pair_miner.PairMiner]"),
        # Relative to the docstring's class, then its module.
        (":meth:`embed`", "module.MetricLearningModule", "[`embed`][lit_metric.module.MetricLearningModule.embed]"),
        (":func:`hard_pairs`", "functional.mining.select_pairs",
         "[`hard_pairs`][lit_metric.functional.mining.hard_pairs]"),
        # Not shown in the reference: other libraries and private objects.
        (":func:`torch.load`", "io", "`torch.load`"),
        (":mod:`lit_metric.functional._scan`", "functional.knn", "`lit_metric.functional._scan`"),
        # A lit_metric name that does not exist stays a cross-reference, which the strict build refuses.
        (":func:`~lit_metric.io.nothing`", "io", "[`nothing`][lit_metric.io.nothing]"),
    ],
)
def test_sphinx_roles_become_checked_cross_references_or_inline_code(sphinx_roles, role, seen_from, expected):
    extension, package = sphinx_roles
    obj = package[seen_from]
    obj.docstring = griffe.Docstring(f"See {role}.", parent=obj)
    extension._convert(obj)
    assert obj.docstring.value == f"See {expected}."
