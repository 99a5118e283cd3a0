"""
The release: one version everywhere, a wheel and sdist that build and pass ``twine check``, a wheel that
holds the JSON Schemas, the licence and the provider metadata, and, installed from that wheel into a clean
virtual environment, a provider Airflow lists.

The last test needs the package installed from the wheel: ``scripts/ci-floor.sh`` (run by ``.ci/run``)
builds the wheel, installs it into ``.venv-floor`` (no editable install, no system site-packages) and runs
this file there.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import subprocess
import sys
import zipfile
from importlib.metadata import distribution
from pathlib import Path

import pytest

import airflow_provider_segment_profiles
from airflow_provider_segment_profiles.get_provider_info import get_provider_info

REPO = Path(__file__).resolve().parent.parent
DIST_NAME = "airflow-provider-segment-profiles"
SCHEMAS = {"send_group.json", "send_identify.json", "send_subscriptions.json", "send_track.json"}


def _installed_from_wheel() -> bool:
    """Whether the imported package is a wheel install (not editable: its files are in site-packages)."""
    files = distribution(DIST_NAME).files or []
    return any(str(f).endswith("operators/segment_profiles.py") for f in files)


def test_one_version_everywhere() -> None:
    version = airflow_provider_segment_profiles.__version__
    assert get_provider_info()["versions"] == [version]
    assert distribution(DIST_NAME).version == version
    newest = re.search(r"^## (\S+)", (REPO / "CHANGELOG.md").read_text(), re.MULTILINE)
    assert newest is not None and newest.group(1) == version
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject
    assert not re.search(r"^version\s*=", pyproject, re.MULTILINE)


def test_wheel_and_sdist_build_and_pass_twine_check(tmp_path: Path) -> None:
    """``python -m build`` (isolated: flit_core from the package index) and ``twine check --strict``."""
    built = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(tmp_path), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    version = airflow_provider_segment_profiles.__version__
    wheel = tmp_path / f"airflow_provider_segment_profiles-{version}-py3-none-any.whl"
    sdist = tmp_path / f"airflow_provider_segment_profiles-{version}.tar.gz"
    assert wheel.is_file() and sdist.is_file(), sorted(p.name for p in tmp_path.iterdir())
    checked = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", str(wheel), str(sdist)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = f"airflow_provider_segment_profiles-{version}.dist-info"
        metadata = archive.read(f"{info}/METADATA").decode()
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
        licence = archive.read(f"{info}/licenses/LICENSE").decode()
    assert {n.rsplit("/", 1)[1] for n in names if "/actions/schemas/" in n} == SCHEMAS
    assert "airflow_provider_segment_profiles/get_provider_info.py" in names
    assert "airflow_provider_segment_profiles/py.typed" in names
    points = configparser.ConfigParser()
    points.read_string(entry_points)
    assert dict(points["apache_airflow_provider"]) == {
        "provider_info": "airflow_provider_segment_profiles.get_provider_info:get_provider_info"
    }
    assert licence == (REPO / "LICENSE").read_text()
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    assert f"Version: {version}" in metadata
    assert "License-Expression: Apache-2.0" in metadata
    assert "Requires-Dist: apache-airflow>=3.1.8" in metadata


@pytest.mark.skipif(
    not _installed_from_wheel(),
    reason="the package is an editable install here (make test); scripts/ci-floor.sh runs this test against "
    "the wheel it installs into .venv-floor",
)
def test_installed_wheel_is_a_provider_airflow_lists(tmp_path: Path, airflow_db: Path) -> None:
    """From a directory without the checkout, the installed wheel imports, has its schemas and is listed."""
    package = Path(airflow_provider_segment_profiles.__file__).parent
    assert Path(sys.prefix) in package.parents, package
    assert {p.name for p in (package / "actions" / "schemas").glob("*.json")} == SCHEMAS
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    env.pop("PYTHONPATH", None)
    listed = subprocess.run(
        [sys.executable, "-m", "airflow", "providers", "list", "--output", "json"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
        env=env,
    )
    assert listed.returncode == 0, listed.stderr[-3000:]
    providers = {p["package_name"]: p for p in json.loads(listed.stdout)}
    assert providers[DIST_NAME]["version"] == airflow_provider_segment_profiles.__version__
