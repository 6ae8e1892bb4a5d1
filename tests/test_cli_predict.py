"""`napari-vnet predict` and `napari-vnet evaluate` end to end on real NIfTI files and a
real (tiny) V-Net checkpoint saved in tmp_path."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_vnet.cli import main
from napari_vnet.io import Volume, read_volume, write_volume
from napari_vnet.models import ClassInfo, ModelCard, build_model, save_checkpoint

SPACING = (2.5, 0.9, 0.7)
ORIGIN = (-40.0, 12.5, -7.25)
DIRECTION = np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])  # oblique-free but not identity


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # fixture in conftest.py


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


@pytest.fixture()
def files(tmp_path):
    rng = np.random.default_rng(0)
    shape = (11, 29, 23)  # odd, smaller than the patch along z
    image = rng.normal(size=shape).astype(np.float32)
    image[3:8, 8:20, 6:17] += 4.0
    vol = Volume(image, spacing=SPACING, origin=ORIGIN, direction=DIRECTION)
    img_path = write_volume(vol, tmp_path / "ct.nii.gz")
    card = ModelCard(
        arch="vnet",
        arch_kwargs={"channels": [4, 8], "kernel_size": 3},
        classes=[ClassInfo(0, "background"), ClassInfo(5, "liver")],
        normalization={"kind": "zscore"},
        spacing=(2.0, 1.0, 1.0),
        patch_size=(16, 16, 16),
    )
    ckpt = save_checkpoint(build_model(card), card, tmp_path / "tiny.pt")
    return img_path, ckpt, vol


def test_predict_writes_mask_with_input_geometry(files, tmp_path, capsys):
    img_path, ckpt, vol = files
    out = tmp_path / "mask.nii.gz"
    rc = main(["predict", str(img_path), "--weights", str(ckpt), "--out", str(out), "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    summary = last_json(captured.out)
    assert summary["output"] == str(out)
    assert summary["voxels"] == int(np.prod(vol.shape))
    assert summary["device"] == "cpu" and summary["seconds"] > 0
    assert sum(summary["labels"].values()) == summary["voxels"]
    assert set(summary["labels"]) <= {"0", "5"}
    mask = read_volume(out)
    assert mask.shape == vol.shape
    np.testing.assert_allclose(mask.spacing, SPACING, rtol=1e-5)
    np.testing.assert_allclose(mask.origin, ORIGIN, atol=1e-4)
    np.testing.assert_allclose(mask.direction, DIRECTION, atol=1e-6)
    assert mask.array.dtype == np.uint8


def test_predict_options_and_refusals(files, tmp_path, capsys):
    img_path, ckpt, _ = files
    out = tmp_path / "mask.nrrd"
    argv = ["predict", str(img_path), "-w", str(ckpt), "-o", str(out)]
    rc = main([*argv, "--tta", "--no-amp", "--postprocess", "--overlap", "0.25", "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    summary = last_json(captured.out)
    assert summary["tta"] is True and summary["amp"] is None
    assert summary["postprocess"] == ["largest_component", "fill_holes"]
    assert main(argv) == 1  # exists
    assert "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite", "--postprocess", "nonsense"]) == 1
    assert "unknown post-processing" in capsys.readouterr().err
    rc = main(["predict", str(tmp_path / "nope.nii.gz"), "-w", str(ckpt), "-o", str(out) + "x"])
    assert rc == 1 and "nope.nii.gz" in capsys.readouterr().err
    rc = main(["predict", str(img_path), "-w", "no-such-model", "-o", str(tmp_path / "m.nii")])
    assert rc == 1 and "no-such-model" in capsys.readouterr().err


def write_labels(path, array, like):
    return write_volume(like.with_array(array.astype(np.uint8)), path, is_label=True)


def test_evaluate_scores_and_refuses_mismatched_grids(files, tmp_path, capsys):
    _, _, vol = files
    gt = np.zeros(vol.shape, np.uint8)
    gt[2:9, 5:25, 4:20] = 5
    gt[4:7, 10:15, 8:12] = 1
    pred = gt.copy()
    pred[2, :, :] = 0  # drop one 2.5 mm slice of label 5
    gt_path = write_labels(tmp_path / "gt.nii.gz", gt, vol)
    pred_path = write_labels(tmp_path / "pred.nii.gz", pred, vol)
    rc = main(["evaluate", str(pred_path), str(gt_path), "--labels", "5,1", "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    summary = last_json(captured.out)
    n5 = np.count_nonzero(gt == 5)
    lost = np.count_nonzero(gt[2] == 5)
    assert summary["dice"]["5"] == pytest.approx(2 * (n5 - lost) / (2 * n5 - lost), abs=1e-6)
    assert summary["dice"]["1"] == 1.0 and summary["hd95_mm"]["1"] == 0.0
    assert summary["hd95_mm"]["5"] == pytest.approx(2.5, abs=1e-6)  # one slice, z spacing

    # same labels on a grid with another origin: refused, then accepted with --resample
    shifted = Volume(
        gt, spacing=SPACING, origin=(ORIGIN[0] + 2.5, *ORIGIN[1:]), direction=DIRECTION
    )
    other = write_volume(shifted, tmp_path / "shifted.nii.gz", is_label=True)
    rc = main(["evaluate", str(other), str(gt_path), "--json"])
    err = capsys.readouterr().err
    assert rc == 1 and "origin" in err and "--resample" in err
    rc = main(["evaluate", str(other), str(gt_path), "--resample", "--json"])
    summary = last_json(capsys.readouterr().out)
    assert rc == 0 and summary["resampled"] is True
    assert 0.7 < summary["dice"]["5"] < 1.0  # one slice off along z

    empty = write_labels(tmp_path / "empty.nii.gz", np.zeros_like(gt), vol)
    rc = main(["evaluate", str(empty), str(gt_path), "--json"])
    summary = last_json(capsys.readouterr().out)
    assert summary["dice"]["5"] == 0.0 and summary["hd95_mm"]["5"] is None


def test_evaluate_real_labels_stored_with_flipped_direction(shared_data, tmp_path, capsys):
    """The shared CT labels are stored with rows flipped relative to the DICOM; put them
    on the DICOM grid and evaluation must need --resample and then agree perfectly."""
    from napari_vnet.io.grid import resample_onto

    labels_path = shared_data / "ct-dicom-patient-a" / "labels.nii.gz"
    ct = read_volume(shared_data / "ct-dicom-patient-a" / "dicom")
    labels = read_volume(labels_path)
    on_ct = resample_onto(labels, ct)
    assert on_ct.shape == ct.shape
    pred_path = write_volume(on_ct, tmp_path / "on_ct.nii.gz", is_label=True)
    assert main(["evaluate", str(pred_path), str(labels_path), "--labels", "5,1"]) == 1
    assert "direction" in capsys.readouterr().err
    rc = main(
        ["evaluate", str(pred_path), str(labels_path), "--labels", "5,1", "--resample", "--json"]
    )
    summary = last_json(capsys.readouterr().out)
    assert rc == 0
    assert summary["dice"] == {"5": 1.0, "1": 1.0}
    assert summary["hd95_mm"] == {"5": 0.0, "1": 0.0}
