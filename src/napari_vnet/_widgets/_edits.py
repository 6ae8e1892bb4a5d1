"""Which slices of a Labels layer has the user edited or reviewed?

The record lives in the layer's metadata, so it travels with the layer (the scan browser
saves and restores it with its autosaves)::

    layer.metadata["annotated_slices"] = {"axis": 0, "slices": [3, 4, 17]}

``axis`` is a data axis of the layer; ``slices`` are sorted indices along it. When the
user also edits while looking along another axis, those slices go to an optional
``"more": [{"axis": 1, "slices": [...]}, ...]`` list; :func:`annotated_mask` takes the
union of all of them.

:class:`EditTracker` keeps the record up to date by listening to the layer's ``paint``
event, which napari emits once per brush stroke, fill or polygon (and for
``data_setitem``) with the undo-history atoms of the edit; each atom says which voxels
changed, so the slices are exact, not guessed from the viewer position. Edits made
before the tracker was attached are recovered from the layer's undo history.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, Signal

logger = logging.getLogger(__name__)

KEY = "annotated_slices"


# ----------------------------------------------------------------------------- record


def records(metadata: dict[str, Any] | None) -> list[tuple[int, list[int]]]:
    """All ``(axis, sorted slices)`` records in a layer's metadata (empty when none)."""
    rec = (metadata or {}).get(KEY)
    if not rec:
        return []
    out: list[tuple[int, list[int]]] = []
    for r in [rec, *rec.get("more", [])]:
        if "axis" in r and r.get("slices"):
            out.append((int(r["axis"]), sorted({int(s) for s in r["slices"]})))
    return out


def count_annotated(metadata: dict[str, Any] | None) -> int:
    """Number of annotated slices, all axes together."""
    return sum(len(s) for _, s in records(metadata))


def add_slices(layer, axis: int, slices: Iterable[int]) -> bool:
    """Add ``slices`` along data ``axis`` to ``layer``'s record. True when it grew.

    The metadata dict is replaced (not mutated) so napari's metadata event fires.
    """
    new = {int(s) for s in slices if 0 <= int(s) < layer.data.shape[axis]}
    if not new:
        return False
    meta = dict(layer.metadata)
    rec = dict(meta.get(KEY) or {})
    if "axis" not in rec or not rec.get("slices"):
        rec = {"axis": int(axis), "slices": [], **{k: v for k, v in rec.items() if k == "more"}}
    if int(rec["axis"]) == axis:
        target = rec
    else:
        more = [dict(m) for m in rec.get("more", [])]
        target = next((m for m in more if int(m["axis"]) == axis), None)
        if target is None:
            target = {"axis": int(axis), "slices": []}
            more.append(target)
        rec["more"] = more
    before = set(int(s) for s in target["slices"])
    merged = before | new
    if merged == before:
        return False
    target["slices"] = sorted(merged)
    meta[KEY] = rec
    layer.metadata = meta
    return True


def remove_slices(layer, axis: int, slices: Iterable[int]) -> bool:
    """Remove ``slices`` along ``axis`` from the record. True when it shrank."""
    drop = {int(s) for s in slices}
    rec = layer.metadata.get(KEY)
    if not rec:
        return False
    rec = dict(rec)
    changed = False
    entries = [rec, *[dict(m) for m in rec.get("more", [])]]
    for e in entries:
        if int(e.get("axis", -1)) == axis and drop & set(e.get("slices", [])):
            e["slices"] = sorted(set(e["slices"]) - drop)
            changed = True
    if not changed:
        return False
    if len(entries) > 1:
        rec = dict(entries[0])
        rec["more"] = [m for m in entries[1:] if m["slices"]]
        if not rec["more"]:
            del rec["more"]
    meta = dict(layer.metadata)
    meta[KEY] = rec
    layer.metadata = meta
    return True


def annotated_mask(shape: tuple[int, ...], metadata: dict[str, Any] | None) -> np.ndarray | None:
    """Boolean mask of the annotated voxels, or None when nothing is annotated."""
    recs = records(metadata)
    if not recs:
        return None
    mask = np.zeros(shape, dtype=bool)
    for axis, slices in recs:
        idx = [s for s in slices if 0 <= s < shape[axis]]
        sl: list[Any] = [slice(None)] * len(shape)
        sl[axis] = idx
        mask[tuple(sl)] = True
    return mask


# ---------------------------------------------------------------------------- tracker


def touched_slices(atom, axis: int, shape: tuple[int, ...]) -> set[int]:
    """Indices along ``axis`` that one napari undo-history atom changed.

    napari >= 0.6 stores mask-based edits (paint, fill, polygon) as a named tuple with
    ``slice_key`` (bounding box) and ``mask`` (changed voxels in it, or None for all);
    ``data_setitem`` stores ``(indices, old_values, new_values)``.
    """
    key = getattr(atom, "slice_key", None)
    if key is not None:
        s = key[axis]
        start = 0 if s.start is None else int(s.start)
        stop = shape[axis] if s.stop is None else int(s.stop)
        mask = getattr(atom, "mask", None)
        if mask is not None and mask.ndim == len(shape):
            others = tuple(a for a in range(mask.ndim) if a != axis)
            hit = np.flatnonzero(mask.any(axis=others))
            return {start + int(i) for i in hit}
        return set(range(start, stop))
    try:
        indices = atom[0]
        return {int(i) for i in np.unique(np.asarray(indices[axis]))}
    except (TypeError, IndexError, ValueError):
        logger.debug("unrecognised labels history atom %r", type(atom))
        return set()


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
        self.layer = layer
        layer.events.paint.connect(self._on_paint)
        self._record(_past_atoms(layer))

    def _record(self, atoms) -> None:
        layer = self.layer
        axis = viewing_axis(layer)
        shape = tuple(layer.data.shape)
        touched: set[int] = set()
        for atom in atoms:
            touched |= touched_slices(atom, axis, shape)
        if touched and add_slices(layer, axis, touched):
            try:
                self.changed.emit(layer)
            except RuntimeError:  # the dock that owned this tracker was deleted
                self.disconnect_layer()

    def disconnect_layer(self) -> None:
        try:
            self.layer.events.paint.disconnect(self._on_paint)
        except (TypeError, ValueError, RuntimeError):  # already gone
            pass

    def _on_paint(self, event) -> None:
        self._record(event.value or [])


def _past_atoms(layer) -> list:
    """Edits made before tracking started, from the layer's undo history (napari keeps
    one; undone edits are not in it). Best effort: empty if napari's internals differ."""
    history = getattr(layer, "_undo_history", None)
    try:
        return [atom for item in history or [] for atom in item]
    except TypeError:  # pragma: no cover - napari internals moved
        return []
