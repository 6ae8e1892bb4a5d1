"""`napari-vnet predict` with TotalSegmentator's conveniences: --roi-subset, --split-masks,
--remove-small, --statistics on one file, --preview, gpu device names."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from napari_vnet.cli import main
from napari_vnet.io import Volume, read_volume, write_volume
from napari_vnet.models import ClassInfo, ModelCard, build_model, save_checkpoint
from napari_vnet.workflows.outputs import clean_labels, preview_image, write_png

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # fixture in conftest.py

SPACING = (2.0, 1.0, 0.5)
CLASSES = [ClassInfo(0, "background"), ClassInfo(1, "liver"), ClassInfo(3, "left kidney"),
           ClassInfo(7, "spleen")]  # fmt: skip


@pytest.fixture()
def case(tmp_path):
    rng = np.random.default_rng(1)
    image = rng.normal(size=(12, 24, 20)).astype(np.float32)
    image[3:9, 5:15, 4:12] += 3.0
    src = write_volume(Volume(image, spacing=SPACING), tmp_path / "ct.nii.gz")
    card = ModelCard(
        arch="vnet",
        arch_kwargs={"channels": [4, 8], "kernel_size": 3},
        classes=CLASSES,
        normalization={"kind": "zscore"},
        spacing=SPACING,
        patch_size=(16, 16, 16),
    )
    ckpt = save_checkpoint(build_model(card), card, tmp_path / "tiny.pt")
    full = tmp_path / "full.nii.gz"
    assert main(["predict", str(src), "-w", str(ckpt), "-o", str(full), "--no-amp"]) == 0
    labels = read_volume(full).array
    assert len(np.unique(labels)) >= 2  # the untrained network says more than one thing
    return src, ckpt, labels


def _json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def test_roi_subset_keeps_only_the_named_classes(case, tmp_path, capsys):
    src, ckpt, full = case
    out = tmp_path / "sub.nii.gz"
    argv = ["predict", str(src), "-w", str(ckpt), "-o", str(out), "--no-amp"]
    assert main([*argv, "--roi-subset", "Liver", "spleen"]) == 0
    expected = np.where(np.isin(full, [1, 7]), full, 0)
    assert np.array_equal(read_volume(out).array, expected)
    capsys.readouterr()
    assert main([*argv, "--overwrite", "--roi-subset", "liver", "pancreas"]) == 1
    err = capsys.readouterr().err
    assert "unknown class name(s) pancreas; this model has: liver, left kidney, spleen" in err
    assert len(err.strip().splitlines()) == 1


def test_split_masks_statistics_and_preview_beside_the_labels(case, tmp_path, capsys):
    src, ckpt, full = case
    out = tmp_path / "seg.nii.gz"
    argv = ["predict", str(src), "-w", str(ckpt), "-o", str(out), "--no-amp", "--json"]
    assert main([*argv, "--split-masks", "--statistics", "--preview"]) == 0
    summary = _json(capsys.readouterr().out)
    folder = tmp_path / "seg_masks"
    assert sorted(p.name for p in folder.iterdir()) == [
        "left_kidney.nii.gz", "liver.nii.gz", "spleen.nii.gz",
    ]  # fmt: skip
    assert summary["split_masks"] == [str(folder / n) for n in
                                      ("liver.nii.gz", "left_kidney.nii.gz", "spleen.nii.gz")]  # fmt: skip
    for name, value in (("liver", 1), ("left_kidney", 3), ("spleen", 7)):
        mask = read_volume(folder / f"{name}.nii.gz")
        assert np.array_equal(mask.array, (full == value).astype(np.uint8)), name
        np.testing.assert_allclose(mask.spacing, SPACING, rtol=1e-5)
    assert read_volume(out).array.tolist() == full.tolist()  # the multilabel file too
    stats = json.loads((tmp_path / "seg_statistics.json").read_text())
    assert summary["statistics"] == str(tmp_path / "seg_statistics.json")
    by_label = {row["label"]: row for row in stats["classes"]}
    assert sorted(by_label) == [1, 3, 7]
    for value, row in by_label.items():
        n = int((full == value).sum())
        assert row["voxels"] == n and row["volume_ml"] == pytest.approx(n * 1e-3)  # 1 mm3 voxels
    png = tmp_path / "seg_preview.png"
    assert summary["preview"] == str(png)
    shown = sitk.GetArrayFromImage(sitk.ReadImage(str(png)))  # a PNG others read
    # (12, 24, 20) voxels of 2 x 1 x 0.5 mm in 0.5 mm pixels: axial 48 x 20 (y, x),
    # coronal 48 x 20 (z, x), sagittal 48 x 48 (z, y), side by side 4 pixels apart
    assert shown.shape == (48, 20 + 4 + 20 + 4 + 48, 3) and shown.dtype == np.uint8
    # --split-masks with --roi-subset: the kept classes only
    argv = [*argv[:-1], "--overwrite", "--split-masks", "--roi-subset", "spleen"]
    assert main(argv) == 0
    capsys.readouterr()
    assert sorted(p.name for p in folder.iterdir())[-1] == "spleen.nii.gz"


def test_remove_small_drops_components_by_volume(case, tmp_path):
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[0:4, 0:4, 0:4] = 1  # 64 voxels = 64 mm3 at 1 mm, 512 mm3 at 2 mm
    labels[8:10, 8:10, 8:10] = 1  # 8 voxels
    labels[6, 0, 0] = 3  # 1 voxel
    out = clean_labels(labels, remove_small_mm3=10, spacing=(1, 1, 1))
    assert out[0:4, 0:4, 0:4].all() and not out[8:, 8:, 8:].any() and out[6, 0, 0] == 0
    out = clean_labels(labels, remove_small_mm3=10, spacing=(2, 2, 2))  # 8 voxels = 64 mm3
    assert out[8:, 8:, 8:].all() and out[6, 0, 0] == 0
    assert labels[6, 0, 0] == 3  # the input untouched

    src, ckpt, full = case
    dst = tmp_path / "clean.nii.gz"
    argv = ["predict", str(src), "-w", str(ckpt), "-o", str(dst), "--no-amp"]
    assert main([*argv, "--remove-small", "20"]) == 0
    expected = clean_labels(full, remove_small_mm3=20, spacing=SPACING)
    assert np.array_equal(read_volume(dst).array, expected)
    assert main([*argv, "--overwrite", "--remove-small", "0"]) == 1


def test_gpu_device_names_mean_cuda(case, tmp_path, capsys):
    import torch

    from napari_vnet.runtime import resolve_device

    if torch.cuda.is_available():
        assert resolve_device("gpu") == resolve_device("cuda")
        assert resolve_device("gpu:0") == torch.device("cuda", 0)
        return
    for name in ("gpu", "gpu:1", "GPU"):
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device(name)
    src, ckpt, _ = case
    argv = ["predict", str(src), "-w", str(ckpt), "-o", str(tmp_path / "m.nii.gz")]
    assert main([*argv, "--device", "gpu"]) == 1
    assert "CUDA is not available" in capsys.readouterr().err


def test_png_writer_and_preview_image():
    rgb = np.zeros((3, 5, 3), np.uint8)
    rgb[1, 2] = (255, 10, 20)
    labels = np.zeros((4, 6, 8), np.uint8)
    labels[1:3, 2:4, 3:6] = 2
    image = np.arange(labels.size, dtype=np.float32).reshape(labels.shape)
    card = ModelCard(arch="vnet", classes=[ClassInfo(0, "bg"), ClassInfo(2, "x")])
    shown = preview_image(image, labels, (1.0, 1.0, 1.0), card)
    assert shown.shape == (6, 8 + 4 + 8 + 4 + 6, 3)
    assert (shown[..., 0] != shown[..., 1]).any()  # the class is coloured over the grey
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        back = sitk.GetArrayFromImage(sitk.ReadImage(str(write_png(Path(d) / "a.png", rgb))))
    assert np.array_equal(back, rgb)


def test_single_file_only_options_refused_for_folders(case, tmp_path, capsys):
    src, ckpt, full = case
    scans = tmp_path / "scans"
    scans.mkdir()
    src.rename(scans / src.name)
    argv = ["predict", str(scans), "-w", str(ckpt), "-o", str(tmp_path / "outdir"), "--no-amp"]
    assert main([*argv, "--split-masks", "--preview"]) == 1
    assert "--split-masks, --preview: only for a single file" in capsys.readouterr().err
    # --roi-subset and --remove-small hold for every case of a folder
    assert main([*argv, "--roi-subset", "spleen", "--remove-small", "20"]) == 0
    expected = clean_labels(full, keep_classes=[7], remove_small_mm3=20, spacing=SPACING)
    assert np.array_equal(read_volume(tmp_path / "outdir" / "ct.nii.gz").array, expected)
