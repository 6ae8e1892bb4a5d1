"""What the user corrected, per label and region, not whole slices (no Qt).

The record of :mod:`napari_vnet.training.annotations` lists the slices the user edited or marked
reviewed. An edited slice also says *what* was edited::

    {"axis": 0, "slices": [3, 4, 17], "reviewed": [17],
     "edits": {"3": {"labels": [5], "changed": [[1040, 12], [1552, 14]]},
               "4": {"labels": [5, 1], "changed": [[...]]}}}

``labels``: the label values the user painted with, and those whose voxels the user
erased (0 is not listed; a label merely painted over is not: those voxels are in
``changed``); ``changed``: the voxels the edits changed on that slice, as runs ``[start,
length]`` of the slice's C-order flat index. A slice listed in ``slices`` without an
``edits`` entry, or listed in ``reviewed``, counts whole (the user checked all of it;
records written before edits were recorded read the same way).

:func:`training_mask` turns the record into the voxels training learns from: on an
edited slice, the touched labels' voxels, the changed voxels, and a band of unlabelled
voxels around them (the boundary the user looked at while correcting); the voxels of
labels the user did not touch on that slice (an organ still as predicted) do not count.
:func:`training_weights` weighs them instead: 1 on those voxels, ``uncorrected_weight``
on the voxels of the same slices the user left as predicted (kept at a small weight, so
the model keeps what it said there but trusts the corrections much more), 0 elsewhere.

:class:`EditLog` keeps the record of one layer's edits *undo-safe*: it remembers each
voxel's value before this session first changed it, so the record follows the labels as
they are - an undone or painted-back stroke leaves no correction behind.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "BAND_VOXELS",
    "EditLog",
    "EditRecorder",
    "decode_runs",
    "encode_runs",
    "slice_region",
    "training_mask",
    "training_regions",
    "training_weights",
]

#: width (in-plane voxels) of the band of unlabelled voxels around a corrected label that
#: counts as reviewed background
BAND_VOXELS = 6


def encode_runs(flat: np.ndarray) -> list[list[int]]:
    """Sorted unique flat indices -> ``[[start, length], ...]``."""
    flat = np.unique(np.asarray(flat, np.int64))
    if not flat.size:
        return []
    breaks = np.flatnonzero(np.diff(flat) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [flat.size]])
    return [[int(flat[a]), int(b - a)] for a, b in zip(starts, stops, strict=True)]


def decode_runs(runs, size: int) -> np.ndarray:
    """``[[start, length], ...]`` -> a bool vector of ``size`` (runs outside are cut)."""
    out = np.zeros(size, bool)
    for start, length in runs or []:
        a, b = max(int(start), 0), min(int(start) + int(length), size)
        if a < b:
            out[a:b] = True
    return out


def slice_region(plane: np.ndarray, edit: dict[str, Any], band: int = BAND_VOXELS) -> np.ndarray:
    """The voxels of one edited slice that count: the touched labels' voxels and the
    changed voxels, with a band of ``band`` voxels around them where nothing or a touched
    label is (never the voxels of a label the user left as it was)."""
    touched = np.isin(plane, [int(v) for v in edit.get("labels", []) if int(v) != 0])
    changed = decode_runs(edit.get("changed"), plane.size).reshape(plane.shape)
    region = touched | changed
    if band > 0 and region.any():
        from scipy.ndimage import maximum_filter

        near = maximum_filter(region, size=2 * int(band) + 1)
        region |= near & ((plane == 0) | touched)
    return region


def _entries(record: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not record:
        return []
    return [e for e in [record, *record.get("more", [])] if "axis" in e and e.get("slices")]


def training_regions(
    labels: np.ndarray, record: dict[str, Any] | None, band: int = BAND_VOXELS
) -> tuple[np.ndarray, np.ndarray] | None:
    """``(listed, corrected)`` voxels of ``labels`` under ``record``: every voxel of the
    slices it lists, and of those the voxels the user corrected or reviewed
    (:func:`training_mask`); None when the record lists nothing."""
    entries = _entries(record)
    if not entries:
        return None
    labels = np.asarray(labels)
    listed = np.zeros(labels.shape, bool)
    corrected = np.zeros(labels.shape, bool)
    for e in entries:
        axis = int(e["axis"])
        edits, reviewed = e.get("edits") or {}, {int(s) for s in e.get("reviewed", [])}
        for s in sorted({int(s) for s in e["slices"]}):
            if not 0 <= s < labels.shape[axis]:
                continue
            index: list[Any] = [slice(None)] * labels.ndim
            index[axis] = s
            key = tuple(index)
            listed[key] = True
            edit = edits.get(str(s))
            if edit is None or s in reviewed:
                corrected[key] = True
            else:
                corrected[key] |= slice_region(labels[key], edit, band)
    return listed, corrected


def training_mask(
    labels: np.ndarray, record: dict[str, Any] | None, band: int = BAND_VOXELS
) -> np.ndarray | None:
    """The voxels of ``labels`` that training learns from under ``record`` (see the
    module docstring), or None when the record lists nothing."""
    regions = training_regions(labels, record, band)
    return None if regions is None else regions[1]


def training_weights(
    labels: np.ndarray,
    record: dict[str, Any] | None,
    uncorrected_weight: float,
    band: int = BAND_VOXELS,
) -> np.ndarray | None:
    """Per-voxel loss weights (float32) under ``record``: 1 where the user corrected or
    reviewed (:func:`training_mask`), ``uncorrected_weight`` on the other voxels of the
    slices the record lists (labels left as predicted), 0 elsewhere; None when the record
    lists nothing. ``uncorrected_weight`` 0 trains on the corrections only, 1 on the
    edited slices whole."""
    regions = training_regions(labels, record, band)
    if regions is None:
        return None
    listed, corrected = regions
    out = np.where(listed, np.float32(uncorrected_weight), np.float32(0.0))
    out[corrected] = 1.0
    return out


class EditLog:
    """The edits of one layer in this session, as values before the first change.

    ``pristine[axis]``: ``(flat indices, values)`` of every voxel an edit seen while
    looking along ``axis`` changed, with its value before the first such edit. The
    edits per slice are what differs now (:meth:`edits`), so undoing, redoing or
    painting back is followed exactly.
    """

    def __init__(self, shape: tuple[int, ...]):
        self.shape = tuple(int(s) for s in shape)
        self.pristine: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def add_atom(self, atom, axis: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Take in one napari undo-history atom (``_MaskedPaintAtom`` or the
        ``(indices, old values, new values)`` of ``data_setitem``); returns its
        ``(flat indices, new values)`` (napari emits the atom before writing them)."""
        found = _atom_voxels(atom, self.shape)
        if found is None:
            return None
        flat, old, after = found
        if not flat.size:
            return None
        idx, val = self.pristine.get(axis, (np.empty(0, np.int64), np.empty(0, old.dtype)))
        flat, first = np.unique(flat, return_index=True)  # an atom's first old value
        old = old[first]
        new = ~np.isin(flat, idx, assume_unique=True)
        idx = np.concatenate([idx, flat[new]])
        val = np.concatenate([val.astype(np.result_type(val, old)), old[new]])
        order = np.argsort(idx, kind="stable")
        self.pristine[axis] = (idx[order], val[order])
        return found[0], after

    def edits(self, data, axis: int, pending=()) -> dict[int, dict[str, Any]]:
        """``{slice: {"labels", "changed"}}`` of the voxels along ``axis`` that differ
        from their values before this session's edits; ``pending``: ``(flat indices,
        new values)`` of edits not yet written into ``data``, in order."""
        idx, val = self.pristine.get(axis, (np.empty(0, np.int64), None))
        if not idx.size:
            return {}
        coords = np.unravel_index(idx, self.shape)
        now = np.array(data[coords])
        for flat, after in pending:
            at = np.searchsorted(idx, flat)
            ok = (at < idx.size) & (idx[np.minimum(at, idx.size - 1)] == flat)
            now[at[ok]] = np.broadcast_to(after, flat.shape)[ok]
        diff = now != val
        if not diff.any():
            return {}
        plane = tuple(s for a, s in enumerate(self.shape) if a != axis)
        where = [c[diff] for c in coords]
        slices = where[axis]
        in_plane = np.ravel_multi_index(tuple(w for a, w in enumerate(where) if a != axis), plane)
        before, after = val[diff], now[diff]
        out: dict[int, dict[str, Any]] = {}
        order = np.argsort(slices, kind="stable")
        slices, in_plane, before, after = (
            slices[order],
            in_plane[order],
            before[order],
            after[order],
        )
        bounds = np.flatnonzero(np.diff(slices)) + 1
        for part in np.split(np.arange(slices.size), bounds):
            b, a = before[part], after[part]
            values = np.union1d(a, b[a == 0])  # painted labels, and erased ones
            out[int(slices[part[0]])] = {
                "labels": [int(v) for v in values if v != 0],
                "changed": encode_runs(in_plane[part]),
            }
        return out


