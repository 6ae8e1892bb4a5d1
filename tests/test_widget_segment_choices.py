"""The "Segment volume" dock's choices: weights, architecture, images, devices; refusals."""

from __future__ import annotations

import napari  # noqa: F401
import numpy as np
import pytest
import torch

import test_widget_segment_support as support
from napari_vnet._widgets import _session
from napari_vnet._widgets.segment import SegmentWidget, available_devices
from test_widget_segment_support import (
    errors,
    save_tiny,
    volume,
)

# the shared fixtures, made visible to pytest in this module
ckpt = support.ckpt
dock = support.dock

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("config_dir")]


def test_bad_weights_file_is_refused_with_a_notification(qtbot, dock, tmp_path, notes):
    viewer, w = dock
    viewer.add_image(volume(), name="ct")
    bad = tmp_path / "random.pt"
    bad.write_bytes(np.random.default_rng(1).bytes(4096))
    before = w.current_weights  # shipped weights are chosen by default when installed
    assert not w.select_weights(bad)
    assert w.current_weights == before  # the previous choice stays
    assert any("random.pt" in m for m in errors(notes))
    assert bad.resolve() not in _session.recent_weights()
    w.model.select(None)
    assert not w.run_button.isEnabled()
    assert w.run() is None  # refused, with a notification
    assert "weights" in errors(notes)[-1]
    assert len(viewer.layers) == 1


def test_2d_image_refused(qtbot, dock, notes):
    viewer, w = dock
    flat = viewer.add_image(np.zeros((32, 32), np.float32), name="slice")
    assert w.image.value is None  # only 3D volumes are offered
    assert not w.set_image_layer(flat)
    assert any("2D" in m for _, m in notes)
    assert w.image_note.isVisibleTo(w) and "2D" in w.image_note.text()
    assert w.run() is None
    assert len(viewer.layers) == 1


def test_architecture_mismatch_is_refused(qtbot, dock, ckpt, tmp_path, notes):
    viewer, w = dock
    viewer.add_image(volume(), name="ct")
    assert w.select_weights(ckpt)
    assert w.run_button.isEnabled()
    w.model.arch.value = "unet3d"
    assert "V-Net" in w.model.problem and "3D U-Net" in w.model.problem
    assert not w.run_button.isEnabled()
    assert w.run() is None
    assert errors(notes) and "V-Net" in errors(notes)[-1]
    # choosing 3D U-Net weights sets the architecture back in line
    unet = save_tiny(tmp_path / "tiny_unet.pt", arch="unet3d")
    assert w.select_weights(unet)
    assert w.model.current_arch == "unet3d" and w.model.problem is None
    assert w.run_button.isEnabled()


def test_weights_list_devices_and_find_dock(qtbot, dock, ckpt, tmp_path):
    viewer, w = dock
    _session.add_recent_weights(ckpt)
    other = save_tiny(tmp_path / "other.pt")
    _session.add_recent_weights(other)
    assert _session.recent_weights()[:2] == [other.resolve(), ckpt.resolve()]
    w.refresh_weights()
    values = [c for c in w.model.weights.choices]
    assert str(other.resolve()) in values and str(ckpt.resolve()) in values
    devices = [v for _, v in available_devices()]
    assert devices[0] == "auto" and "cpu" in devices
    assert ("cuda" in devices) == torch.cuda.is_available()
    assert _session.Session.of(viewer).segment is w
    # a new dock starts with the most recently used weights
    fresh = SegmentWidget(viewer)
    assert fresh.current_weights == other.resolve()
    assert fresh.model.problem is None and "tiny test network" in fresh.model.info.text()
    fresh.deleteLater()
    other.unlink()
    assert other.resolve() not in _session.recent_weights()


def test_card_shown_and_its_recommended_settings_applied(qtbot, dock, ckpt, tmp_path):
    from napari_vnet.models import build_model, save_checkpoint
    from test_widget_segment_support import tiny_card

    viewer, w = dock
    card = tiny_card()
    card.history = {
        "iterations": 120,
        "inference": {"overlap": 0.25, "postprocess": ["fill_holes"]},
    }
    tuned = save_checkpoint(build_model(card), card, tmp_path / "tuned.pt")
    assert w.select_weights(tuned)
    assert w.overlap.value == pytest.approx(0.25)
    assert w.post["fill_holes"].value and not w.post["largest_component"].value
    text = w.model.info.text()
    for part in ("tuned.pt", "V-Net", "liver (1)", "spleen (5)", "2 × 1 × 1", "z-score", "120"):
        assert part in text, part
    # the user's changes stay while the same weights are chosen
    w.overlap.value = 0.6
    w.model.arch.value = "unet3d"
    w.model.arch.value = "vnet"
    assert w.overlap.value == pytest.approx(0.6)
    # other weights bring their own defaults
    assert w.select_weights(ckpt)
    assert w.overlap.value == pytest.approx(0.5) and not w.post["fill_holes"].value
