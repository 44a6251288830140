"""Packaging: the configs live in the top-level ``conf/`` folder and ship inside the package as ``cxrnet.conf``;
the commands find them from a checkout, an editable install and a wheel installed outside the repository."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

import cxrnet
import cxrnet.conf

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_WAIT_POLICY="PASSIVE", **extra)
    return env


def _source_copy(dest: Path) -> Path:
    """The files a source distribution holds (package, configs, metadata), without build leftovers."""
    dest.mkdir()
    for name in ("cxrnet", "conf"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, dest / name)
    return dest


def test_every_package_directory_is_listed_and_the_configs_are_mapped() -> None:
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "cxrnet").rglob("__init__.py")
    } | {"cxrnet.conf"}
    assert listed == found
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"cxrnet.conf": "conf"}
    assert not (ROOT / "cxrnet" / "conf").exists()  # one place for the configs
    assert (ROOT / "cxrnet" / "py.typed").is_file()


def test_this_checkout_uses_its_own_top_level_configs() -> None:
    # Editable install or PYTHONPATH=<repo>: either way the configs are the repository's conf/ folder.
    assert Path(cxrnet.conf.__file__).resolve().parent == ROOT / "conf"
    assert cxrnet.conf.CONFIG_PATH == "pkg://cxrnet.conf"


def test_a_checkout_without_install_composes_from_its_conf_folder(tmp_path: Path) -> None:
    src = _source_copy(tmp_path / "checkout")
    (src / "conf" / "experiment" / "only_here.yaml").write_text("# @package _global_\ntask_name: only_here\n")
    work = tmp_path / "elsewhere"
    work.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "cxrnet.train", "--cfg", "job", "+experiment=only_here"],
        cwd=work,
        env=_env(PYTHONPATH=str(src)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "task_name: only_here" in result.stdout


def test_the_editable_install_points_at_a_checkouts_conf_folder(tmp_path: Path) -> None:
    # The installed metadata (a checkout's own cxrnet.egg-info on sys.path has no direct_url.json).
    records = [d.read_text("direct_url.json") for d in importlib.metadata.distributions(name="cxrnet")]
    direct = next((json.loads(r) for r in records if r), {})
    if not direct.get("dir_info", {}).get("editable"):
        pytest.skip("cxrnet is not an editable install here")
    checkout = Path(direct["url"].removeprefix("file://"))
    result = subprocess.run(
        [sys.executable, "-c", "import cxrnet.conf, sys; sys.stdout.write(cxrnet.conf.__file__)"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert Path(result.stdout).resolve() == (checkout / "conf" / "__init__.py").resolve()


@pytest.mark.slow
def test_the_wheel_ships_the_configs_and_type_marker_and_runs_outside_the_repository(tmp_path: Path) -> None:
    src = _source_copy(tmp_path / "src")
    dist = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), "."],
        cwd=src,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = dist.glob("cxrnet-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "cxrnet/py.typed" in names
    static = {str(p.relative_to(ROOT)) for p in (ROOT / "cxrnet" / "serve" / "static").iterdir() if p.is_file()}
    assert static and static <= names  # the viewer's page ships with it
    configs = {n.removeprefix("cxrnet/conf/") for n in names if n.startswith("cxrnet/conf/")}
    shipped = {str(p.relative_to(ROOT / "conf")) for p in (ROOT / "conf").rglob("*") if p.suffix in {".yaml", ".py"}}
    assert shipped <= configs
    assert not any(n.startswith("conf/") for n in names)  # no stray top-level "conf" package

    site = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    probe = subprocess.run(
        [sys.executable, "-m", "cxrnet.train", "--cfg", "job", "+experiment=quickstart"],
        cwd=work,
        env=_env(PYTHONPATH=str(site)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert "task_name: quickstart" in probe.stdout
    where = subprocess.run(
        [sys.executable, "-c", "import cxrnet.conf, sys; sys.stdout.write(cxrnet.conf.__file__)"],
        cwd=work,
        env=_env(PYTHONPATH=str(site)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert Path(where.stdout).resolve() == (site / "cxrnet" / "conf" / "__init__.py").resolve()
