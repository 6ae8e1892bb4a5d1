"""The real-CT starter weights: shipped, honest cards, named and coloured classes, the
Segment dock's default for a CT in HU, and a liver found on a patient they never saw."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from napari_vnet.weights import SHIPPED_NAMES, resolve_weights, shipped_weights

#: (a V-Net starter trained the same way scored liver 0.70 on new patients and weighed
#: 15 MB: not shipped, see docs/readme/generalisation.md)
STARTERS = ("unet3d-ct-starter",)
CORE = {"liver", "spleen", "stomach", "aorta", "inferior_vena_cava", "vertebrae",
        "spinal_cord", "autochthon_left", "autochthon_right", "colon"}  # fmt: skip
#: a synthetic second patient used neither by the benchmark (1-4) nor the card (11-14)
UNSEEN_PATIENT = 21


def test_starters_are_shipped_and_the_wheel_stays_small():
    shipped = shipped_weights()
    assert set(STARTERS) <= set(shipped) and set(STARTERS) <= set(SHIPPED_NAMES)
    assert sum(p.stat().st_size for p in shipped.values()) < 25 * 1024 * 1024


@pytest.mark.parametrize("name", STARTERS)
def test_card_says_where_the_weights_come_from(name):
    from napari_vnet.models import read_card
    from napari_vnet.workflows.input_check import demo_note

    card = read_card(resolve_weights(name))
    assert CORE <= set(card.class_names.values())
    assert all(c.color is not None for c in card.classes if c.value)
    assert card.label_values[:3] == [0, 5, 1]  # TotalSegmentator's values: liver 5, spleen 1
    assert "ONE public abdominal CT" in card.description and "fine-tune" in card.description
    assert card.normalization["kind"] == "ct"
    ev = card.history["evaluation"]
    assert ev["dice_per_class"]["liver"] >= 0.85, ev
    assert "one public abdominal CT" in demo_note(card)


@pytest.mark.slow
def test_unet_starter_finds_the_liver_on_an_unseen_patient(shared_data):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import second_patient as sp

    from napari_vnet.inference import predict
    from napari_vnet.metrics import dice_per_class, hd95_per_class
    from napari_vnet.models import load_checkpoint

    vol, lab = sp.load_shared_ct()
    img2, lab2, _ = sp.make_second_patient(vol, lab, UNSEEN_PATIENT)
    model, card = load_checkpoint(resolve_weights("unet3d-ct-starter"))
    result = predict(img2, model, card)
    gt = np.asarray(lab2.array)
    dice = dice_per_class(result.labels, gt, [5, 1])
    assert dice[5] >= 0.85, dice
    assert hd95_per_class(result.labels, gt, img2.spacing, [5])[5] < 15.0
    assert result.windows <= 48  # the plan bounds inference: a few dozen windows at most


@pytest.mark.gui
def test_segment_dock_picks_the_ct_starter_for_ct_and_keeps_user_choices(
    make_napari_viewer, tmp_path, monkeypatch
):
    from napari_vnet._widgets import _session
    from napari_vnet._widgets.segment import SegmentWidget

    monkeypatch.setenv(_session.CONFIG_ENV, str(tmp_path / "config"))
    viewer = make_napari_viewer()
    dock = SegmentWidget(viewer)
    viewer.window.add_dock_widget(dock)
    ships = shipped_weights()
    assert dock.model.current_weights == ships["vnet-phantom"]
    ct = np.full((8, 32, 32), -1000, np.int16)
    ct[:, 4:28, 4:28] = 40
    ct[3:5, 10:14, 10:14] = 700
    viewer.add_image(ct, name="ct")
    dock.image.value = viewer.layers["ct"]
    assert dock.model.current_weights == ships["unet3d-ct-starter"]
    mr = np.random.default_rng(0).uniform(0, 500, (8, 32, 32)).astype(np.float32)
    viewer.add_image(mr, name="mr")
    dock.image.value = viewer.layers["mr"]
    assert dock.model.current_weights == ships["vnet-phantom"]
    phantom = viewer.add_image(ct, name="phantom", metadata={"synthetic_phantom": True})
    dock.image.value = phantom
    assert dock.model.current_weights == ships["vnet-phantom"]
    # the user's own choice is never moved by the image
    dock.model.select("unet3d-phantom")
    dock.image.value = viewer.layers["ct"]
    assert dock.model.current_weights == ships["unet3d-phantom"]
