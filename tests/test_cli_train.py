"""`napari-vnet train` and `export-dataset` end to end on small NIfTI files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from napari_vnet.cli import main
from napari_vnet.models import load_checkpoint


def write_pair(folder, shape=(12, 24, 24), spacing_xyz=(1.5, 1.5, 2.0)):
    rng = np.random.default_rng(0)
    z, y, x = np.indices(shape)
    labels = np.zeros(shape, np.uint8)
    labels[((z - 6) ** 2 + (y - 12) ** 2 + (x - 10) ** 2) < 25] = 5  # "liver"
    labels[((z - 6) ** 2 + (y - 6) ** 2 + (x - 19) ** 2) < 6] = 1  # "spleen"
    labels[:2, :3, :3] = 6  # "stomach": not selected -> background
    image = (rng.normal(0, 20, shape) + 100 * (labels == 5) + 200 * (labels == 1)).astype(np.int16)
    paths = []
    for arr, name in ((image, "ct.nii.gz"), (labels, "seg.nii.gz")):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(spacing_xyz)
        img.SetOrigin((-10.0, 5.0, 20.0))
        sitk.WriteImage(img, str(folder / name))
        paths.append(str(folder / name))
    return paths


@pytest.mark.slow
def test_train_json_end_to_end(tmp_path, capsys):
    image, labels = write_pair(tmp_path)
    out = tmp_path / "new.pt"
    rc = main(
        [
            "train",
            "--image",
            image,
            "--labels",
            labels,
            "--arch",
            "unet3d",
            "--width",
            "4",
            "--iterations",
            "6",
            "--patch-size",
            "8",
            "16",
            "16",
            "--batch-size",
            "2",
            "--classes",
            "5=liver,1=spleen",
            "--val-fraction",
            "0.3",
            "--seed",
            "1",
            "--normalization",
            "window:-50:300",
            "--json",
        ]  # fmt: skip
        + ["--out", str(out)]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    result = result_first = json.loads(captured.out.strip().splitlines()[-1])
    assert result["iterations"] == 6 and result["out"] == str(out)
    assert np.isfinite(result["final_loss"]) and 0.0 <= result["val_dice"] <= 1.0
    assert result["seconds"] > 0 and result["world_size"] == 1
    assert "[6/6]" in captured.err
    model, card = load_checkpoint(out)
    assert [(c.value, c.name) for c in card.classes] == [
        (0, "background"),
        (5, "liver"),
        (1, "spleen"),
    ]
    assert card.normalization == {"kind": "window", "low": -50.0, "high": 300.0}
    assert card.spacing == (2.0, 1.5, 1.5) and card.patch_size == (8, 16, 16)
    assert card.arch_kwargs["channels"] == [4, 8, 16, 32]

    # fine-tune the result on sparse slices, resampled to another spacing
    out2 = tmp_path / "tuned.pt"
    rc = main(
        ["train", "--image", image, "--labels", labels, "--weights", str(out), "--iterations", "2",
         "--annotated-slices", "3,6,9", "--spacing", "2", "3", "3", "--out", str(out2), "--json"]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    result = json.loads(captured.out.strip().splitlines()[-1])
    assert result["classes"] == {"0": "background", "5": "liver", "1": "spleen"}
    tuned_card = load_checkpoint(out2)[1]
    assert tuned_card.spacing == (2.0, 3.0, 3.0)
    assert tuned_card.history["run"]["started_from"] == "new.pt"
    assert tuned_card.history["base"]["iterations"] == card.history["iterations"]
    assert card.history["iterations"] == result_first["best_iteration"]


def test_train_argument_errors(tmp_path, capsys):
    image, labels = write_pair(tmp_path)
    rc = main(["train", "--image", image, "--labels", labels, "--labels", labels, "--arch", "vnet",
               "--out", str(tmp_path / "x.pt")])  # fmt: skip
    assert rc == 2 and "pairs" in capsys.readouterr().err
    rc = main(["train", "--image", image, "--labels", labels, "--weights", str(tmp_path / "no.pt"),
               "--out", str(tmp_path / "x.pt")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and "no.pt" in err
    with pytest.raises(SystemExit):
        main(["train", "--image", image, "--labels", labels, "--out", str(tmp_path / "x.pt")])


def test_train_vox2vox_loss_weights_reach_the_card(tmp_path, capsys):
    image, labels = write_pair(tmp_path)
    out = tmp_path / "v2v.pt"
    rc = main(
        ["train", "--image", image, "--labels", labels, "--arch", "vox2vox",
         "--arch-kwargs", '{"channels": [4, 8], "bottleneck_blocks": 1}', "--iterations", "1",
         "--patch-size", "8", "16", "16", "--gan-lambda", "7", "--gan-ce-weight", "0",
         "--out", str(out), "--json"]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "ce " not in captured.err.split("[1/1]")[1].splitlines()[0]  # the paper's loss
    run = load_checkpoint(out)[1].history["run"]["config"]
    assert run["gan_lambda"] == 7.0 and run["gan_ce_weight"] == 0.0


def test_export_dataset_writes_nnunet_layout(tmp_path, capsys):
    image, labels = write_pair(tmp_path)
    out = tmp_path / "Dataset001_test"
    rc = main(["export-dataset", "--image", image, "--labels", labels, "--image", image,
               "--labels", labels, "--classes", "5=liver,1=spleen", "--out", str(out)])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "liver": 1, "spleen": 2}
    assert meta["napari_vnet_label_values"] == {"background": 0, "liver": 5, "spleen": 1}
    assert meta["numTraining"] == 2 and meta["file_ending"] == ".nii.gz"
    assert meta["channel_names"] == {"0": meta["modality"]["0"]}
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [
        "case_000_0000.nii.gz",
        "case_001_0000.nii.gz",
    ]
    img = sitk.ReadImage(str(out / "imagesTr" / "case_000_0000.nii.gz"))
    seg = sitk.ReadImage(str(out / "labelsTr" / "case_000.nii.gz"))
    src = sitk.ReadImage(labels)
    assert seg.GetSpacing() == img.GetSpacing() == src.GetSpacing()
    assert seg.GetOrigin() == img.GetOrigin() == src.GetOrigin()
    new, old = sitk.GetArrayFromImage(seg), sitk.GetArrayFromImage(src)
    assert ((new == 1) == (old == 5)).all() and ((new == 2) == (old == 1)).all()
    assert (new[old == 6] == 0).all()
    # a second export into the non-empty folder is refused
    assert main(["export-dataset", "--image", image, "--labels", labels, "--out", str(out)]) == 2
