"""Correction tools on one label of a label map (no Qt, no napari).

Every tool works on one label value, inside a :class:`Scope` (slices ``lo..hi-1`` along
one data axis: the current slice, a range of slices or the whole volume) and returns a
:class:`Change`: the voxels whose value changes and their new values. Nothing is written
into the label map; the caller applies the change (``change.apply(labels)``, or in napari
``layer.data_setitem(change.indices, change.values)``, which napari's undo reverts).

* :func:`fill_between` - interpolate the label on the slices between key slices (signed
  distance interpolation, in mm when the spacing is given);
* :func:`remove_islands` / :func:`keep_largest` - drop small or all but the largest
  connected pieces;
* :func:`fill_holes` - fill background enclosed by the label, slice by slice;
* :func:`smooth` - a binary median filter, slice by slice;
* :func:`restrict_to_range` - remove label voxels whose intensity lies outside lo..hi;
* :func:`grow_from_seeds` - the connected region of intensities within lo..hi that
  touches the seeds (the user's scribble).

Voxels a tool removes become background (0). Voxels a tool adds take the label only where
the map holds background, unless ``overwrite=True`` (then other labels are painted over).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Scope:
    """Slices ``lo`` (inclusive) to ``hi`` (exclusive) along data ``axis``."""

    axis: int
    lo: int
    hi: int

    @classmethod
    def whole(cls, shape: Sequence[int], axis: int = 0) -> Scope:
        return cls(int(axis), 0, int(shape[axis]))

    @classmethod
    def slice_(cls, index: int, axis: int = 0) -> Scope:
        return cls(int(axis), int(index), int(index) + 1)

    def clipped(self, shape: Sequence[int]) -> Scope:
        n = int(shape[self.axis])
        lo = min(max(int(self.lo), 0), n)
        return Scope(self.axis, lo, min(max(int(self.hi), lo), n))


@dataclass
class Change:
    """Voxels (a tuple of index arrays, one per axis) and their new values."""

    indices: tuple[np.ndarray, ...]
    values: np.ndarray

    @property
    def size(self) -> int:
        return int(self.values.size)

    def apply(self, labels: np.ndarray) -> None:
        labels[self.indices] = self.values

    def slices(self, axis: int = 0) -> list[int]:
        """The indices along ``axis`` of the slices this change touches."""
        if not self.size:
            return []
        return [int(s) for s in np.unique(self.indices[axis])]


def _sub(array: np.ndarray, scope: Scope) -> np.ndarray:
    """The scope's slab of ``array`` with the scope axis first (a view)."""
    sl: list[slice] = [slice(None)] * array.ndim
    sl[scope.axis] = slice(scope.lo, scope.hi)
    return np.moveaxis(array[tuple(sl)], scope.axis, 0)


def _check(labels: np.ndarray, scope: Scope, image: np.ndarray | None = None) -> Scope:
    if labels.ndim != 3:
        raise ValueError(f"a label map of 3 dimensions is needed, got shape {labels.shape}")
    if not 0 <= scope.axis < 3:
        raise ValueError(f"scope axis {scope.axis} is not 0, 1 or 2")
    if image is not None and tuple(image.shape) != tuple(labels.shape):
        raise ValueError(f"image shape {image.shape} differs from labels shape {labels.shape}")
    return scope.clipped(labels.shape)


def _change(
    labels: np.ndarray, scope: Scope, label: int, new: np.ndarray, overwrite: bool
) -> Change:
    """The change that makes the label's mask in ``scope`` equal to ``new`` (slab order):
    label voxels outside ``new`` become 0; ``new`` voxels get the label where the map
    holds 0 (any value when ``overwrite``)."""
    sub = _sub(labels, scope)
    old = sub == label
    add = new & ~old
    if not overwrite:
        add &= sub == 0
    remove = old & ~new
    idx_add, idx_rem = np.nonzero(add), np.nonzero(remove)
    parts = [np.concatenate([a, r]) for a, r in zip(idx_add, idx_rem, strict=True)]
    parts[0] = parts[0] + scope.lo
    order = [0] * 3  # slab axes (scope axis first) back to data axes
    others = [a for a in range(3) if a != scope.axis]
    order[scope.axis] = 0
    for k, a in enumerate(others, start=1):
        order[a] = k
    indices = tuple(parts[order[a]].astype(np.intp) for a in range(3))
    values = np.concatenate(
        [np.full(idx_add[0].size, label, labels.dtype), np.zeros(idx_rem[0].size, labels.dtype)]
    )
    return Change(indices, values)


