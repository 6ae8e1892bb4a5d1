"""The Fine-tune dock with an nnU-Net v2 folder as its base, training in a real thread."""

from __future__ import annotations

import shutil
from pathlib import Path

import napari  # noqa: F401
import nnunetv2  # noqa: F401  (installed by scripts/setup.sh)
import numpy as np
import pytest
import torch

from napari_vnet.phantoms import make_phantom
from test_foreign_finetune import FOLDER
from test_widget_finetune import TIMEOUT_MS, open_docks, sha

pytestmark = [pytest.mark.gui, pytest.mark.slow, pytest.mark.usefixtures("config_dir")]


def test_finetune_dock_trains_an_nnunet_folder_and_segment_runs_the_result(
    make_napari_viewer, qtbot, tmp_path, monkeypatch
):
    from napari.layers import Labels

    from napari_vnet.inference import predict
    from napari_vnet.weights import load_weights

    base = tmp_path / FOLDER.parent.name / FOLDER.name  # a copy: tests/data stays as it is
    shutil.copytree(FOLDER, base)
    hashes = {p: sha(p) for p in base.rglob("*") if p.is_file()}
    viewer = make_napari_viewer()
    phantom, truth, _ = make_phantom(5, shape=(24, 48, 48))
    lab = np.zeros(truth.array.shape, np.uint8)
    lab[truth.array == 1], lab[truth.array == 4] = 1, 2  # liver, spine as in the dataset
    image = viewer.add_image(phantom.array, scale=phantom.spacing, name="ct")
    labels = viewer.add_labels(np.zeros_like(lab), scale=phantom.spacing, name="corrected")
    seg, ft = open_docks(viewer)
    assert seg.select_weights(base)
    ft.refresh_base_weights()
    assert ft.base_weights() == base  # the folder follows the Segment dock
    # ... or is picked with the dock's own Folder… button (the dialog itself cannot be
    # driven headless: answer it with the folder)
    from qtpy.QtWidgets import QFileDialog

    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(base))
    ft._base_weights = None
    ft.choose_base_folder.click()
    assert ft._base_weights == base and ft.base_weights() == base
    assert ft.base_label.text() == base.name
    default_out = Path(ft.out_edit.text())
    assert default_out.parent == base.parent and default_out.suffix == ".pt"

    for z in (6, 12, 18):  # paint the true classes into three slices
        for value in (1, 2):
            yy, xx = np.nonzero(lab[z] == value)
            labels.data_setitem((np.full(yy.shape, z), yy, xx), value)
    ft.add_pair(image, labels)
    ft.stop_combo.setCurrentText("iterations")
    ft.iterations_spin.setValue(4)
    ft.batch_spin.setValue(1)
    ft.device_combo.setCurrentText("cpu")

    with qtbot.waitSignal(ft.weights_saved, timeout=TIMEOUT_MS) as saved:
        assert ft.train() is not None
    qtbot.waitUntil(lambda: ft._worker is None, timeout=10_000)
    out = Path(saved.args[0])
    assert out == default_out and out.is_file()
    assert {p: sha(p) for p in base.rglob("*") if p.is_file()} == hashes  # base untouched
    assert all(np.isfinite(ft.curve.losses)) and len(ft.curve.losses) == 4

    model, card = load_weights(out)  # a napari-vnet weights file, rebuilt from its card
    assert card.arch == "nnunet" and card.preprocessing["kind"] == "nnunet"
    assert card.source.get("fine_tuned") is True
    assert [c.name for c in card.classes] == ["background", "liver", "spine"]
    assert card.history["iterations"] == 4
    base_model, _ = load_weights(base)
    trained, original = model.state_dict(), base_model.state_dict()
    assert any(not torch.equal(trained[k], original[k]) for k in original)  # it did train

    with qtbot.waitSignal(seg.prediction_added, timeout=TIMEOUT_MS) as added:
        assert ft.segment_with_new_weights() is not None
    new = added.args[0]
    assert isinstance(new, Labels) and new in viewer.layers
    assert seg.current_weights is not None and Path(seg.current_weights) == out
    expected = predict(phantom, model, card, device="cpu").labels
    assert new.data.shape == lab.shape
    assert np.array_equal(np.asarray(new.data), expected)
    assert {1, 2} <= set(np.unique(new.data))
