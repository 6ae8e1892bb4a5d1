"""Segmentation metrics on label maps (no Qt): per-class Dice and 95% Hausdorff in mm.

Both functions take two integer label maps on the *same grid* (check the geometry first;
``napari-vnet evaluate`` does) and compare one label value at a time.

Conventions, stated because papers and tools differ:

* Dice = 2|P & G| / (|P| + |G|); 1.0 when the class is absent from both, 0.0 when it is
  absent from exactly one.
* HD95: the surface of a mask is its voxels with a 6-neighbour outside it (voxels on the
  array border count as surface). For each surface voxel of one mask, the Euclidean
  distance in mm (``sampling=spacing``) to the nearest surface voxel of the other; the
  95th percentile of each direction; the larger of the two (MONAI's
  ``compute_hausdorff_distance(percentile=95)`` definition). 0.0 when the class is absent
  from both, ``inf`` when it is absent from exactly one.

Distances are computed inside the bounding box of the two masks (grown by one voxel),
which gives exactly the full-volume result at a fraction of the memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage

__all__ = ["dice_per_class", "hd95_per_class", "hausdorff_per_class", "label_values"]

_CROSS = ndimage.generate_binary_structure(3, 1)


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(
            f"prediction shape {pred.shape} != reference shape {gt.shape}: "
            "put both on the same grid first"
        )
    return pred, gt


def label_values(*arrays: np.ndarray) -> list[int]:
    """Sorted non-zero label values present in any of the arrays."""
    values: set[int] = set()
    for a in arrays:
        values.update(int(v) for v in np.unique(a))
    values.discard(0)
    return sorted(values)


def _labels(pred: np.ndarray, gt: np.ndarray, labels: Iterable[int] | None) -> list[int]:
    return label_values(pred, gt) if labels is None else [int(v) for v in labels]


def dice_per_class(
    pred: np.ndarray, gt: np.ndarray, labels: Iterable[int] | None = None
) -> dict[int, float]:
    """Dice of each label value (default: every non-zero value in either map)."""
    pred, gt = _check_pair(pred, gt)
    out = {}
    for v in _labels(pred, gt, labels):
        p = pred == v
        g = gt == v
        n_p = int(np.count_nonzero(p))
        n_g = int(np.count_nonzero(g))
        if n_p + n_g == 0:
            out[v] = 1.0
            continue
        out[v] = 2.0 * int(np.count_nonzero(p & g)) / (n_p + n_g)
    return out


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=_CROSS, border_value=0)


def _directed(from_surface: np.ndarray, to_surface: np.ndarray, spacing) -> np.ndarray:
    dist = ndimage.distance_transform_edt(~to_surface, sampling=spacing)
    return dist[from_surface]


def hausdorff_per_class(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    labels: Iterable[int] | None = None,
    percentile: float = 95.0,
) -> dict[int, float]:
    """Percentile Hausdorff distance in mm of each label value (see the module notes)."""
    pred, gt = _check_pair(pred, gt)
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != pred.ndim or not all(s > 0 for s in spacing):
        raise ValueError(f"spacing {spacing} does not fit arrays of shape {pred.shape}")
    out = {}
    for v in _labels(pred, gt, labels):
        p = pred == v
        g = gt == v
        has_p, has_g = bool(p.any()), bool(g.any())
        if not (has_p or has_g):
            out[v] = 0.0
            continue
        if not (has_p and has_g):
            out[v] = float("inf")
            continue
        box = ndimage.find_objects((p | g).astype(np.uint8))[0]
        box = tuple(
            slice(max(0, s.start - 1), min(n, s.stop + 1))
            for s, n in zip(box, pred.shape, strict=True)
        )
        # the erosion must see the true array border, which a grown box keeps
        sp, sg = _surface(p[box]), _surface(g[box])
        d_pg = _directed(sp, sg, spacing)
        d_gp = _directed(sg, sp, spacing)
        out[v] = float(max(np.percentile(d_pg, percentile), np.percentile(d_gp, percentile)))
    return out


def hd95_per_class(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    labels: Iterable[int] | None = None,
) -> dict[int, float]:
    """95% Hausdorff distance in mm of each label value (``spacing`` in (z, y, x) mm)."""
    return hausdorff_per_class(pred, gt, spacing, labels, percentile=95.0)
