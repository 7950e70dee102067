"""Specification of the distribution: a wheel built with ``pip wheel .`` carries the configs, ``py.typed``, the
license and the extras, and ``lit-metric`` runs a bundled config by name from it, outside the checkout."""

import email
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import lit_metric
from lit_metric.cli import bundled_config_names

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel of a copy of the checkout (so that the build leaves nothing in it), built offline in about 2 s."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "lit_metric", source / "lit_metric", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        check=True, capture_output=True, timeout=120,
    )
    (path,) = out.glob("lit_metric-*.whl")
    return path


def test_the_wheel_carries_every_config_and_py_typed(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"lit_metric/configs/{name}.yaml" for name in bundled_config_names()} <= names
    assert "lit_metric/py.typed" in names
    assert len(bundled_config_names()) >= 10  # digits, the recipes and the overlays


def test_the_wheel_metadata_names_the_version_license_and_extras(wheel):
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
        fields = email.message_from_bytes(archive.read(metadata))
        (license_file,) = [name for name in archive.namelist() if name.endswith("licenses/LICENSE")]
        assert "Apache License" in archive.read(license_file).decode()
    assert fields["Version"] == lit_metric.__version__
    assert fields["License-Expression"] == "Apache-2.0"
    assert {"tensorboard", "dev"} <= set(fields.get_all("Provides-Extra"))
    requirements = fields.get_all("Requires-Dist")
    assert any(req.startswith("tensorboard") and 'extra == "tensorboard"' in req for req in requirements)


def test_a_bundled_config_runs_by_name_from_the_unpacked_wheel_outside_the_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    code = "import lit_metric, sys; print(lit_metric.__file__); sys.argv[1:] = ['fit', '--config', 'digits', " \
           "'--print_config']; from lit_metric.cli import main; main()"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=workdir, timeout=120,
        env={**os.environ, "PYTHONPATH": str(site)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(str(site / "lit_metric"))
    assert "class_path: lit_metric.data.DigitsDataModule" in result.stdout
