"""Label-map clean-up after prediction (no Qt): largest component per class, fill holes,
largest component of a group of classes (nnU-Net's ``postprocessing.pkl`` steps), small
components by volume.

Both work class by class inside each class's bounding box, so they stay cheap on a
512 x 512 x 300 CT whose organs fill a small part of it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from scipy import ndimage

log = logging.getLogger(__name__)

OPERATIONS = ("largest_component", "fill_holes")
_ALIASES = {
    "lcc": "largest_component",
    "largest": "largest_component",
    "largest_component": "largest_component",
    "fill": "fill_holes",
    "holes": "fill_holes",
    "fill_holes": "fill_holes",
}
_STRUCTURE_26 = np.ones((3, 3, 3), dtype=bool)


def parse_operations(spec: Any) -> list[str]:
    """None/False -> []; True -> all; "lcc,fill" or a list -> canonical operation names."""
    if spec is None or spec is False:
        return []
    if spec is True:
        return list(OPERATIONS)
    items: Iterable[str] = spec.split(",") if isinstance(spec, str) else spec
    out = []
    for item in items:
        key = str(item).strip().lower().replace("-", "_")
        if not key:
            continue
        if key in ("all", "true", "yes"):
            return list(OPERATIONS)
        if key not in _ALIASES:
            raise ValueError(
                f"unknown post-processing {item!r}: choose from {', '.join(OPERATIONS)}"
            )
        if _ALIASES[key] not in out:
            out.append(_ALIASES[key])
    return out


def _class_regions(
    labels: np.ndarray, values: Iterable[int] | None
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(value, sub, mask)`` per class in ``values`` (default: every non-zero value):
    ``sub`` a view of ``labels`` in the class's bounding box grown by one voxel (the boxes
    are found before the first class is changed; write into ``sub`` to change ``labels``),
    ``mask`` where ``sub`` holds the class."""
    wanted = None if values is None else {int(v) for v in values}
    boxes = ndimage.find_objects(labels)
    for value, box in enumerate(boxes, start=1):
        if box is None or (wanted is not None and value not in wanted):
            continue
        grown = tuple(
            slice(max(0, s.start - 1), min(n, s.stop + 1))
            for s, n in zip(box, labels.shape, strict=True)
        )
        sub = labels[grown]
        yield value, sub, sub == value


def _class_components(labels: np.ndarray, values: Iterable[int] | None):
    """``(sub, mask, components, n)`` per class (those in ``values``, or all): the class's
    box of ``labels`` (a view, :func:`_class_regions`), its mask there and 26-connected
    components."""
    for _, sub, mask in _class_regions(labels, values):
        comp, n = ndimage.label(mask, structure=_STRUCTURE_26)
        yield sub, mask, comp, n


def keep_largest_component(labels: np.ndarray, values: Iterable[int] | None = None) -> np.ndarray:
    """Keep only the largest 26-connected component of each class (others -> 0). In place."""
    for sub, mask, comp, n in _class_components(labels, values):
        if n <= 1:
            continue
        sizes = np.bincount(comp.ravel())
        sizes[0] = 0
        sub[mask & (comp != int(np.argmax(sizes)))] = 0
    return labels


def fill_holes(labels: np.ndarray, values: Iterable[int] | None = None) -> np.ndarray:
    """Fill background cavities fully enclosed by one class with that class. In place.

    Only background voxels change, so a structure of another class inside an organ stays.
    """
    for value, sub, mask in _class_regions(labels, values):
        holes = ndimage.binary_fill_holes(mask) & ~mask & (sub == 0)
        sub[holes] = value
    return labels


def apply_postprocess(labels: np.ndarray, spec: Any, spacing: Any = None) -> np.ndarray:
    """Apply the operations named by ``spec`` (see :func:`parse_operations`) to a copy."""
    ops = parse_operations(spec)
    if not ops:
        return labels
    if labels.dtype.kind not in "ui":
        raise TypeError(f"post-processing needs an integer label map, got {labels.dtype}")
    out = np.array(labels, copy=True)
    for op in ops:
        if op == "largest_component":
            keep_largest_component(out)
        elif op == "fill_holes":
            fill_holes(out)
    log.info("post-processing applied: %s", ", ".join(ops))
    return out


def keep_largest_region(labels: np.ndarray, values: Iterable[int]) -> np.ndarray:
    """The voxels of ``values`` taken as one region: keep its largest 26-connected
    component(s) (all of them when several share the largest size), the rest -> 0. In place.
    nnU-Net's ``remove_all_but_largest_component_from_segmentation`` does the same."""
    mask = np.isin(labels, np.asarray(sorted({int(v) for v in values})))
    comp, n = ndimage.label(mask, structure=_STRUCTURE_26)
    if n <= 1:
        return labels
    sizes = np.bincount(comp.ravel())
    sizes[0] = 0
    keep = np.flatnonzero(sizes == sizes.max())
    labels[mask & ~np.isin(comp, keep)] = 0
    return labels


def remove_small_components(
    labels: np.ndarray, min_mm3: float, spacing: Any = None, values: Iterable[int] | None = None
) -> np.ndarray:
    """Set to 0 every 26-connected component of each class smaller than ``min_mm3`` cubic
    millimetres (``spacing`` in mm, ``(z, y, x)``; None: 1 mm voxels). In place."""
    voxel = float(np.prod([float(s) for s in spacing])) if spacing is not None else 1.0
    for sub, mask, comp, n in _class_components(labels, values):
        if n == 0:
            continue
        small = np.flatnonzero(np.bincount(comp.ravel()) * voxel < float(min_mm3))
        sub[mask & np.isin(comp, small[small > 0])] = 0
    return labels


def apply_card_postprocess(labels: np.ndarray, choice: Any) -> np.ndarray:
    """Apply a model card's ``postprocess`` to a copy of ``labels``: ``largest_region``
    (a list of label-value groups, each kept to its largest component in turn: nnU-Net's
    ``postprocessing.pkl``), then ``largest_component`` (values, each kept to its own
    largest component: chosen on validation when it was trained, e.g. ``[5, 1]``)."""
    groups = [list(g) for g in (choice or {}).get("largest_region") or []]
    values = list((choice or {}).get("largest_component") or [])
    if not values and not groups:
        return labels
    out = np.array(labels, copy=True)
    for group in groups:
        keep_largest_region(out, group)
        log.info("post-processing of the model card applied: largest region of %s", group)
    if values:
        keep_largest_component(out, values)
        log.info("post-processing of the model card applied: largest component of %s", values)
    return out
