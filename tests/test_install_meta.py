"""Packaging as plugin users, PyPI and the napari hub expect: BSD-3-Clause LICENSE in the
sdist and the wheel, SPDX license and classifiers, project URLs and keywords, extras for
users only (test tools in a dependency group), the version from git tags, a README that
renders off GitHub, release files (changelog, citation, contributing, issue templates, the
release workflow), sdist with tests/docs/tox.ini, tox arguments narrowing the tests, a
lint env without torch/napari, per-OS settings folders."""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the repository address (a placeholder until the project's public home is settled)
REPO = "https://github.com/napari-vnet/napari-vnet"
RAW = "https://raw.githubusercontent.com/napari-vnet/napari-vnet/main/"
TEST_TOOLS = {"pytest", "ruff", "hypothesis", "import-linter", "build", "tox", "twine",
              "coverage", "setuptools-scm", "pre-commit"}  # fmt: skip

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


def _names(requirements: list) -> set[str]:
    """Canonical project names of a list of requirement strings."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    return {canonicalize_name(Requirement(r).name) for r in requirements if isinstance(r, str)}


def _group(groups: dict, name: str) -> list[str]:
    """A PEP 735 dependency group with its `include-group` entries resolved."""
    out: list[str] = []
    for item in groups[name]:
        out += _group(groups, item["include-group"]) if isinstance(item, dict) else [item]
    return out


def test_urls_keywords_and_summary():
    project = _pyproject()["project"]
    urls = project["urls"]
    for key in ("Source", "Documentation", "Bug Tracker", "User Support"):
        assert urls[key].startswith(REPO), key
    keywords = {k.lower() for k in project["keywords"]}
    for word in ("nnu-net", "monai", "totalsegmentator", "ct", "mri", "segmentation", "napari"):
        assert word in keywords, word
    summary = project["description"]
    assert "\n" not in summary and len(summary) <= 512  # PyPI's one-line summary
    for runs in ("V-Net", "3D U-Net", "Vox2Vox", "nnU-Net", "MONAI"):
        assert runs in summary, runs


def test_extras_are_for_users_and_tests_use_a_group():
    pyproject = _pyproject()
    extras = pyproject["project"]["optional-dependencies"]
    assert "testing" not in extras
    for name, requirements in extras.items():
        names = _names(requirements)
        assert not any(n.startswith("pytest") for n in names), name
        assert not names & TEST_TOOLS, (name, names & TEST_TOOLS)
    everything = _names(extras["all"])
    for extra in ("qt", "dicom-seg", "monai", "augment", "onnx", "openvino"):
        assert _names(extras[extra]) <= everything, extra
    # nnunetv2 pulls timm -> torchvision -> an exact torch: never inside [all]
    assert not everything & {"nnunetv2", "dynamic-network-architectures", "timm", "torchvision"}
    assert _names(extras["nnunet"]) == {"nnunetv2"}
    test = _names(_group(pyproject["dependency-groups"], "test"))
    assert {"pytest", "pytest-qt", "pytest-xvfb", "pytest-timeout", "ruff", "import-linter",
            "build", "setuptools-scm", "highdicom", "monai", "pyqt6", "onnxruntime",
            "openvino"} <= test  # fmt: skip


def test_every_installer_of_the_tests_uses_the_group():
    setup = (ROOT / "scripts" / "setup.sh").read_text(encoding="utf-8")
    assert '"pip>=25.1"' in setup  # pip learnt --group in 25.1
    assert setup.index('"torch==2.13.0"') < setup.index("pip>=25.1") < setup.index("--group test")
    testenv = _tox()["testenv"]
    assert testenv["dependency_groups"].split() == ["test"] and "extras" not in testenv
    assert "tox>=4.22" in _tox()["tox"]["requires"]  # tox's dependency_groups
    workflow = (ROOT / ".github" / "workflows" / "test.yml").read_text(encoding="utf-8")
    assert "--group test" in workflow
    for path in ("scripts/setup.sh", "tox.ini", ".github/workflows/test.yml", ".ci/run",
                 "README.md", "CONTRIBUTING.md"):  # fmt: skip
        text = (ROOT / path).read_text(encoding="utf-8")
        assert "[testing]" not in text, path


def test_version_from_git_tags():
    pyproject = _pyproject()
    assert "version" not in pyproject["project"]
    assert pyproject["project"]["dynamic"] == ["version"]
    assert "setuptools-scm" in _names(pyproject["build-system"]["requires"])
    # a clone without tags, or a tree without .git, still builds
    assert pyproject["tool"]["setuptools_scm"]["fallback_version"] == "0.1.0"
    assert "export-subst" in (ROOT / ".gitattributes").read_text(encoding="utf-8")
    assert "describe-name" in (ROOT / ".git_archival.txt").read_text(encoding="utf-8")
    from importlib.metadata import version

    import napari_vnet

    assert napari_vnet.__version__ == version("napari-vnet")


def test_every_package_is_in_the_wheel_list():
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    src = ROOT / "src"
    found = {".".join(p.parent.relative_to(src).parts) for p in src.rglob("__init__.py")}
    assert found - listed == set(), "packages missing from [tool.setuptools] packages"
    assert listed - found == {"napari_vnet.sample_data"}  # mapped from sample_data/


def _github_anchor(heading: str) -> str:
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def test_readme_renders_off_github():
    """PyPI and the napari hub show README.md without the repository beside it: every
    image and link is absolute, and each one into the repository names a file it has."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r'src="([^"]+)"', text)
    relative = [t for t in targets if not t.startswith(("https://", "http://", "#"))]
    assert relative == []
    anchors = {_github_anchor(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}
    for target in targets:
        if target.startswith("#"):
            assert target[1:] in anchors, target
        for prefix in (f"{REPO}/blob/main/", f"{REPO}/tree/main/", RAW):
            if target.startswith(prefix):
                assert (ROOT / target[len(prefix) :].split("#")[0]).exists(), target
    images = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text)
    assert images and all(i.startswith(RAW + "docs/") for i in images)
    top = "\n".join(text.splitlines()[:30])
    assert "pip install napari-vnet" in top and 'pip install "napari-vnet[all]"' in top
    # the two commands stay as they are
    assert "bash scripts/setup.sh && .venv/bin/napari-vnet demo" in text
    assert "bash scripts/setup.sh && .venv/bin/python -m pytest tests" in text


def test_docs_links_point_at_files_that_exist():
    for md in sorted((ROOT / "docs" / "readme").glob("*.md")):
        for target in re.findall(r"\]\(([^)\s]+)\)", md.read_text(encoding="utf-8")):
            if target.startswith(("https://", "http://", "#", "mailto:")):
                continue
            assert (md.parent / target.split("#")[0]).exists(), (md.name, target)


def test_changelog_citation_contributing_templates():
    import yaml

    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "Keep a Changelog" in changelog and "## [Unreleased]" in changelog
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "BSD-3-Clause"
    dois = {ref["doi"] for ref in cff["references"]}
    assert {
        "10.1109/3DV.2016.79",  # V-Net, Milletari et al. 2016
        "10.1007/978-3-319-46723-8_49",  # 3D U-Net, Cicek et al. 2016
        "10.1007/978-3-030-72084-1_25",  # Vox2Vox, Cirillo et al. 2020
        "10.1038/s41592-020-01008-z",  # nnU-Net, Isensee et al. 2021
        "10.48550/arXiv.2211.02701",  # MONAI, Cardoso et al. 2022
    } <= dois
    contributing = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    for must in ("--group test", "lint-imports", "ruff check", "## Layers", "## Adding a network"):
        assert must in contributing, must
    templates = ROOT / ".github" / "ISSUE_TEMPLATE"
    for name in ("bug_report.yml", "feature_request.yml"):
        form = yaml.safe_load((templates / name).read_text(encoding="utf-8"))
        assert form["name"] and form["description"] and form["body"], name


def test_release_workflow_builds_checks_and_publishes_on_a_tag():
    import yaml

    text = (ROOT / ".github" / "workflows" / "release.yml").read_text(encoding="utf-8")
    workflow = yaml.safe_load(text)
    trigger = workflow.get("on", workflow.get(True))  # YAML 1.1 reads the key `on` as True
    assert trigger["push"]["tags"] == ["v*"]
    jobs = workflow["jobs"]
    build = "\n".join(str(step) for step in jobs["build"]["steps"])
    assert "'fetch-depth': 0" in build  # setuptools-scm needs the tag
    assert "python -m build" in build and "twine check" in build
    check = "\n".join(s.get("run", "") for s in jobs["check"]["steps"])
    assert "python -m venv" in check
    assert check.index("download.pytorch.org/whl/cpu") < check.index("napari_vnet-*.whl")
    assert "napari-vnet --help" in check and "npe2 validate napari-vnet" in check
    publish = jobs["publish"]
    assert set(publish["needs"]) == {"build", "check"}
    assert publish["if"] == "startsWith(github.ref, 'refs/tags/v')"
    assert publish["permissions"] == {"id-token": "write"}  # trusted publishing, no token
    assert publish["steps"][-1]["uses"].startswith("pypa/gh-action-pypi-publish@")


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
    assert lint["dependency_groups"].split() == []  # not [testenv]'s test group either
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
    # building in the tree rewrites src/napari_vnet.egg-info, whose version (from git, so it
    # changes with every commit) later subprocesses of this run would read: put it back
    egg_info, kept = ROOT / "src" / "napari_vnet.egg-info", tmp_path / "egg-info-before"
    if egg_info.is_dir():
        shutil.copytree(egg_info, kept)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "build", "--no-isolation", "--sdist", "--outdir", str(out),
             str(ROOT)],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    finally:
        shutil.rmtree(egg_info, ignore_errors=True)
        if kept.is_dir():
            shutil.copytree(kept, egg_info)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sdist,) = out.glob("napari_vnet-*.tar.gz")
    with tarfile.open(sdist) as tf:
        members = {m.name.split("/", 1)[1]: m.size for m in tf.getmembers() if "/" in m.name}
    names = set(members)
    for name in (
        "LICENSE",
        "tox.ini",
        "pyproject.toml",
        "tests/conftest.py",
        "tests/test_install_meta.py",
        "docs/readme/io.md",
        "README.md",
        "CHANGELOG.md",
        "CITATION.cff",
        "CONTRIBUTING.md",
        ".github/workflows/release.yml",
        ".github/ISSUE_TEMPLATE/bug_report.yml",
        "src/napari_vnet/napari.yaml",
        "src/napari_vnet/weights/vnet-phantom.pt",
    ):
        assert name in names, name
    assert not any(n.endswith((".pyc", ".resume.pt")) or "__pycache__" in n for n in names)
    big = {n: size for n, size in members.items() if size > 1024 * 1024}
    assert all(n.startswith("src/napari_vnet/weights/") for n in big), big  # no test blobs
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
    # what PyPI and the napari hub show: links, keywords, extras, the README as markdown
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert {"Source", "Documentation", "Bug Tracker", "User Support"} <= set(urls)
    assert "nnU-Net" in meta["Keywords"] and "TotalSegmentator" in meta["Keywords"]
    extras = set(meta.get_all("Provides-Extra"))
    assert "all" in extras and "testing" not in extras
    assert meta["Description-Content-Type"] == "text/markdown"
    assert RAW + "docs/segment_widget.png" in meta.get_payload()
