"""Which slices of a label map has the user edited or reviewed? The record (no Qt).

The record lives in a Labels layer's metadata, so it travels with the layer (the scan
browser saves and restores it with its autosaves, the training child reads it from
there)::

    layer.metadata["annotated_slices"] = {"axis": 0, "slices": [3, 4, 17]}

``axis`` is a data axis of the layer; ``slices`` are sorted indices along it. When the
user also edits while looking along another axis, those slices go to an optional
``"more": [{"axis": 1, "slices": [...]}, ...]`` list; :func:`annotated_mask` takes the
union of all of them. Each entry may also say what was edited on a slice (``"edits"``,
per label and region) and which slices were marked reviewed (``"reviewed"``, counted
whole): :mod:`napari_vnet.training.annotation_regions` turns that into the voxels training learns
from (:func:`training_mask`). The GUI's edit tracker (``_widgets._edits.EditTracker``) keeps the
record up to date from napari's ``paint`` events; everything here is plain data and runs
in the training child process, which never imports Qt.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "KEY",
    "add_slices",
    "annotated_mask",
    "apply_edits",
    "count_annotated",
    "mask_from_record",
    "records",
    "remove_slices",
    "slice_state",
    "touched_slices",
    "training_mask",
]

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


def _copy_record(metadata) -> dict[str, Any]:
    """A deep enough copy of the record to change and assign back."""
    rec = dict((metadata or {}).get(KEY) or {})
    if "edits" in rec:
        rec["edits"] = dict(rec["edits"])
    if "more" in rec:
        rec["more"] = [
            {**m, **({"edits": dict(m["edits"])} if "edits" in m else {})} for m in rec["more"]
        ]
    return rec


def _entry(rec: dict[str, Any], axis: int) -> dict[str, Any]:
    """The (mutable) entry of ``rec`` for ``axis``, created when missing."""
    if "axis" not in rec or not rec.get("slices"):
        keep = {k: v for k, v in rec.items() if k == "more"}
        rec.clear()
        rec.update({"axis": int(axis), "slices": [], **keep})
    if int(rec["axis"]) == axis:
        return rec
    more = rec.setdefault("more", [])
    target = next((m for m in more if int(m["axis"]) == axis), None)
    if target is None:
        target = {"axis": int(axis), "slices": []}
        more.append(target)
    return target


def _store(layer, rec: dict[str, Any]) -> bool:
    """Tidy ``rec`` (empty parts dropped) and assign it, so napari's metadata event
    fires. True when it differs from the record there."""
    for e in [rec, *rec.get("more", [])]:
        listed = {int(s) for s in e.get("slices", [])}
        if "edits" in e:
            e["edits"] = {k: v for k, v in sorted(e["edits"].items()) if int(k) in listed}
        if "reviewed" in e:
            e["reviewed"] = sorted({int(s) for s in e["reviewed"]} & listed)
        for key in ("edits", "reviewed"):
            if key in e and not e[key]:
                del e[key]
    if "more" in rec:
        rec["more"] = [m for m in rec["more"] if m.get("slices")]
        if not rec["more"]:
            del rec["more"]
    if rec.get("more") and not rec.get("slices"):  # promote the first other axis
        first, *rest = rec["more"]
        rec = {**first, **({"more": rest} if rest else {})}
    old = layer.metadata.get(KEY)
    if (old or None) == (rec or None) or (not old and not rec.get("slices")):
        return False
    meta = dict(layer.metadata)
    meta[KEY] = rec
    layer.metadata = meta
    return True


def add_slices(layer, axis: int, slices: Iterable[int]) -> bool:
    """Mark ``slices`` along data ``axis`` reviewed: they count whole (also where they
    hold edits). True when the record changed.

    The metadata dict is replaced (not mutated) so napari's metadata event fires.
    """
    new = {int(s) for s in slices if 0 <= int(s) < layer.data.shape[axis]}
    if not new:
        return False
    rec = _copy_record(layer.metadata)
    target = _entry(rec, axis)
    target["slices"] = sorted({int(s) for s in target["slices"]} | new)
    target["reviewed"] = sorted({int(s) for s in target.get("reviewed", [])} | new)
    return _store(layer, rec)


def remove_slices(layer, axis: int, slices: Iterable[int]) -> bool:
    """Unmark ``slices`` along ``axis``: a reviewed slice that holds edits goes back to
    counting its edits only; any other slice leaves the record. True when it changed."""
    drop = {int(s) for s in slices}
    if not records(layer.metadata):
        return False
    rec = _copy_record(layer.metadata)
    for e in [rec, *rec.get("more", [])]:
        if int(e.get("axis", -1)) != axis:
            continue
        reviewed = {int(s) for s in e.get("reviewed", [])}
        edited = {int(k) for k in e.get("edits", {})}
        back_to_edits = drop & reviewed & edited
        e["reviewed"] = sorted(reviewed - drop)
        e["slices"] = sorted({int(s) for s in e["slices"]} - (drop - back_to_edits))
    return _store(layer, rec)


#: :func:`slice_state` of a slice that counts whole
WHOLE = "whole"


def slice_state(metadata, axis: int, index: int) -> Any:
    """How slice ``index`` along ``axis`` is recorded: None (not at all), :data:`WHOLE`
    (reviewed, or listed without edits), or its edits dict."""
    rec = (metadata or {}).get(KEY) or {}
    for e in [rec, *rec.get("more", [])] if rec else []:
        if int(e.get("axis", -1)) != axis or index not in {int(s) for s in e.get("slices", [])}:
            continue
        edit = (e.get("edits") or {}).get(str(index))
        if edit is None or index in {int(s) for s in e.get("reviewed", [])}:
            return WHOLE
        return edit
    return None


def apply_edits(layer, axis: int, updates: dict[int, Any]) -> bool:
    """Set the edits of slices along ``axis``: ``{slice: edits dict}`` records them,
    ``{slice: None}`` drops a slice that held only edits (a reviewed slice stays);
    :data:`WHOLE` leaves a slice as it is. True when the record changed."""
    rec = _copy_record(layer.metadata)
    target = _entry(rec, axis)
    listed = {int(s) for s in target["slices"]}
    reviewed = {int(s) for s in target.get("reviewed", [])}
    edits = dict(target.get("edits") or {})
    for s, edit in updates.items():
        s = int(s)
        if edit is WHOLE or edit == WHOLE:
            continue
        if edit is None:
            edits.pop(str(s), None)
            if s not in reviewed:
                listed.discard(s)
            continue
        if s in listed and str(s) not in edits and s not in reviewed:
            continue  # listed without edits (a record of whole slices): stays whole
        listed.add(s)
        edits[str(s)] = edit
    target["slices"] = sorted(listed)
    target["edits"] = edits
    return _store(layer, rec)


def training_mask(labels, metadata) -> np.ndarray | None:
    """The voxels of ``labels`` training learns from under the layer's record (edited
    slices per label and region, reviewed slices whole), None when nothing is recorded."""
    from napari_vnet.training.annotation_regions import training_mask as regions_mask

    return regions_mask(labels, (metadata or {}).get(KEY))


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


def mask_from_record(
    annotated: Any, shape: tuple[int, ...], labels: np.ndarray | None = None
) -> np.ndarray | None:
    """A file pair's ``annotated`` argument (a record dict, a bool mask, or z-slice
    indices) -> a boolean voxel mask, or None when nothing is given. With ``labels``, a
    record's edited slices count per label and region (:func:`training_mask`)."""
    if annotated is None:
        return None
    if isinstance(annotated, dict):
        if labels is not None:
            return training_mask(labels, {KEY: annotated})
        return annotated_mask(shape, {KEY: annotated})
    arr = np.asarray(annotated)
    if arr.dtype == bool and arr.shape == tuple(shape):
        return arr
    return annotated_mask(shape, {KEY: {"axis": 0, "slices": arr.ravel().tolist()}})
