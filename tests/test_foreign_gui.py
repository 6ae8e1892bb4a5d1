"""The Segment dock picks an nnU-Net v2 folder (Folder…), shows its card, and runs it."""

from __future__ import annotations

import napari  # noqa: F401
import nnunetv2  # noqa: F401  (installed by scripts/setup.sh)
import numpy as np
import pytest

import test_widget_segment_support as support
from napari_vnet.inference import predict
from napari_vnet.phantoms import make_phantom
from napari_vnet.weights import load_weights
from test_foreign_nnunet import FOLDER
from test_widget_segment_support import RUN_TIMEOUT_MS, errors, wait_done

dock = support.dock

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("config_dir")]


def test_folder_button_picks_an_nnunet_folder_and_run_segments(qtbot, dock, notes, monkeypatch):
    from qtpy.QtWidgets import QFileDialog

    viewer, w = dock
    image, _, _ = make_phantom(7, shape=(24, 48, 48))
    layer = viewer.add_image(image.array, name="ct", scale=image.spacing)
    # the folder dialog itself cannot be driven headless: answer it with the folder
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(FOLDER))
    w.model.browse_folder.native.click()
    assert w.current_weights == FOLDER
    text = w.model.info.text()
    assert "nnU-Net v2, Dataset901_TinyPhantom, 3d_fullres, folds 0-1" in text
    assert "liver" in text and "spine" in text and "nnU-Net's own" in text
    assert w.model.problem is None
    assert w.image.value is layer
    # nnU-Net's own defaults (mirroring, float32 on the CPU), said in the settings
    settings = w._settings
    assert settings.tta.value is True and settings.amp.value is False
    assert settings.producer.value == "nnU-Net default: mirroring on (8x slower), float32"
    assert w.model.fold_choice() == {"folds": None, "checkpoint": None}

    with qtbot.waitSignal(w.prediction_added, timeout=RUN_TIMEOUT_MS) as blocker:
        assert w.run() is not None
    wait_done(qtbot, w)
    result = blocker.args[0]
    assert not errors(notes)
    assert result.data.shape == image.array.shape
    model, card = load_weights(FOLDER)
    expected = predict(image, model, card, tta=True, amp=False).labels
    assert np.array_equal(np.asarray(result.data), expected)
    assert {1, 2} <= set(np.unique(result.data))

    # one fold, its final checkpoint, no mirroring: what the dock runs
    w.model.folds.value = "1"
    w.model.checkpoint.value = "checkpoint_final.pth"
    settings.tta.value = False
    assert w.model.fold_choice() == {"folds": ["1"], "checkpoint": "checkpoint_final.pth"}
    with qtbot.waitSignal(w.prediction_added, timeout=RUN_TIMEOUT_MS) as blocker:
        assert w.run() is not None
    wait_done(qtbot, w)
    model, card = load_weights(FOLDER, folds=["1"], checkpoint="checkpoint_final.pth")
    expected = predict(image, model, card, tta=False, amp=False).labels
    assert np.array_equal(np.asarray(blocker.args[0].data), expected)
    assert not errors(notes)
    # shipped napari-vnet weights: their defaults as before, no folds, no producer line
    w.model.select("vnet-phantom")
    assert settings.tta.value is False and settings.amp.value == "auto"
    assert settings.producer.value == "" and w.model.fold_choice() == {}


def test_totalsegmentator_folder_lists_its_classes_and_runs_as_nnunet(qtbot, dock, notes,
                                                                       monkeypatch):  # fmt: skip
    """TotalSegmentator's shape of folder: its class names in the card and on the result
    layer, no mirroring (its checkpoint allows none), the labels of ``predict``."""
    from qtpy.QtWidgets import QFileDialog

    from napari_vnet.phantoms import make_blob_phantom
    from test_foreign_totalseg import FOLDER as TOTALSEG
    from test_foreign_totalseg import _names

    viewer, w = dock
    image, _, _ = make_blob_phantom(7, _names())
    viewer.add_image(image.array, name="ct", scale=image.spacing)
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(TOTALSEG))
    w.model.browse_folder.native.click()
    text = w.model.info.text()
    assert "nnU-Net v2, Dataset902_TinyTotalSeg, 3d_fullres, fold 0" in text
    assert all(n in text for n in ("spleen", "liver", "kidney_cyst_right")), text
    settings = w._settings
    assert settings.tta.value is False and settings.amp.value is False
    assert settings.producer.value == "nnU-Net default: mirroring off, float32"
    with qtbot.waitSignal(w.prediction_added, timeout=RUN_TIMEOUT_MS) as blocker:
        assert w.run() is not None
    wait_done(qtbot, w)
    result = blocker.args[0]
    assert not errors(notes)
    model, card = load_weights(TOTALSEG)
    expected = predict(image, model, card, tta=False, amp=False).labels
    assert np.array_equal(np.asarray(result.data), expected)
    names = dict(zip(result.features["index"], result.features["class"], strict=True))
    assert names[1] == "spleen" and names[5] == "liver" and names[24] == "kidney_cyst_right"
    assert len(names) == 25
