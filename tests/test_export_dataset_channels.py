"""`napari-vnet export-dataset`: every channel of a multi-channel case as ``CASE_000i``, the
channel names in dataset.json from the option, the model card or the DICOM modality ("CT"
for CT: nnU-Net's CT normalisation); read back with SimpleITK and nnU-Net's own check."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from napari_vnet.cli import main
from napari_vnet.io import Volume, read_volume, write_volume
from napari_vnet.models import ClassInfo, ModelCard, build_model, save_checkpoint
from test_io_dicom import write_dicom_series

SHAPE = (6, 10, 9)
SPACING = (2.0, 0.9, 0.8)
NNUNET = Path(__file__).parent / "data" / "nnunet" / "Dataset901_TinyPhantom"


def _write(path, array):
    write_volume(Volume(array, spacing=SPACING, origin=(1.0, 2.0, 3.0)), path)
    return str(path)


def _labels(seed):
    lab = np.zeros(SHAPE, np.uint8)
    lab[1 + seed : 4 + seed, 2:7, 3:8] = 3
    return lab


def _run(argv, capsys):
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.err


def _nnunet_check(folder):
    """nnU-Net's own dataset integrity check, when nnU-Net is installed."""
    try:
        from nnunetv2.experiment_planning.verify_dataset_integrity import (
            verify_dataset_integrity,
        )
    except ImportError:
        return
    verify_dataset_integrity(str(folder), num_processes=1)


def test_two_channel_cases_with_their_channel_names(tmp_path, capsys):
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    src.mkdir()
    chans = [[rng.normal(100 * (c + 1), 5, SHAPE).astype(np.float32) for c in range(2)]
             for _ in range(2)]  # fmt: skip
    a = [_write(src / f"a_{c:04d}.nii.gz", chans[0][c]) for c in range(2)]
    b = [_write(src / f"b_{name}.nii.gz", chans[1][c]) for c, name in enumerate(("t2", "adc"))]
    labs = [_write(src / f"lab{i}.nii.gz", _labels(i)) for i in range(2)]
    out = tmp_path / "Dataset002_T2ADC"
    rc, err = _run(["export-dataset", "--image", a[0], "--labels", labs[0],
                    "--image", os.pathsep.join(b), "--labels", labs[1],
                    "--channel-names", "0=T2,1=ADC", "--classes", "3=prostate",
                    "--out", str(out)], capsys)  # fmt: skip
    assert rc == 0, err
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "T2", "1": "ADC"} == meta["modality"]
    assert meta["labels"] == {"background": 0, "prostate": 1}
    assert meta["training"][0]["source_image"] == a
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [
        "case_000_0000.nii.gz", "case_000_0001.nii.gz",
        "case_001_0000.nii.gz", "case_001_0001.nii.gz",
    ]  # fmt: skip
    for i in range(2):
        seg = sitk.ReadImage(str(out / "labelsTr" / f"case_{i:03d}.nii.gz"))
        assert sitk.GetArrayFromImage(seg).shape == SHAPE
        for c in range(2):  # each channel file holds its own channel, in order
            img = sitk.ReadImage(str(out / "imagesTr" / f"case_{i:03d}_{c:04d}.nii.gz"))
            np.testing.assert_allclose(sitk.GetArrayFromImage(img), chans[i][c])
            assert img.GetSpacing() == seg.GetSpacing() and img.GetOrigin() == seg.GetOrigin()
    _nnunet_check(out)

    # a case with other channels than the rest is refused, naming the problem
    rc, err = _run(["export-dataset", "--image", a[0], "--labels", labs[0], "--image",
                    _write(src / "single.nii.gz", chans[1][0]), "--labels", labs[1],
                    "--out", str(tmp_path / "bad")], capsys)  # fmt: skip
    assert rc == 1 and "same channels" in err


def test_ct_channel_named_ct_from_dicom_or_card(tmp_path, capsys):
    dicom = tmp_path / "ct"
    arr = (np.arange(np.prod(SHAPE)).reshape(SHAPE) % 300 - 100).astype(np.int16)
    write_dicom_series(dicom, arr, uid="1.2.826.0.1.7", description="abdomen",
                       spacing=SPACING[::-1])  # fmt: skip
    ct = read_volume(dicom)
    labels = tmp_path / "lab.nii.gz"
    write_volume(ct.with_array(_labels(0)), labels, is_label=True)
    out = tmp_path / "Dataset003_CT"
    rc, err = _run(["export-dataset", "--image", str(dicom), "--labels", str(labels),
                    "--out", str(out)], capsys)  # fmt: skip
    assert rc == 0, err
    assert json.loads((out / "dataset.json").read_text())["channel_names"] == {"0": "CT"}
    img = sitk.ReadImage(str(out / "imagesTr" / "case_000_0000.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img), arr)
    _nnunet_check(out)

    # a NIfTI CT (no modality in the file): the card of a model trained on HU names it
    nifti = _write(tmp_path / "ct.nii.gz", arr)
    nlab = _write(tmp_path / "ct_labels.nii.gz", _labels(1))
    card = ModelCard(
        arch="vnet", arch_kwargs={"channels": [2, 4]},
        classes=[ClassInfo(0, "bg"), ClassInfo(1, "x")],
        normalization={"kind": "window", "low": -200.0, "high": 400.0}, patch_size=(8, 8, 8),
    )  # fmt: skip
    weights = save_checkpoint(build_model(card), card, tmp_path / "hu.pt")
    for i, (source, want) in enumerate(
        ((str(weights), "CT"), (str(NNUNET), "CT"), (None, "image"))
    ):
        dest = tmp_path / f"ds_{i}"
        argv = ["export-dataset", "--image", nifti, "--labels", nlab, "--out", str(dest)]
        rc, err = _run(argv + (["--weights", source] if source else []), capsys)
        assert rc == 0, err
        assert json.loads((dest / "dataset.json").read_text())["channel_names"] == {"0": want}
    # the user's name wins; "ct" in any case is nnU-Net's "CT"
    rc, err = _run(["export-dataset", "--image", nifti, "--labels", nlab, "--channel-names",
                    "0=ct", "--out", str(tmp_path / "ds_user")], capsys)  # fmt: skip
    assert rc == 0, err
    meta = json.loads((tmp_path / "ds_user" / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"}
    rc, err = _run(["export-dataset", "--image", nifti, "--labels", nlab, "--channel-names",
                    "1=ADC", "--out", str(tmp_path / "ds_bad")], capsys)  # fmt: skip
    assert rc == 1 and "channel 1" in err


@pytest.mark.parametrize("n", [2, 3])
def test_image_channels_finds_nnunet_siblings(tmp_path, n):
    from napari_vnet.workflows.batch_channels import image_channels

    files = [_write(tmp_path / f"c_{k:04d}.nii.gz", np.zeros(SHAPE, np.float32)) for k in range(n)]
    _write(tmp_path / f"c_{n + 1:04d}.nii.gz", np.zeros(SHAPE, np.float32))  # after a gap
    assert image_channels(files[0]) == files
    assert image_channels(files[1]) == [files[1]]  # not channel 0: the file alone
