"""The "Segment volume" dock runs real inference in real thread workers (tiny checkpoint)."""

from __future__ import annotations

import napari  # noqa: F401
import numpy as np
import pytest
from napari.layers import Labels

import test_widget_segment_support as support
from napari_vnet._widgets import _session
from test_widget_segment_support import (
    CLASSES,
    RUN_TIMEOUT_MS,
    errors,
    volume,
    wait_done,
)

# the shared fixtures, made visible to pytest in this module
ckpt = support.ckpt
dock = support.dock

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("config_dir")]


def test_run_real_thread_adds_labels_with_geometry_and_classes(qtbot, dock, ckpt, notes):
    viewer, w = dock
    image = viewer.add_image(
        volume(), name="ct", scale=(2.0, 0.8, 0.9), translate=(-10.0, 5.0, 3.0)
    )
    assert w.select_weights(ckpt)
    assert w.current_weights == ckpt
    assert w.model.current_arch == "vnet"
    assert "liver" in w.model.info.text() and "spleen" in w.model.info.text()
    assert w.image.value is image
    n_before = len(viewer.layers)

    with qtbot.waitSignal(w.prediction_added, timeout=RUN_TIMEOUT_MS) as blocker:
        worker = w.run()
        assert worker is not None
        assert w.run_button.text() == "Cancel"
    wait_done(qtbot, w)
    assert w.run_button.text() == "Run"

    layer = blocker.args[0]
    assert isinstance(layer, Labels)
    first_result = layer.data.copy()
    assert len(viewer.layers) == n_before + 1 and layer in viewer.layers
    assert layer.name == "ct [V-Net]"
    assert layer.data.shape == image.data.shape
    assert set(np.unique(layer.data)) <= {0, 1, 5}
    np.testing.assert_allclose(layer.scale, image.scale)
    np.testing.assert_allclose(layer.translate, image.translate)
    np.testing.assert_allclose(layer.affine.affine_matrix, image.affine.affine_matrix)
    # class names in the features table (shown in napari's status bar under the cursor)
    feats = layer.features
    assert dict(zip(feats["index"], feats["class"], strict=True)) == {
        0: "background",
        1: "liver",
        5: "spleen",
    }
    np.testing.assert_allclose(layer.colormap.map(np.array([1]))[0], CLASSES[1].color)
    meta = layer.metadata["napari_vnet"]
    assert meta["weights"] == str(ckpt)
    assert meta["model"] == "vnet"
    assert meta["settings"]["overlap"] == 0.5
    np.testing.assert_allclose(meta["settings"]["spacing"], (2.0, 0.8, 0.9))
    assert not errors(notes)
    # the weights went to the recent list
    assert ckpt.resolve() in [p.resolve() for p in _session.recent_weights()]

    # the user corrects the result: running again adds a second layer, the first stays
    layer.data_setitem((np.array([0]), np.array([0]), np.array([0])), 7)
    first = layer.data.copy()
    assert w.replace_check.isChecked()  # the default: replace unedited results
    with qtbot.waitSignal(w.prediction_added, timeout=RUN_TIMEOUT_MS) as blocker2:
        w.run()
    wait_done(qtbot, w)
    second = blocker2.args[0]
    assert second.name == "ct [V-Net] (2)"
    np.testing.assert_array_equal(layer.data, first)
    assert len(viewer.layers) == n_before + 2

    # the second result is unedited: a third run updates it in place, undo history empty
    second.data = np.zeros_like(second.data)  # to see the new result arrive
    with qtbot.waitSignal(w.prediction_added, timeout=RUN_TIMEOUT_MS) as blocker3:
        w.run()
    wait_done(qtbot, w)
    assert blocker3.args[0] is second and len(viewer.layers) == n_before + 2
    np.testing.assert_array_equal(second.data, first_result)
    assert len(second._undo_history) == 0
    assert second.metadata["napari_vnet"]["model"] == "vnet"
    np.testing.assert_array_equal(layer.data, first)  # the corrected one untouched

    # replacing switched off: a new layer again
    w.replace_check.setChecked(False)
    with qtbot.waitSignal(w.prediction_added, timeout=RUN_TIMEOUT_MS) as blocker4:
        w.run()
    wait_done(qtbot, w)
    assert blocker4.args[0].name == "ct [V-Net] (3)"
    assert len(viewer.layers) == n_before + 3


