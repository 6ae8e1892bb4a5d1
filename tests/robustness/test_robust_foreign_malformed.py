"""Malformed foreign weights folders (nnU-Net v2 trained models, MONAI bundles) give one
line naming the file and a non-zero exit, never a traceback, at ``info`` and ``predict``;
a FIFO given as weights is refused at once as "not a regular file" (it used to hang)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import small_volume, write_image
from napari_vnet.cli import main

TINY = Path(__file__).parents[1] / "data" / "nnunet" / "Dataset901_TinyPhantom"
MODEL = "nnUNetTrainer__nnUNetPlans__3d_fullres"


def _json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _cfg(plans: dict) -> dict:
    return plans["configurations"]["3d_fullres"]


def _arch(plans: dict) -> dict:
    return _cfg(plans)["architecture"]["arch_kwargs"]


def _checkpoint(path: Path, change) -> None:
    from napari_vnet.foreign.safe_load import safe_torch_load

    obj = safe_torch_load(path)
    change(obj)
    torch.save(obj, path)


def _first_weight_a_string(obj):
    key = next(iter(obj["network_weights"]))
    obj["network_weights"][key] = "a string"


def _deep(path: Path) -> None:
    path.write_text("[" * 200_000 + "]" * 200_000)


#: case -> (file changed, how, what the one line says)
NNUNET_CASES = {
    "patch-a": ("plans.json", lambda p: _cfg(p).update(patch_size="a"), "patch_size"),
    "label-one": ("dataset.json", lambda d: d["labels"].update(liver="one"), "label values"),
    "label-dict": ("dataset.json", lambda d: d["labels"].update(liver={"v": 1}), "label values"),
    "stages": ("plans.json", lambda p: _arch(p).update(n_stages=4),
               "stage counts disagree with n_stages 4"),
    "negative-features": ("plans.json", lambda p: _arch(p).update(features_per_stage=[-4, 8, 16]),
                          "features_per_stage"),
    "spacing-0": ("plans.json", lambda p: _cfg(p).update(spacing=[0, 4.5, 4.5]), "spacing"),
    "resampling-fn": ("plans.json", lambda p: _cfg(p).update(resampling_fn_data="os.system"),
                      "resampling_fn_data"),
    "no-intensity-properties": (
        "plans.json", lambda p: p.pop("foreground_intensity_properties_per_channel"),
        "foreground_intensity_properties_per_channel"),
    "ct-props-string": (
        "plans.json", lambda p: p["foreground_intensity_properties_per_channel"]["0"].update(
            mean="a"), "mean"),
    "normalization-scheme": ("plans.json",
                             lambda p: _cfg(p).update(normalization_schemes=["Evil"]),
                             "normalization_schemes"),
    "mirror-x": ("fold_0/checkpoint_final.pth",
                 lambda o: o.update(inference_allowed_mirroring_axes=["x"]), "mirroring_axes"),
    "weight-string": ("fold_0/checkpoint_final.pth", _first_weight_a_string, "not a tensor"),
    "json-200000-deep": ("plans.json", None, "nested too deeply"),
}  # fmt: skip


def _nnunet(tmp_path: Path, case: str) -> tuple[Path, str, str]:
    root = tmp_path / "Dataset901_TinyPhantom"
    shutil.copytree(TINY, root)
    name, change, says = NNUNET_CASES[case]
    target = root / MODEL / name
    if change is None:
        _deep(target)
    elif name.endswith(".pth"):
        _checkpoint(target, change)
    else:
        _json(target, change)
    return root / MODEL, name, says


def _image(tmp_path: Path) -> Path:
    return write_image(tmp_path / "ct.nii.gz", small_volume((16, 24, 24)).astype(np.float32))


def _refused(capsys, argv: list[str], names: str, says: str) -> None:
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if "Warning" not in line]
    assert rc != 0, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert Path(names).name in lines[0] and says in lines[0], lines[0]


@pytest.mark.parametrize("case", list(NNUNET_CASES))
def test_malformed_nnunet_folder_one_line(tmp_path, capsys, case):
    folder, name, says = _nnunet(tmp_path, case)
    _refused(capsys, ["info", str(folder)], name, says)
    out = tmp_path / "mask.nii.gz"
    _refused(capsys, ["predict", str(_image(tmp_path)), "-w", str(folder), "--out", str(out)],
             name, says)  # fmt: skip
    assert not out.exists()


UNET = {"spatial_dims": 3, "channels": [4, 8], "strides": [2], "num_res_units": 0}


def _bundle(root: Path, change) -> Path:
    from monai.networks.nets import UNet

    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    state = UNet(in_channels=1, out_channels=2, **UNET).state_dict()
    inference = {
        "network_def": {"_target_": "UNet", "in_channels": 1, "out_channels": 2, **UNET},
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "ScaleIntensityd", "keys": "image"}]},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16]},
    }  # fmt: skip
    change(inference, state)
    torch.save(state, root / "models" / "model.pt")
    (root / "configs" / "inference.json").write_text(json.dumps(inference))
    (root / "configs" / "metadata.json").write_text(json.dumps({"name": "tiny"}))
    return root


def _string_weight(_, state):
    state[next(iter(state))] = "a string"


BUNDLE_CASES = {
    "transforms-string": (lambda c, s: c["preprocessing"].update(transforms="abc"),
                          "inference.json", "must be a list"),
    "transform-string-entry": (lambda c, s: c["preprocessing"].update(transforms=["Spacingd"]),
                               "inference.json", "not supported"),
    "roi-a": (lambda c, s: c["inferer"].update(roi_size="a"), "inference.json", "roi_size"),
    "weight-string": (_string_weight, "model.pt", "not a tensor"),
    "out-channels-two": (lambda c, s: c["network_def"].update(out_channels="two"),
                         "inference.json", "out_channels"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BUNDLE_CASES))
def test_malformed_bundle_one_line(tmp_path, capsys, case):
    pytest.importorskip("monai")
    change, names, says = BUNDLE_CASES[case]
    bundle = _bundle(tmp_path / "bundle", change)
    _refused(capsys, ["info", str(bundle)], names, says)
    out = tmp_path / "mask.nii.gz"
    _refused(capsys, ["predict", str(_image(tmp_path)), "-w", str(bundle), "--out", str(out)],
             names, says)  # fmt: skip


def test_bundle_config_nested_200000_deep(tmp_path, capsys):
    pytest.importorskip("monai")
    bundle = _bundle(tmp_path / "bundle", lambda c, s: None)
    _deep(bundle / "configs" / "inference.json")
    _refused(capsys, ["info", str(bundle)], "inference.json", "nested too deeply")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
@pytest.mark.parametrize("where", ["weights", "bundle-config"])
def test_fifo_refused_at_once(tmp_path, where):
    if where == "weights":
        fifo = target = tmp_path / "weights.pt"
        os.mkfifo(fifo)
    else:
        pytest.importorskip("monai")
        target = _bundle(tmp_path / "bundle", lambda c, s: None)
        fifo = target / "configs" / "inference.json"
        fifo.unlink()
        os.mkfifo(fifo)
    image = _image(tmp_path)
    for argv in (["info", str(target)],
                 ["predict", str(image), "-w", str(target), "--out", str(tmp_path / "m.nii.gz")]):  # fmt: skip
        cli = subprocess.run(
            [sys.executable, "-m", "napari_vnet.cli", *argv],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        lines = [line for line in cli.stderr.strip().splitlines() if "Warning" not in line]
        assert cli.returncode == 1 and len(lines) == 1, cli.stderr
        assert "not a regular file" in lines[0] and fifo.name in lines[0], lines[0]
