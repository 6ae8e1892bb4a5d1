"""Which slices of a Labels layer has the user edited or reviewed? The GUI half.

The record lives in the layer's metadata, so it travels with the layer (the scan browser
saves and restores it with its autosaves)::

    layer.metadata["annotated_slices"] = {"axis": 0, "slices": [3, 4, 17]}

``axis`` is a data axis of the layer; ``slices`` are sorted indices along it. When the
user also edits while looking along another axis, those slices go to an optional
``"more": [{"axis": 1, "slices": [...]}, ...]`` list. The record and its functions are
core (:mod:`napari_vnet.training.annotations`, re-exported here); this module adds the parts that
need napari and Qt.

:class:`EditTracker` keeps the record up to date by listening to the layer's ``paint``
event, which napari emits once per brush stroke, fill or polygon (and for
``data_setitem``) with the undo-history atoms of the edit; each atom says which voxels
changed, so the slices are exact, not guessed from the viewer position. Edits made
before the tracker was attached are recovered from the layer's undo history. Each edited
slice also records the labels and voxels its edits changed
(:class:`napari_vnet.training.annotation_regions.EditRecorder`): training learns from those, not
from the labels left as predicted on the same slice. The record follows undo and redo
(napari's ``set_data`` event) and starts afresh when the layer gets new data.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import numpy as np
from qtpy.QtCore import QObject, Signal

# the record itself is core (no Qt): the training child reads it
from napari_vnet.training.annotations import (  # noqa: F401 - re-exported for the docks
    KEY,
    add_slices,
    annotated_mask,
    count_annotated,
    records,
    remove_slices,
    touched_slices,
    training_mask,
)

logger = logging.getLogger(__name__)


#: ids of the layers being written by the plugin itself (not the user's edits)
_NOT_EDITS: set[int] = set()


@contextmanager
def not_user_edits(layer):
    """Changes written to ``layer`` inside are not the user's (e.g. Propagate's new
    prediction): edit trackers leave them out of the record; napari's undo still has them."""
    _NOT_EDITS.add(id(layer))
    try:
        yield
    finally:
        _NOT_EDITS.discard(id(layer))


def is_user_edit(layer) -> bool:
    """False while :func:`not_user_edits` writes to ``layer``."""
    return id(layer) not in _NOT_EDITS


def viewing_axis(layer, default: int = 0) -> int:
    """The data axis the user slices through (the first one not displayed)."""
    try:
        nd = list(layer._slice_input.not_displayed)
    except AttributeError:  # pragma: no cover - napari internals moved
        nd = []
    if len(nd) == 0:  # 3D rendering: keep the axis already in use
        rec = layer.metadata.get(KEY) or {}
        return int(rec.get("axis", default))
    return int(nd[-1])  # for 4D (t, z, y, x) the spatial slicing axis is the last one


def current_slice(layer, viewer, axis: int) -> int:
    """Index along data ``axis`` of the slice the viewer shows for ``layer``."""
    point = layer.world_to_data(viewer.dims.point[-layer.ndim :])
    return int(np.clip(np.round(point[axis]), 0, layer.data.shape[axis] - 1))


class EditTracker(QObject):
    """Records the slices of one Labels layer changed by painting, filling or erasing.

    ``changed`` is emitted with the layer after the record grows.
    """

    changed = Signal(object)

    def __init__(self, layer, parent: QObject | None = None):
        super().__init__(parent)
        from napari_vnet.training.annotation_regions import EditRecorder

        self.layer = layer
        self.recorder = EditRecorder(layer)
        layer.events.paint.connect(self._on_paint)
        layer.events.set_data.connect(self._on_set_data)  # undo, redo
        layer.events.data.connect(self._on_new_data)  # layer.data = ...
        self._record(_past_atoms(layer))

    def _record(self, atoms) -> None:
        atoms = list(atoms)
        if atoms:
            self.recorder.take(atoms, viewing_axis(self.layer))
        self._update()

    def _update(self) -> None:
        if self.recorder.update():
            try:
                self.changed.emit(self.layer)
            except RuntimeError:  # the dock that owned this tracker was deleted
                self.disconnect_layer()

    def disconnect_layer(self) -> None:
        for emitter, slot in (
            (self.layer.events.paint, self._on_paint),
            (self.layer.events.set_data, self._on_set_data),
            (self.layer.events.data, self._on_new_data),
        ):
            try:
                emitter.disconnect(slot)
            except (TypeError, ValueError, RuntimeError):  # already gone
                pass

    def _on_paint(self, event) -> None:
        if is_user_edit(self.layer):
            self._record(event.value or [])

    def _on_set_data(self, _event=None) -> None:
        if self.recorder.bases:  # an undo or redo of this session's edits
            self._update()

    def _on_new_data(self, _event=None) -> None:
        self.recorder.reset()


def _past_atoms(layer) -> list:
    """Edits made before tracking started, from the layer's undo history (napari keeps
    one; undone edits are not in it). Best effort: empty if napari's internals differ."""
    history = getattr(layer, "_undo_history", None)
    try:
        return [atom for item in history or [] for atom in item]
    except TypeError:  # pragma: no cover - napari internals moved
        return []
