"""The built wheel carries the shipped weights and the sample phantom.

Builds a wheel from a copy of the source tree, installs it with ``pip --target`` into a
temporary folder (no dependencies: torch, napari... come from the test environment) and,
in a subprocess started outside the repository with that folder first on ``PYTHONPATH``,
checks that ``napari_vnet`` is imported from the installed copy (not the editable source
tree) and that the shipped weights and the sample data load from there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHECK = r"""
import json, sys
from pathlib import Path
target = Path(sys.argv[1]).resolve()
import napari_vnet
from importlib.metadata import distribution
from napari_vnet.weights import shipped_weights, resolve_weights
from napari_vnet.models import load_checkpoint
from napari_vnet.sample_data import sample_paths
from napari_vnet.io import read_volume
from napari_vnet._sample_data import phantom_ct

out = {"package": napari_vnet.__file__, "weights": {}, "sample": {}}
for name, path in shipped_weights().items():
    model, card = load_checkpoint(resolve_weights(name))
    out["weights"][name] = {"path": str(path), "arch": card.arch, "classes": len(card.classes)}
for key, path in sample_paths().items():
    out["sample"][key] = str(path)
image = read_volume(sample_paths()["ct"])
out["sample_shape"] = list(image.shape)
out["layers"] = [t[2] for t in phantom_ct()]
out["dist_files"] = sorted(str(f) for f in distribution("napari-vnet").files or [])
out["manifest"] = (Path(napari_vnet.__file__).parent / "napari.yaml").is_file()
print(json.dumps(out))
"""


def _copy_source(dest: Path) -> Path:
    ignore = shutil.ignore_patterns(
        "__pycache__", "*.egg-info", "build", "dist", "*.pyc", "*.resume.pt", ".*"
    )
    dest.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, dest / name)
    for name in ("src", "sample_data"):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = _copy_source(tmp / "src-copy")
    out = tmp / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--quiet", "-w", str(out), str(src)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    wheels = list(out.glob("napari_vnet-*.whl"))
    assert len(wheels) == 1, wheels
    # a source tree without .git (or tags) builds as setuptools-scm's fallback version
    assert wheels[0].name.startswith("napari_vnet-0.1.0-"), wheels[0].name
    return wheels[0]


@pytest.mark.slow
def test_wheel_contains_weights_and_sample_data(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        sizes = {i.filename: i.file_size for i in zf.infolist()}
    for name in ("vnet-phantom", "unet3d-phantom", "vox2vox-phantom"):
        assert f"napari_vnet/weights/{name}.pt" in names
    weights_bytes = sum(s for n, s in sizes.items() if n.startswith("napari_vnet/weights/"))
    assert weights_bytes < 20 * 1024 * 1024
    for name in ("phantom_ct.nii.gz", "phantom_labels.nii.gz", "phantom_classes.json"):
        assert f"napari_vnet/sample_data/{name}" in names
    assert "napari_vnet/sample_data/make_sample.py" in names
    assert "napari_vnet/napari.yaml" in names
    assert not any(n.endswith(".resume.pt") for n in names)


@pytest.mark.slow
def test_installed_wheel_loads_weights_and_sample_from_the_install(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
         "--target", str(target), str(wheel)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    env = dict(os.environ)
    env["PYTHONPATH"] = str(target)
    env.pop("PYTHONSAFEPATH", None)
    run_dir = tmp_path / "elsewhere"  # not the repository: no ./src or ./sample_data here
    run_dir.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", CHECK, str(target)],
        cwd=run_dir, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    target = target.resolve()

    def installed(path: str) -> bool:
        return Path(path).resolve().is_relative_to(target)

    assert installed(info["package"]), info["package"]
    assert set(info["weights"]) >= {"vnet-phantom", "unet3d-phantom", "vox2vox-phantom",
                                    "unet3d-ct-starter"}  # fmt: skip
    for name, w in info["weights"].items():
        assert installed(w["path"]), (name, w["path"])
        # phantoms: background + 4 organs; the real-CT starter: background + 10 structures
        assert w["classes"] == (11 if name == "unet3d-ct-starter" else 5), name
    assert {w["arch"] for w in info["weights"].values()} == {"vnet", "unet3d", "vox2vox"}
    for key, path in info["sample"].items():
        assert installed(path), (key, path)
    assert info["sample_shape"] == [48, 96, 96]
    assert info["layers"] == ["image", "labels"]
    assert info["manifest"]
    assert any(f.endswith("vnet-phantom.pt") for f in info["dist_files"])
