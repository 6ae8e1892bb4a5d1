"""Packaging as plugin users and the napari hub expect: BSD-3-Clause LICENSE in the sdist
and the wheel, SPDX license and classifiers, sdist with tests/docs/tox.ini, tox arguments
narrowing the tests, a lint env without torch/napari, per-OS settings folders."""

from __future__ import annotations

import configparser
import shlex
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_license_and_classifiers():
    project = _pyproject()["project"]
    assert project["license"] == "BSD-3-Clause"  # an SPDX expression, not a table
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("BSD 3-Clause License") and "Neither the name" in text
    cls = project["classifiers"]
    assert not any(c.startswith("License ::") for c in cls)  # SPDX replaces these
    assert "Framework :: napari" in cls
    assert any(c.startswith("Development Status ::") for c in cls)
    for os_name in ("POSIX :: Linux", "MacOS", "Microsoft :: Windows"):
        assert f"Operating System :: {os_name}" in cls
    assert "Programming Language :: Python :: 3.11" in cls
    assert any(d.startswith("platformdirs") for d in project["dependencies"])


def _tox() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(ROOT / "tox.ini", encoding="utf-8")
    return cfg


def _expand(command: str, posargs: list[str]) -> list[str]:
    """tox's {posargs} / {posargs:default} substitution, for one command line."""
    out = []
    for word in shlex.split(command):
        if word == "{posargs}":
            out += posargs
        elif word.startswith("{posargs:") and word.endswith("}"):
            out += posargs or word[len("{posargs:") : -1].split()
        else:
            out.append(word)
    return out


def test_tox_posargs_narrow_the_tests():
    (command,) = [c for c in _tox()["testenv"]["commands"].strip().splitlines() if "pytest" in c]
    everything = _expand(command, [])
    narrowed = _expand(command, ["tests/test_reader.py", "-k", "dicom"])
    assert everything[-1] == "tests"
    assert "tests" not in narrowed and narrowed[-3:] == ["tests/test_reader.py", "-k", "dicom"]


def test_tox_lint_env_is_light():
    lint = _tox()["testenv:lint"]
    assert lint["skip_install"].strip() == "true"
    deps = lint["deps"].split()
    assert set(deps) == {"ruff", "import-linter"}  # no torch, no napari
    assert "PYTHONPATH" in lint["setenv"]
    assert "lint-imports" in lint["commands"]


def test_precommit_and_workflow_files():
    pre = (ROOT / ".pre-commit-config.yaml").read_text(encoding="utf-8")
    assert "ruff" in pre and "napari-plugin-checks" in pre
    wf = (ROOT / ".github" / "workflows" / "test.yml").read_text(encoding="utf-8")
    for platform in ("ubuntu-latest", "windows-latest", "macos-latest"):
        assert platform in wf


def test_settings_folders_follow_the_os(monkeypatch, tmp_path):
    import platformdirs

    from napari_vnet import user_dirs
    from napari_vnet._widgets import _session
    from napari_vnet.workflows import finetune

    monkeypatch.delenv("NAPARI_VNET_CONFIG_DIR", raising=False)
    assert _session.config_dir() == Path(
        platformdirs.user_config_dir("napari-vnet", appauthor=False)
    )
    assert _session.data_dir() == Path(platformdirs.user_data_dir("napari-vnet", appauthor=False))
    assert finetune.user_weights_dir() == _session.data_dir() / "weights"
    assert user_dirs.config_dir() == _session.config_dir()
    monkeypatch.setenv("NAPARI_VNET_CONFIG_DIR", str(tmp_path))
    assert _session.config_dir() == tmp_path and _session.data_dir() == tmp_path
    # no Linux-only folder written out anywhere in the package
    for py in (ROOT / "src" / "napari_vnet").rglob("*.py"):
        src = py.read_text(encoding="utf-8")
        assert '".config"' not in src and "'.config'" not in src, py
        assert '".local"' not in src, py


def test_settings_folders_on_each_os(monkeypatch):
    """The same call gives each OS's usual folder (platformdirs' per-OS classes)."""
    from platformdirs.macos import MacOS
    from platformdirs.unix import Unix
    from platformdirs.windows import Windows

    monkeypatch.setenv("HOME", "/home/ann")
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    assert Unix("napari-vnet", appauthor=False).user_config_dir == "/home/ann/.config/napari-vnet"
    assert MacOS("napari-vnet", appauthor=False).user_config_dir.endswith(
        "Library/Application Support/napari-vnet"
    )
    assert Windows.__name__ == "Windows"  # resolving Windows folders needs Windows itself


@pytest.mark.slow
def test_sdist_and_wheel_carry_the_license(tmp_path):
    out = tmp_path / "dist"
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--sdist", "--outdir", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sdist,) = out.glob("napari_vnet-*.tar.gz")
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    for name in (
        "LICENSE",
        "tox.ini",
        "pyproject.toml",
        "tests/conftest.py",
        "tests/test_install_meta.py",
        "docs/readme/io.md",
        "README.md",
    ):
        assert name in names, name
    assert not any(n.endswith((".pyc", ".resume.pt")) or "__pycache__" in n for n in names)
    # the wheel built from that sdist (as pip does) carries LICENSE and the SPDX metadata
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
         "-w", str(out), str(sdist)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = out.glob("napari_vnet-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        (meta_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = Parser().parsestr(zf.read(meta_name).decode("utf-8"))
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert meta["License-Expression"] == "BSD-3-Clause"
    assert "Framework :: napari" in meta.get_all("Classifier")