def test_flipped_oblique_image_overlays_exactly(qtbot, dock, ckpt):
    viewer, w = dock
    angle = np.deg2rad(20)
    rot = np.array(
        [[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]]
    )
    flip = np.diag([-1.0, 1.0, -1.0])
    affine = np.eye(4)
    affine[:3, :3] = rot @ flip
    affine[:3, 3] = (12.0, -3.0, 7.5)
    image = viewer.add_image(volume((20, 18, 22)), name="oblique", scale=(1.5, 1, 1), affine=affine)
    assert w.select_weights(ckpt)
    w.set_image_layer(image)
    with qtbot.waitSignal(w.prediction_added, timeout=RUN_TIMEOUT_MS) as blocker:
        w.run()
    wait_done(qtbot, w)
    layer = blocker.args[0]
    np.testing.assert_allclose(
        layer._data_to_world.affine_matrix, image._data_to_world.affine_matrix
    )
    # a voxel corner maps to the same world point in both layers
    corner = np.array([19.0, 0.0, 21.0])
    np.testing.assert_allclose(layer.data_to_world(corner), image.data_to_world(corner), atol=1e-9)
    np.testing.assert_allclose(layer.metadata["napari_vnet"]["settings"]["spacing"], (1.5, 1, 1))


def test_cancel_adds_nothing_and_changes_nothing(qtbot, dock, ckpt, notes):
    viewer, w = dock
    viewer.add_image(volume((64, 48, 48)), name="big")
    edited = viewer.add_labels(np.zeros((64, 48, 48), np.uint8), name="my edits")
    edited.data[3:5, 3:5, 3:5] = 2
    before_data = edited.data.copy()
    names = [lyr.name for lyr in viewer.layers]
    assert w.select_weights(ckpt)
    w.overlap.value = 0.75  # many windows: the run lasts long enough to be cancelled
    w.run()
    qtbot.waitUntil(lambda: w._progress[0] >= 1, timeout=RUN_TIMEOUT_MS)
    assert w.is_running
    w.run_button.click()  # the Run button is Cancel while running
    wait_done(qtbot, w)
    assert [lyr.name for lyr in viewer.layers] == names
    np.testing.assert_array_equal(edited.data, before_data)
    assert not errors(notes)
    assert any("cancelled" in m.lower() for _, m in notes)
    assert w.run_button.text() == "Run" and w.run_button.isEnabled()


def test_worker_quit_also_cancels(qtbot, dock, ckpt):
    viewer, w = dock
    viewer.add_image(volume((64, 48, 48)), name="big")
    assert w.select_weights(ckpt)
    w.overlap.value = 0.75
    worker = w.run()
    qtbot.waitUntil(lambda: w._progress[0] >= 1, timeout=RUN_TIMEOUT_MS)
    job = w._job
    worker.quit()
    wait_done(qtbot, w)
    assert not job.alive
    assert len(viewer.layers) == 1


def test_weights_broken_after_choosing_fail_in_the_worker(qtbot, dock, ckpt, notes):
    viewer, w = dock
    viewer.add_image(volume(), name="ct")
    assert w.select_weights(ckpt)
    ckpt.write_bytes(b"not a checkpoint at all")  # replaced on disk after choosing
    w.run()
    wait_done(qtbot, w)
    assert len(viewer.layers) == 1
    errs = errors(notes)
    assert errs and "tiny_vnet.pt" in errs[-1]
    # the viewer keeps working
    viewer.add_points([[1, 2, 3]])
    assert len(viewer.layers) == 2


def test_nan_image_gives_an_error_and_no_layer(qtbot, dock, ckpt, notes):
    viewer, w = dock
    viewer.add_image(np.full((16, 16, 16), np.nan, np.float32), name="broken")
    assert w.select_weights(ckpt)
    w.run()
    wait_done(qtbot, w)
    assert len(viewer.layers) == 1
    assert any("NaN" in m for m in errors(notes))


def test_run_during_cancel_starts_when_the_cancelled_run_stopped(qtbot, dock, ckpt):
    viewer, w = dock
    viewer.add_image(volume((64, 48, 48)), name="big")
    assert w.select_weights(ckpt)
    w.overlap.value = 0.75
    first = w.run()
    qtbot.waitUntil(lambda: w._progress[0] >= 1, timeout=RUN_TIMEOUT_MS)
    w.cancel()
    assert w.run() is None  # queued behind the cancelling run (e.g. the Scans dock)
    qtbot.waitUntil(lambda: w.worker is not None and w.worker is not first, timeout=RUN_TIMEOUT_MS)
    w.cancel()  # and this one can be cancelled too
    wait_done(qtbot, w)
    assert len(viewer.layers) == 1


def test_result_dropped_when_the_image_shows_other_data(qtbot, dock, ckpt, notes):
    """The Scans dock reuses the image layer for the next scan: a run started on the
    previous scan must not land on it."""
    viewer, w = dock
    image = viewer.add_image(volume(), name="scan")
    assert w.select_weights(ckpt)
    n_before = len(viewer.layers)
    w.run()
    image.data = volume()[::-1].copy()  # the next scan, before the run could return
    wait_done(qtbot, w)
    assert len(viewer.layers) == n_before
    assert any("result was dropped" in m for _s, m in notes)
    assert not errors(notes)
