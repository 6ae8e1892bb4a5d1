"""Edit tracking on Labels layers: which slices were painted, filled or marked reviewed."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from napari.layers import Labels

from napari_vnet._widgets import _edits


@pytest.fixture
def labels(qapp):  # pytest-qt's session QApplication (the tracker is a QObject)
    layer = Labels(np.zeros((12, 20, 24), np.uint8), scale=(2.5, 1.0, 1.0))
    tracker = _edits.EditTracker(layer)
    yield layer, tracker
    tracker.disconnect_layer()


def slices(layer):
    rec = layer.metadata.get(_edits.KEY)
    return None if rec is None else (rec["axis"], rec["slices"])


def changed_z(before, after):
    return set(np.flatnonzero((before != after).any(axis=(1, 2))).tolist())


def test_brush_stroke_records_its_slice_and_signals(labels):
    layer, tracker = labels
    seen = []
    tracker.changed.connect(seen.append)
    layer.paint((7, 10, 10), 1)  # data coordinates
    assert slices(layer) == (0, [7])
    assert seen == [layer]
    layer.paint((3, 4, 4), 2)
    layer.paint((7, 15, 15), 1)  # same slice again: no duplicate
    assert slices(layer) == (0, [3, 7])


def test_fill_and_erase_are_edits_too(labels):
    layer, _ = labels
    layer.fill((5, 0, 0), 3)  # the whole (empty) slice 5 becomes 3
    assert (layer.data[5] == 3).all() and not layer.data[4].any()
    assert slices(layer) == (0, [5])
    layer.paint((9, 5, 5), 0)  # erasing background: nothing changes, nothing recorded
    assert slices(layer) == (0, [5])
    layer.paint((5, 5, 5), 0)  # erasing a label is a correction
    assert slices(layer) == (0, [5])
    layer.data_setitem((np.array([1, 11]), np.array([2, 2]), np.array([3, 3])), 4)
    assert slices(layer) == (0, [1, 5, 11])


def test_3d_brush_records_every_slice_it_changed(labels):
    layer, _ = labels
    layer.n_edit_dimensions = 3
    layer.brush_size = 5
    before = layer.data.copy()
    layer.paint((6, 10, 10), 1)
    touched = changed_z(before, layer.data)
    assert len(touched) > 1  # the ball spans several slices
    assert set(slices(layer)[1]) == touched


@settings(max_examples=40, deadline=None)
@given(
    strokes=st.lists(
        st.tuples(
            st.integers(0, 11),
            st.integers(0, 19),
            st.integers(0, 23),
            st.integers(0, 3),
            st.integers(1, 6),
            st.booleans(),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_record_is_exactly_the_slices_edits_changed(qapp, strokes):
    """Property: after any strokes the record equals the slices that differ from the
    labels before them (a stroke painted back to what was there is no correction)."""
    layer = Labels(np.zeros((12, 20, 24), np.uint8))
    tracker = _edits.EditTracker(layer)
    initial = layer.data.copy()
    for z, y, x, value, size, ball in strokes:
        layer.n_edit_dimensions = 3 if ball else 2
        layer.brush_size = size
        layer.paint((z, y, x), value)
    expected = changed_z(initial, layer.data)
    got = slices(layer)
    assert (set(got[1]) if got else set()) == expected
    tracker.disconnect_layer()


def test_mark_and_unmark_and_other_axes_union(labels):
    layer, _ = labels
    assert _edits.add_slices(layer, 0, [4, 2])
    assert not _edits.add_slices(layer, 0, [4])  # already there
    assert _edits.add_slices(layer, 2, [7])  # reviewed while looking along x
    assert _edits.count_annotated(layer.metadata) == 3
    assert _edits.records(layer.metadata) == [(0, [2, 4]), (2, [7])]
    json.dumps(layer.metadata[_edits.KEY])  # plain data: the scan browser autosaves it
    mask = _edits.annotated_mask(layer.data.shape, layer.metadata)
    assert mask[2].all() and mask[4].all() and mask[:, :, 7].all()
    assert mask.sum() == 2 * 20 * 24 + 12 * 20 - 2 * 20
    assert _edits.remove_slices(layer, 0, [4])
    assert _edits.remove_slices(layer, 2, [7])
    assert _edits.records(layer.metadata) == [(0, [2])]
    assert not _edits.remove_slices(layer, 1, [3])
    assert _edits.annotated_mask((3, 3, 3), {}) is None


def test_out_of_range_slices_are_ignored(labels):
    layer, _ = labels
    assert not _edits.add_slices(layer, 0, [12, -1])
    assert slices(layer) is None


def test_metadata_event_fires_so_other_docks_can_follow(labels):
    layer, _ = labels
    events = []
    layer.events.metadata.connect(lambda e: events.append(e))
    layer.paint((2, 3, 3), 1)
    assert events, "the record must be set by assignment so napari emits metadata"


def test_edits_made_before_tracking_are_recovered_from_undo_history(qapp):
    layer = Labels(np.zeros((6, 8, 8), np.uint8))
    layer.paint((1, 3, 3), 1)
    layer.paint((4, 3, 3), 2)
    layer.undo()  # an undone edit is not a correction
    tracker = _edits.EditTracker(layer)
    assert slices(layer) == (0, [1])
    tracker.disconnect_layer()