def _plane_spacing(spacing: Sequence[float] | None, axis: int) -> tuple[float, float]:
    if spacing is None:
        return (1.0, 1.0)
    sp = [float(s) for s in spacing]
    return tuple(sp[a] for a in range(3) if a != axis)  # type: ignore[return-value]


# ----------------------------------------------------------------------------- tools


def _signed_distance(mask: np.ndarray, sampling: tuple[float, float]) -> np.ndarray | None:
    """Negative inside, positive outside (mm); None for an empty slice."""
    if not mask.any():
        return None
    outside = ndimage.distance_transform_edt(~mask, sampling=sampling)
    inside = ndimage.distance_transform_edt(mask, sampling=sampling)
    return (outside - inside).astype(np.float32)


def fill_between(
    labels: np.ndarray,
    label: int,
    scope: Scope,
    *,
    keys: Iterable[int] | None = None,
    spacing: Sequence[float] | None = None,
    overwrite: bool = False,
) -> Change:
    """Interpolate ``label`` on the slices between key slices.

    ``keys``: the slices (indices along the scope axis) that are right, e.g. the ones the
    user corrected; default: every slice in the scope that holds the label (then the
    empty slices between them are filled, as in Slicer's "Fill between slices"). Each
    slice strictly between two consecutive keys gets the mask where the linearly
    interpolated signed distances of the two key masks are negative; its label voxels
    outside that mask are removed. Slices outside the first and last key are unchanged.
    """
    scope = _check(labels, scope)
    sub = _sub(labels, scope)
    mask = sub == label
    if keys is None:
        keys_local = [int(i) for i in np.flatnonzero(mask.any(axis=(1, 2)))]
    else:
        keys_local = sorted({int(k) - scope.lo for k in keys if scope.lo <= int(k) < scope.hi})
    new = mask.copy()
    sampling = _plane_spacing(spacing, scope.axis)
    for a, b in zip(keys_local, keys_local[1:], strict=False):
        if b - a < 2:
            continue
        da, db = _signed_distance(mask[a], sampling), _signed_distance(mask[b], sampling)
        if da is None and db is None:
            new[a + 1 : b] = False
            continue
        # an empty key: the other shape erodes linearly to nothing at that key
        da = db + (0.5 - db.min()) if da is None else da
        db = da + (0.5 - da.min()) if db is None else db
        for s in range(a + 1, b):
            t = (s - a) / (b - a)
            new[s] = (1.0 - t) * da + t * db < 0
    return _change(labels, scope, label, new, overwrite)


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Component map (face connectivity) and the voxel count of each component 1..n."""
    comp, n = ndimage.label(mask)
    sizes = np.bincount(comp.ravel(), minlength=n + 1)
    sizes[0] = 0
    return comp, sizes


def remove_islands(
    labels: np.ndarray,
    label: int,
    scope: Scope,
    *,
    min_mm3: float,
    spacing: Sequence[float] | None = None,
) -> Change:
    """Remove connected pieces of ``label`` (within the scope) smaller than ``min_mm3``
    (voxels of ``prod(spacing)`` mm^3; 1 mm^3 when no spacing is given)."""
    scope = _check(labels, scope)
    mask = _sub(labels, scope) == label
    comp, sizes = _components(mask)
    voxel = float(np.prod([float(s) for s in spacing])) if spacing is not None else 1.0
    keep = sizes * voxel >= float(min_mm3)
    keep[0] = False
    return _change(labels, scope, label, keep[comp], overwrite=False)


def keep_largest(labels: np.ndarray, label: int, scope: Scope) -> Change:
    """Keep only the largest connected piece of ``label`` within the scope."""
    scope = _check(labels, scope)
    mask = _sub(labels, scope) == label
    comp, sizes = _components(mask)
    if sizes.max(initial=0) == 0:
        return _change(labels, scope, label, mask, overwrite=False)
    return _change(labels, scope, label, comp == int(np.argmax(sizes)), overwrite=False)


def fill_holes(labels: np.ndarray, label: int, scope: Scope, *, overwrite: bool = False) -> Change:
    """Fill what ``label`` encloses, slice by slice along the scope axis (background
    only, unless ``overwrite``)."""
    scope = _check(labels, scope)
    mask = _sub(labels, scope) == label
    new = np.stack([ndimage.binary_fill_holes(m) if m.any() else m for m in mask])
    return _change(labels, scope, label, new, overwrite)


def smooth(
    labels: np.ndarray, label: int, scope: Scope, *, radius: int = 1, overwrite: bool = False
) -> Change:
    """Binary median filter of ``label`` with a ``(2 radius + 1)`` square window, slice by
    slice: removes spurs and notches narrower than the window, fills small dents."""
    scope = _check(labels, scope)
    if int(radius) < 1:
        raise ValueError(f"smoothing radius must be >= 1 voxel, got {radius}")
    mask = _sub(labels, scope) == label
    k = 2 * int(radius) + 1
    mean = ndimage.uniform_filter(mask.astype(np.float32), size=(1, k, k), mode="constant")
    return _change(labels, scope, label, mean > 0.5, overwrite)


def _in_range(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if not float(lo) <= float(hi):
        raise ValueError(f"intensity range {lo}..{hi} is empty (low > high)")
    return (image >= lo) & (image <= hi)


def restrict_to_range(
    labels: np.ndarray, image: np.ndarray, label: int, scope: Scope, *, lo: float, hi: float
) -> Change:
    """Remove voxels of ``label`` whose intensity lies outside ``lo..hi`` (inclusive)."""
    scope = _check(labels, scope, image)
    mask = _sub(labels, scope) == label
    return _change(labels, scope, label, mask & _in_range(_sub(image, scope), lo, hi), False)


def grow_from_seeds(
    labels: np.ndarray,
    image: np.ndarray,
    label: int,
    scope: Scope,
    *,
    lo: float,
    hi: float,
    seeds: np.ndarray | None = None,
    opening: int = 0,
    replace: bool = False,
    overwrite: bool = False,
) -> Change:
    """Grow ``label`` from seed voxels through connected voxels with intensity in
    ``lo..hi`` (within the scope; slice by slice when the scope is one slice).

    ``seeds``: a boolean mask of the whole volume (the user's scribble); default: the
    label's voxels in the scope. ``opening`` (voxels, in-plane) opens the in-range mask
    first, which cuts thin bridges into neighbouring organs of similar intensity.
    ``replace``: the label in the scope becomes the grown region (else it is added to).
    Voxels of other labels are never grown through unless ``overwrite``.
    """
    scope = _check(labels, scope, image)
    sub = _sub(labels, scope)
    if seeds is None:
        seed = sub == label
    else:
        if tuple(seeds.shape) != tuple(labels.shape):
            raise ValueError(f"seeds shape {seeds.shape} differs from labels {labels.shape}")
        seed = _sub(np.asarray(seeds, dtype=bool), scope)
    allowed = _in_range(_sub(image, scope), lo, hi)
    if not overwrite:
        allowed &= (sub == 0) | (sub == label)
    if opening > 0:
        k = 2 * int(opening) + 1
        allowed = ndimage.binary_opening(allowed, structure=np.ones((1, k, k), bool))
    comp, _ = _components(allowed | seed)
    hit = np.unique(comp[seed])
    region = np.isin(comp, hit[hit > 0]) | seed
    if not replace:
        region |= sub == label
    return _change(labels, scope, label, region, overwrite)
