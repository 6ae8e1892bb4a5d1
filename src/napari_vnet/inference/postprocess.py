"""Label-map clean-up after prediction (no Qt): largest component per class, fill holes.

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


def keep_largest_component(labels: np.ndarray, values: Iterable[int] | None = None) -> np.ndarray:
    """Keep only the largest 26-connected component of each class (others -> 0). In place."""
    for _, sub, mask in _class_regions(labels, values):
        comp, n = ndimage.label(mask, structure=_STRUCTURE_26)
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


def apply_card_postprocess(labels: np.ndarray, choice: Any) -> np.ndarray:
    """Apply a model card's ``postprocess`` (chosen on validation when it was trained,
    e.g. ``{"largest_component": [5, 1]}``) to a copy of ``labels``."""
    values = list((choice or {}).get("largest_component") or [])
    if not values:
        return labels
    out = keep_largest_component(np.array(labels, copy=True), values)
    log.info("post-processing of the model card applied: largest component of %s", values)
    return out