def merge_edits(base: dict[str, Any], new: dict[str, Any], plane_size: int) -> dict[str, Any]:
    """One slice's edits from before this session and from it, together."""
    labels = sorted({int(v) for v in base.get("labels", [])} | {int(v) for v in new["labels"]})
    changed = decode_runs(base.get("changed"), plane_size) | decode_runs(new["changed"], plane_size)
    return {"labels": labels, "changed": encode_runs(np.flatnonzero(changed))}


class EditRecorder:
    """Keeps a Labels layer's record following its edits, undo-safe (the napari events
    are wired by the GUI's ``EditTracker``; this part is plain data).

    :meth:`take` gets the undo-history atoms of an edit; :meth:`update` writes what
    differs now into the record (also after an undo or redo); :meth:`reset` forgets the
    session when the layer gets new data (another scan, a new prediction).
    """

    def __init__(self, layer):
        self.layer = layer
        self.reset()

    def reset(self) -> None:
        self.log = EditLog(tuple(self.layer.data.shape))
        self.pending: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        # (axis, slice) -> how the record held the slice before this session touched it
        self.bases: dict[tuple[int, int], Any] = {}

    def take(self, atoms, axis: int) -> None:
        from napari_vnet.training.annotations import slice_state, touched_slices

        shape = tuple(self.layer.data.shape)
        if shape != self.log.shape:
            self.reset()
        for atom in atoms:
            for s in touched_slices(atom, axis, shape):
                if (axis, s) not in self.bases:
                    self.bases[(axis, s)] = slice_state(self.layer.metadata, axis, s)
            written = self.log.add_atom(atom, axis)
            if written is not None:
                self.pending.setdefault(axis, []).append(written)

    def update(self) -> bool:
        """Write this session's edits into the record; True when it changed."""
        from napari_vnet.training.annotations import WHOLE, apply_edits

        changed = False
        for axis in sorted({a for a, _ in self.bases}):
            session = self.log.edits(self.layer.data, axis, self.pending.get(axis, ()))
            plane = int(np.prod([n for a, n in enumerate(self.log.shape) if a != axis]))
            updates: dict[int, Any] = {}
            for (a, s), base in self.bases.items():
                if a != axis:
                    continue
                new = session.get(s)
                if base == WHOLE or new is None:
                    updates[s] = base
                else:
                    updates[s] = new if base is None else merge_edits(base, new, plane)
            changed |= apply_edits(self.layer, axis, updates)
        self.pending = {}
        return changed


