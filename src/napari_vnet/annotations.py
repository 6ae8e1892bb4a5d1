"""Which slices of a label map has the user edited or reviewed? The record (no Qt).

The record lives in a Labels layer's metadata, so it travels with the layer (the scan
browser saves and restores it with its autosaves, the training child reads it from
there)::

    layer.metadata["annotated_slices"] = {"axis": 0, "slices": [3, 4, 17]}

``axis`` is a data axis of the layer; ``slices`` are sorted indices along it. When the
user also edits while looking along another axis, those slices go to an optional
``"more": [{"axis": 1, "slices": [...]}, ...]`` list; :func:`annotated_mask` takes the
union of all of them. The GUI's edit tracker (``_widgets._edits.EditTracker``) keeps the
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
    "count_annotated",
    "mask_from_record",
    "records",
    "remove_slices",
    "touched_slices",
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


def mask_from_record(annotated: Any, shape: tuple[int, ...]) -> np.ndarray | None:
    """A file pair's ``annotated`` argument (a record dict, a bool mask, or z-slice
    indices) -> a boolean voxel mask, or None when nothing is given."""
    if annotated is None:
        return None
    if isinstance(annotated, dict):
        return annotated_mask(shape, {KEY: annotated})
    arr = np.asarray(annotated)
    if arr.dtype == bool and arr.shape == tuple(shape):
        return arr
    return annotated_mask(shape, {KEY: {"axis": 0, "slices": arr.ravel().tolist()}})
