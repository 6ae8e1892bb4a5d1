"""napari-vnet's own networks written as MONAI bundles, run by MONAI's own bundle machinery
(``ConfigParser``), against napari-vnet's ``predict`` on the same file, and read back."""

from __future__ import annotations

import json
from pathlib import Path

import monai  # noqa: F401  (testing extra)
import numpy as np
import pytest
import torch

import napari_vnet
from napari_vnet.cli import main
from napari_vnet.foreign.monai_bundle import UnsupportedBundleError
from napari_vnet.inference import predict
from napari_vnet.io import read_volume, write_volume
from napari_vnet.models import CheckpointError
from napari_vnet.phantoms import make_phantom
from napari_vnet.weights import load_weights
from test_foreign_monai import _dice, monai_bundle_labels

SHIPPED = Path(napari_vnet.__file__).parent / "weights"
TARGETS = {
    "vnet": "napari_vnet.models.vnet.VNet",
    "unet3d": "napari_vnet.models.unet3d.UNet3D",
    "vox2vox": "napari_vnet.models.vox2vox.Vox2VoxGenerator",
}
#: the network's softmax: MONAI's inferer then blends windows as napari-vnet does
PROBABILITIES = "napari_vnet.models.outputs.Probabilities"


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _export(name: str, out: Path) -> Path:
    argv = ["export-weights", str(SHIPPED / f"{name}.pt"), str(out), "--format", "monai-bundle"]
    assert main(argv) == 0
    return out


@pytest.mark.parametrize("name", ["vnet-phantom", "unet3d-phantom", "vox2vox-phantom"])
def test_native_bundle_runs_in_monai_as_in_napari_vnet(name, tmp_path, capsys):
    model, card = load_weights(SHIPPED / f"{name}.pt")
    folder = _export(name, tmp_path / "bundle")
    inference = json.loads((folder / "configs" / "inference.json").read_text())
    meta = json.loads((folder / "configs" / "metadata.json").read_text())
    # our classes by their import paths, the card's keywords; nothing but names and values
    network = {"_target_": TARGETS[card.arch], "in_channels": 1, "out_channels": 5,
               **card.arch_kwargs}  # fmt: skip
    assert inference["network_def"] == {"_target_": PROBABILITIES, "network": network}
    assert meta["required_packages_version"] == {"napari-vnet": napari_vnet.__version__}
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"]["1"] == "liver"
    assert not any(s.startswith(("$", "%")) for s in _strings([inference, meta]))
    targets = [s for s in _strings(inference) if "." in s and s[0].isalpha() and " " not in s]
    assert targets == [PROBABILITIES, TARGETS[card.arch]]
    state = torch.load(folder / "models" / "model.pt", weights_only=True)  # tensors only
    assert list(state) == ["network." + k for k in model.state_dict()]

    # a phantom at the card's spacing, written by SimpleITK
    image, truth, _ = make_phantom(5, shape=(48, 96, 96), spacing=card.spacing)
    path = write_volume(image, tmp_path / "ct.nii.gz")
    theirs = monai_bundle_labels(folder, path)
    out = tmp_path / "ours.nii.gz"
    assert main(["predict", str(path), "-w", str(SHIPPED / f"{name}.pt"), "-o", str(out),
                 "--no-amp"]) == 0  # fmt: skip
    ours = read_volume(out).array
    assert ours.shape == theirs.shape == image.array.shape
    for value in card.label_values:
        assert (ours == value).sum() > 1000 * (value == 0) + 500 * (value == 1), value
        assert _dice(ours, theirs, value) >= 0.99, value
    assert _dice(ours, truth.array, 1) > 0.8  # the model segments the liver

    # napari-vnet reads the bundle back as the weights it came from
    back, back_card = load_weights(folder)
    assert back_card.origin().startswith("MONAI bundle, napari-vnet " + card.arch)
    assert back_card.classes == card.classes and back_card.normalization == card.normalization
    again = predict(read_volume(path), back, back_card, device="cpu", amp=False).labels
    assert np.array_equal(again, ours)


def test_ct_card_label_values(tmp_path):
    """The CT starter: nnU-Net-style CT normalisation as one ScaleIntensityRange, label
    values 0, 5, 1, 6, 52... restored by MapLabelValued; MONAI's labels are napari-vnet's,
    voxel for voxel."""
    name = "unet3d-ct-starter"
    folder = _export(name, tmp_path / "bundle")
    model, card = load_weights(SHIPPED / f"{name}.pt")
    steps = json.loads((folder / "configs" / "inference.json").read_text())["postprocessing"]
    assert steps["transforms"][-1] == {"_target_": "MapLabelValued", "keys": "pred",
                                       "orig_labels": list(range(11)),
                                       "target_labels": card.label_values}  # fmt: skip
    image, _, _ = make_phantom(3, shape=(24, 80, 96), spacing=card.spacing)
    path = write_volume(image, tmp_path / "ct.nii.gz")
    theirs = monai_bundle_labels(folder, path)
    ours = predict(read_volume(path), model, card, device="cpu", amp=False).labels
    assert len(np.unique(theirs)) >= 6 and 52 in theirs  # the aorta, by its label value
    assert np.array_equal(ours, theirs)


def test_edited_or_incomplete_native_bundles_are_refused(tmp_path):
    folder = _export("unet3d-phantom", tmp_path / "bundle")
    config_path = folder / "configs" / "inference.json"
    meta_path = folder / "configs" / "metadata.json"
    config, meta = json.loads(config_path.read_text()), json.loads(meta_path.read_text())

    config["preprocessing"]["transforms"][2]["a_min"] = -1000.0  # another window
    config_path.write_text(json.dumps(config))
    with pytest.raises(UnsupportedBundleError, match=r"preprocessing is not what napari-vnet"):
        load_weights(folder)
    config["preprocessing"]["transforms"][2]["a_min"] = -200.0
    config["network_def"]["network"]["channels"] = [8, 16, 32]
    config_path.write_text(json.dumps(config))
    with pytest.raises(UnsupportedBundleError, match=r"network_def is not what napari-vnet"):
        load_weights(folder)
    config["network_def"]["network"]["channels"] = [8, 16, 32, 64]
    config_path.write_text(json.dumps(config))
    load_weights(folder)  # as exported again

    card = meta.pop("napari_vnet_card")
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(UnsupportedBundleError, match=r"no napari_vnet_card"):
        load_weights(folder)
    card["arch"] = "os.system"
    meta_path.write_text(json.dumps({**meta, "napari_vnet_card": card}))
    with pytest.raises(CheckpointError, match=r"names the network 'os.system', not one of "):
        load_weights(folder)


def test_nnunet_weights_are_not_written_as_a_bundle(tmp_path, capsys):
    folder = Path(__file__).parent / "data" / "nnunet" / "Dataset901_TinyPhantom"
    out = tmp_path / "bundle"
    argv = ["export-weights", str(folder / "nnUNetTrainer__nnUNetPlans__3d_fullres"), str(out),
            "--format", "monai-bundle"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "napari-vnet's own (vnet, unet3d, vox2vox)" in err and "--format nnunet" in err
    assert not out.exists()