def _atom_voxels(atom, shape) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(flat indices, old values, new values)`` of the voxels one undo-history atom
    changed."""
    key = getattr(atom, "slice_key", None)
    if key is not None:
        if len(key) != len(shape) or not all(isinstance(s, slice) for s in key):
            return None
        box = [np.arange(*s.indices(n)) for s, n in zip(key, shape, strict=True)]
        grid = np.meshgrid(*box, indexing="ij")
        mask = getattr(atom, "mask", None)
        if mask is not None and np.shape(mask) == grid[0].shape:
            coords = tuple(g[mask] for g in grid)
        else:
            coords = tuple(g.ravel() for g in grid)
        old = np.asarray(atom.old_values).ravel()
        if old.size == 1 and coords[0].size != 1:
            old = np.full(coords[0].size, old[0], old.dtype)
        if old.size != coords[0].size:
            return None
        new = np.broadcast_to(np.asarray(atom.new_value), old.shape).ravel()
        return np.ravel_multi_index(coords, shape).astype(np.int64), old, new
    try:
        indices, old, new = atom
        coords = tuple(np.asarray(i).ravel() for i in indices)
        old = np.broadcast_to(np.asarray(old), coords[0].shape).ravel()
        new = np.broadcast_to(np.asarray(new), coords[0].shape).ravel()
        return np.ravel_multi_index(coords, shape).astype(np.int64), old, new
    except (TypeError, ValueError, IndexError):
        return None
