"""The Correct dock's "Propagate corrections" in a real napari viewer: disabled with a
reason until a slice is edited; a run in the training child process keeps every edited
voxel, leaves the edit record alone and is one napari undo step; Cancel changes nothing."""

from __future__ import annotations

import napari  # noqa: F401
import numpy as np
import pytest

import test_widget_segment_support as support
from napari_vnet._widgets.correct import CorrectWidget
from napari_vnet.training import annotations
from test_widget_segment_support import volume

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("config_dir")]
TIMEOUT_MS = 180_000
EDITED = 12


@pytest.fixture
def scene(make_napari_viewer, tmp_path):
    """A viewer with an image, a Labels layer "made by" tiny weights, and the dock."""
    viewer = make_napari_viewer()
    weights = support.save_tiny(tmp_path / "tiny_unet.pt", arch="unet3d")
    image = volume()
    viewer.add_image(image, name="ct", scale=(2.0, 1.0, 1.0))
    labels = np.zeros(image.shape, np.uint8)
    labels[8:16, 8:20, 6:14] = 1
    layer = viewer.add_labels(labels, name="ct labels", scale=(2.0, 1.0, 1.0),
                              metadata={"napari_vnet": {"weights": str(weights)}})  # fmt: skip
    widget = CorrectWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Correct")
    yield viewer, widget, layer
    panel = widget.propagate
    if panel._worker is not None:  # never leave a job running past the test
        panel.cancel()
        panel._worker.await_workers(msecs=TIMEOUT_MS)


def paint_slice(layer):
    """The user paints label 5 over part of slice EDITED (one stroke, one undo step)."""
    idx = np.nonzero(np.ones((1, 10, 10), bool))
    layer.data_setitem((idx[0] + EDITED, idx[1] + 4, idx[2] + 4), 5)


def wait_done(qtbot, panel):
    qtbot.waitUntil(lambda: panel._worker is None, timeout=TIMEOUT_MS)


def test_propagate_keeps_edits_and_undoes_in_one_step(qtbot, scene):
    viewer, w, layer = scene
    panel = w.propagate
    assert w.labels_layer is layer and w.image.value.name == "ct"
    assert not panel.button.isEnabled() and "Correct a slice first" in panel.hint.text()

    paint_slice(layer)
    assert annotations.records(layer.metadata) == [(0, [EDITED])]
    assert panel.button.isEnabled(), panel.hint.text()
    edited_slice = layer.data[EDITED].copy()
    before = layer.data.copy()
    record = layer.metadata[annotations.KEY]
    panel.iterations.setValue(3)
    panel.button.click()
    assert panel._worker is not None and panel.cancel_button.isEnabled()
    assert not panel.button.isEnabled()
    wait_done(qtbot, panel)
    assert "Propagated" in panel.note.text(), panel.note.text()
    assert panel.progress.value() == 100
    kept = annotations.training_mask(before, {annotations.KEY: record})
    assert kept[EDITED, 4:14, 4:14].all()
    assert np.array_equal(layer.data[kept], before[kept])
    assert (layer.data[EDITED, 4:14, 4:14] == 5).all()
    np.testing.assert_array_equal(layer.data[EDITED][kept[EDITED]], edited_slice[kept[EDITED]])
    # the new prediction is no edit of the user's: the record is as it was
    assert layer.metadata[annotations.KEY] == record
    layer.undo()
    assert np.array_equal(layer.data, before)
    assert not panel.cancel_button.isEnabled() and panel.button.isEnabled()


def test_cancel_leaves_the_labels_unchanged(qtbot, scene):
    viewer, w, layer = scene
    panel = w.propagate
    paint_slice(layer)
    before = layer.data.copy()
    panel.iterations.setValue(10000)
    panel.start()
    panel.cancel()
    wait_done(qtbot, panel)
    assert "Cancelled" in panel.note.text(), panel.note.text()
    assert np.array_equal(layer.data, before)


def test_labels_without_weights_say_why(qtbot, scene):
    viewer, w, layer = scene
    other = viewer.add_labels(np.zeros(layer.data.shape, np.uint8), name="drawn")
    w.labels.value = other
    other.data_setitem((np.array([3]), np.array([3]), np.array([3])), 1)
    assert not w.propagate.button.isEnabled()
    assert "no weights to adapt" in w.propagate.hint.text()
