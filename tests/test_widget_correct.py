"""The "Correct" dock in a real napari viewer: each tool changes the Labels layer as its
core function says, napari's undo restores it, edited slices are recorded; the Segment
dock's uncertainty layer drives "Next uncertain", which skips reviewed slices."""

from __future__ import annotations

import napari  # noqa: F401
import numpy as np
import pytest

import test_widget_segment_support as support
from napari_vnet._widgets.correct import KEY_NEXT, CorrectWidget
from napari_vnet._widgets.segment import SegmentWidget
from napari_vnet.correct import Scope, tools
from napari_vnet.training import annotations
from test_widget_segment_support import RUN_TIMEOUT_MS, errors, volume, wait_done

ckpt = support.ckpt

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("config_dir")]


@pytest.fixture
def correct(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = CorrectWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Correct")
    return viewer, widget


def scene(viewer):
    """An image with a bright organ (100) on a dark background, and labels: the organ on
    slices 1 and 5 (label 2), a stray island on slice 3 and a hole on slice 1."""
    image = np.zeros((7, 24, 24), np.int16)
    image[:, 4:16, 4:16] = 100
    image[:, 18:22, 18:22] = 300  # bright bone, out of the organ's range
    lab = np.zeros((7, 24, 24), np.uint8)
    lab[[1, 5], 4:16, 4:16] = 2
    lab[1, 8:10, 8:10] = 0
    lab[3, 20, 2] = 2
    img_layer = viewer.add_image(image, name="ct", scale=(2.0, 1.0, 1.0))
    lab_layer = viewer.add_labels(lab, name="ct labels", scale=(2.0, 1.0, 1.0))
    return img_layer, lab_layer


def set_z(viewer, z):
    viewer.dims.set_point(0, z * 2.0)


def test_tools_change_undo_and_record_slices(correct):
    viewer, w = correct
    _, layer = scene(viewer)
    assert w.labels_layer is layer and w.image.value.name == "ct"
    w.label.value = 2
    original = layer.data.copy()

    # fill holes on the current slice (1): one undo step, slice 1 recorded
    set_z(viewer, 1)
    w.scope.value = "slice"
    assert w.apply_tool("fill_holes") == 4
    assert (layer.data[1, 4:16, 4:16] == 2).all()
    assert annotations.records(layer.metadata) == [(0, [1])]
    layer.undo()
    assert np.array_equal(layer.data, original)

    # remove islands over the whole volume (the 1-voxel island = 2 mm^3)
    w.scope.value = "volume"
    w.min_mm3.value = 5.0
    assert w.apply_tool("remove_islands") == 1 and layer.data[3, 20, 2] == 0
    # fill between slices 1 and 5 (the slices holding the label on a range 0..6; the
    # edited slices 1 and 3 would be the keys: forget them first)
    assert annotations.records(layer.metadata) == [(0, [1, 3])]
    annotations.remove_slices(layer, 0, [1, 3])
    w.scope.value = "range"
    w.first.value, w.last.value = 0, 6
    expect = original.copy()
    expect[3, 20, 2] = 0
    tools.fill_between(expect, 2, Scope(0, 0, 7), spacing=(2.0, 1.0, 1.0)).apply(expect)
    assert w.apply_tool("fill_between") > 0
    assert np.array_equal(layer.data, expect)
    assert (layer.data[2:5, 4:16, 4:16] == 2).sum() >= 3 * (144 - 4)
    assert annotations.records(layer.metadata)[0][1] == [2, 3, 4]
    layer.undo()
    layer.undo()
    assert np.array_equal(layer.data, original)


def test_grow_clip_and_brush_within_range(qtbot, correct):
    viewer, w = correct
    _, layer = scene(viewer)
    w.label.value = 2
    layer.data[2] = 0
    layer.data[2, 10, 10] = 2  # a one-voxel scribble in the organ
    set_z(viewer, 2)
    w.scope.value = "slice"
    w.lo.value, w.hi.value = 50, 150
    before = layer.data.copy()
    w.apply_tool("grow")
    assert (layer.data[2, 4:16, 4:16] == 2).all() and (layer.data[2] == 2).sum() == 144
    layer.undo()
    assert np.array_equal(layer.data, before)

    # clip: paint the bone with the label, then clip it away
    layer.data[2, 18:22, 18:22] = 2
    assert w.apply_tool("restrict") == 16 and not (layer.data[2, 18:22, 18:22] == 2).any()

    # the brush within range: a stroke over organ and bone keeps only the organ part
    w.brush_in_range.value = True
    layer.selected_label = 2
    layer.brush_size = 3
    start = layer.data.copy()
    layer.paint((4, 15, 15), 2)  # the organ's corner (in range)
    qtbot.wait(50)
    layer.paint((4, 19, 19), 2)  # the bone (out of range)
    qtbot.wait(50)
    assert layer.data[4, 15, 15] == 2 and layer.data[4, 19, 19] == 0
    assert not (layer.data[4, 18:22, 18:22] == 2).any()
    layer.undo()  # the bone stroke and its correction: one step
    layer.undo()
    assert np.array_equal(layer.data, start)


def test_uncertainty_layer_and_next_uncertain(qtbot, make_napari_viewer, ckpt, notes):
    viewer = make_napari_viewer()
    seg = SegmentWidget(viewer)
    viewer.window.add_dock_widget(seg, name="Segment volume")
    viewer.add_image(volume(), name="ct", scale=(2.0, 1.0, 1.0))
    assert seg.select_weights(ckpt)
    seg.uncertainty.value = True
    with qtbot.waitSignal(seg.prediction_added, timeout=RUN_TIMEOUT_MS) as blocker:
        seg.run()
    wait_done(qtbot, seg)
    labels = blocker.args[0]
    unc = viewer.layers[f"{labels.name} uncertainty"]
    assert unc.data.dtype == np.uint8 and unc.data.shape == labels.data.shape
    assert unc.data.max() > 0
    np.testing.assert_allclose(unc.scale, labels.scale)
    assert seg.image.value.name == "ct"  # the uncertainty map is no image to segment
    assert not errors(notes)

    w = CorrectWidget(viewer)
    viewer.window.add_dock_widget(w, name="Correct")
    w.labels.value = labels
    scores = unc.data.astype(float).mean(axis=(1, 2))
    order = [int(i) for i in np.argsort(-scores, kind="stable")]
    assert w.next_uncertain() == order[0]
    assert round(viewer.dims.point[0] / 2.0) == order[0]
    # the user edits that slice: it is reviewed; the next one is the second most uncertain
    labels.data_setitem((np.array([order[0]]), np.array([0]), np.array([0])), 1)
    annotations.add_slices(labels, 0, [order[0]])
    # the key binding goes the same way
    bound = [f for k, f in viewer.keymap.items() if str(k).replace("+", "-") == KEY_NEXT]
    assert bound
    bound[0](viewer)
    assert round(viewer.dims.point[0] / 2.0) == order[1]
    assert w.previous_uncertain() is None  # the first visited was reviewed
    assert w.next_uncertain() == order[2]


def test_correct_dock_from_the_plugin_menu(make_napari_viewer):
    viewer = make_napari_viewer()
    _, dock = viewer.window.add_plugin_dock_widget("napari-vnet", "Correct")
    assert isinstance(dock.content, CorrectWidget)
    assert set(dock.buttons) == {"fill_between", "remove_islands", "keep_largest",
                                 "fill_holes", "smooth", "restrict", "grow"}  # fmt: skip
