"""A TotalSegmentator-shaped nnU-Net v2 folder through napari-vnet, against nnU-Net itself.

tests/data/nnunet/Dataset902_TinyTotalSeg was made by nnU-Net's own planner and trainer
(``scripts/make_nnunet_test_model.py --dataset totalseg``) in the shape of
TotalSegmentator's v2 CT models: 3d_fullres, ``channel_names {"0": "CT"}``, its 24 organ
classes named and numbered as TotalSegmentator names them, trained without mirroring
(``nnUNetTrainerNoMirroring``) and shipped as TotalSegmentator ships a model
(``nnUNetTrainerNoMirroring__nnUNetPlans__3d_fullres/fold_0``). The inputs are
:func:`napari_vnet.phantoms.make_blob_phantom` volumes (one blob per class) of seeds the
model was not trained on.
"""

from __future__ import annotations

import json
from pathlib import Path

import nnunetv2  # noqa: F401  (installed by scripts/setup.sh)
import numpy as np
import pytest
from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring import (
    nnUNetTrainerNoMirroring,
)

from napari_vnet.cli import main
from napari_vnet.io import read_volume, write_volume
from napari_vnet.io.label_names import read_label_classes
from napari_vnet.phantoms import make_blob_phantom
from napari_vnet.weights import read_weights_card
from test_foreign_nnunet import _dice, _nnunet_predict

DATA = Path(__file__).parent / "data" / "nnunet" / "Dataset902_TinyTotalSeg"
FOLDER = DATA / "nnUNetTrainerNoMirroring__nnUNetPlans__3d_fullres"
#: TotalSegmentator's own numbering ("total" task) of some of the 24 classes
SOME = {1: "spleen", 2: "kidney_right", 3: "kidney_left", 5: "liver", 7: "pancreas",
        10: "lung_upper_lobe_left", 15: "esophagus", 18: "small_bowel", 20: "colon",
        24: "kidney_cyst_right"}  # fmt: skip
LIVER = 5


def _names() -> list[str]:
    labels = json.loads((FOLDER / "dataset.json").read_text())["labels"]
    return [n for n, _ in sorted(labels.items(), key=lambda kv: kv[1]) if n != "background"]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A blob phantom the model never saw, written by SimpleITK, and napari-vnet's
    labels for it (``predict`` with its defaults for an nnU-Net folder)."""
    tmp = tmp_path_factory.mktemp("totalseg")
    image, truth, _ = make_blob_phantom(7, _names())
    src = write_volume(image, tmp / "ct.nii.gz")
    out = tmp / "seg.nii.gz"
    assert main(["predict", str(src), "-w", str(FOLDER), "-o", str(out)]) == 0
    return src, out, read_volume(out).array, truth.array


def test_card_has_totalsegmentators_classes_and_no_mirroring():
    from napari_vnet.workflows.producer import producer_defaults

    card = read_weights_card(DATA)
    assert card.origin() == "nnU-Net v2, Dataset902_TinyTotalSeg, 3d_fullres, fold 0"
    assert card.source["trainer"] == "nnUNetTrainerNoMirroring"
    assert card.source["channel_names"] == {"0": "CT"} and card.in_channels == 1
    assert card.label_values == list(range(25))
    assert {v: card.class_names[v] for v in SOME} == SOME
    # the checkpoint allows no mirroring: nnUNetv2_predict mirrors nothing, nor do we
    assert card.sliding_window["mirror_axes"] == []
    own = producer_defaults(card, "cpu")
    assert (own.tta, own.amp, own.passes) == (False, False, 1)
    assert own.describe() == "nnU-Net default: mirroring off, float32"


def test_predict_names_the_classes_and_agrees_with_nnunet(case):
    src, out, ours, truth = case
    classes = {c["value"]: c["name"] for c in read_label_classes(out)[0]}  # the sidecar
    assert {v: classes[v] for v in SOME} == SOME and len(classes) == 25
    # the tiny model learned something (8 epochs on CPU): a third of the classes
    assert sum(_dice(ours, truth, v) > 0.1 for v in range(1, 25)) >= 8
    present = [v for v in range(1, 25) if (ours == v).sum() >= 20]
    assert len(present) >= 8
    # nnU-Net's own predictor, mirroring asked for as nnUNetv2_predict does by default:
    # the checkpoint allows none, so it does none
    theirs = _nnunet_predict(FOLDER, read_volume(src), mirror=True,
                             trainer=nnUNetTrainerNoMirroring)  # fmt: skip
    assert theirs.shape == ours.shape
    assert np.count_nonzero(ours != theirs) <= 0.001 * ours.size  # float rounding only
    for value in present:  # near-ties of a barely trained model: small classes may differ
        if (ours == value).sum() >= 100:
            assert _dice(ours, theirs, value) >= 0.99, value


def test_roi_subset_and_split_masks_by_totalsegmentator_names(case, tmp_path, capsys):
    src, _, full, _ = case
    out = tmp_path / "sub.nii.gz"
    argv = ["predict", str(src), "-w", str(FOLDER), "-o", str(out)]
    assert main([*argv, "--roi-subset", "liver", "spleen", "--split-masks"]) == 0
    assert np.array_equal(read_volume(out).array, np.where(np.isin(full, [1, 5]), full, 0))
    masks = tmp_path / "sub_masks"
    assert sorted(p.name for p in masks.iterdir()) == ["liver.nii.gz", "spleen.nii.gz"]
    liver = read_volume(masks / "liver.nii.gz").array
    assert np.array_equal(liver, (full == LIVER).astype(np.uint8))
    # every class, as TotalSegmentator writes them: one file per class name
    capsys.readouterr()
    assert main([*argv, "--overwrite", "--split-masks"]) == 0
    assert sorted(p.name for p in masks.iterdir()) == sorted(f"{n}.nii.gz" for n in _names())
    assert main([*argv, "--overwrite", "--roi-subset", "liver", "brain"]) == 1
    assert "unknown class name(s) brain" in capsys.readouterr().err
