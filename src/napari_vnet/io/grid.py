"""One "same voxel grid" rule and one nearest-neighbour resampler onto a reference grid.

A voxel grid is a shape, a spacing, an origin and a direction matrix, in the (z, y, x)
order and LPS millimetres of :class:`~napari_vnet.io.volume.Volume`. Two grids are the
same when (:func:`grid_differences` is empty):

* the shapes are equal (the spatial axes; a trailing channel axis is not compared);
* the spacings agree to 1e-4 relative (+ 1e-6 mm) (:data:`SPACING_RTOL`, :data:`SPACING_ATOL`);
* the origins agree to 1 % of the smallest voxel spacing of the two (:data:`ORIGIN_VOXELS`);
* the direction cosines agree to 1e-4 (:data:`DIRECTION_ATOL`).

Training (labels on the image's grid, else resampled), the Fine-tune dock (layers and
files of a training pair) and ``napari-vnet evaluate`` (prediction on the reference's grid)
all use this rule. No napari import here (core).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_vnet.io.volume import Volume

__all__ = [
    "DIRECTION_ATOL",
    "ORIGIN_VOXELS",
    "SPACING_ATOL",
    "SPACING_RTOL",
    "Grid",
    "GridDifference",
    "grid_differences",
    "resample_onto",
    "same_grid",
]

SPACING_RTOL = 1e-4
SPACING_ATOL = 1e-6  # mm
ORIGIN_VOXELS = 0.01  # origins may differ by this fraction of the smallest voxel spacing
DIRECTION_ATOL = 1e-4


@dataclass(frozen=True)
class Grid:
    """The voxel grid of a volume, a header or a napari layer (z, y, x; mm)."""

    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: np.ndarray

    @classmethod
    def of(cls, obj: Any) -> Grid:
        """The grid of a :class:`Volume`, a :func:`~napari_vnet.io.read_header` dict or a Grid."""
        if isinstance(obj, Grid):
            return obj

        def get(key: str):
            return obj.get(key) if isinstance(obj, Mapping) else getattr(obj, key)

        spacing = tuple(float(s) for s in get("spacing"))
        n = len(spacing)
        origin = get("origin")
        direction = get("direction")
        return cls(
            shape=tuple(int(s) for s in get("shape")[:n]),
            spacing=spacing,
            origin=(0.0,) * n if origin is None else tuple(float(o) for o in origin),
            direction=np.eye(n) if direction is None else np.asarray(direction, float),
        )

    @classmethod
    def from_world_matrix(cls, shape, linear, offset) -> Grid:
        """The grid whose index-to-world map is ``linear @ index + offset`` (a napari
        layer's data-to-world map: :func:`~napari_vnet.io.layer_world_matrix`)."""
        linear = np.asarray(linear, float)
        spacing = np.linalg.norm(linear, axis=0)
        safe = np.where(spacing > 0, spacing, 1.0)
        return cls(
            shape=tuple(int(s) for s in shape),
            spacing=tuple(float(s) for s in spacing),
            origin=tuple(float(o) for o in np.asarray(offset, float)),
            direction=linear / safe,
        )


@dataclass(frozen=True)
class GridDifference:
    """One way two grids differ: ``what`` is "shape", "spacing", "origin" or "direction"."""

    what: str
    a: Any
    b: Any

    @property
    def values(self) -> str:
        """The two values in words: ``"(1.0, 1.0, 1.0) vs (2.0, 1.0, 1.0) mm"``."""
        if self.what == "direction":
            da = np.round(np.asarray(self.a), 4).tolist()
            db = np.round(np.asarray(self.b), 4).tolist()
            return f"{da} vs {db}"
        unit = "" if self.what == "shape" else " mm"
        return f"{tuple(self.a)} vs {tuple(self.b)}{unit}"

    def __str__(self) -> str:
        return f"{self.what} {self.values}"


def grid_differences(a: Any, b: Any) -> list[GridDifference]:
    """How the grids of ``a`` and ``b`` differ (empty when they are the same grid, see the
    module text). ``a``/``b``: Volumes, header dicts or :class:`Grid`."""
    ga, gb = Grid.of(a), Grid.of(b)
    diffs = []
    if ga.shape != gb.shape:
        diffs.append(GridDifference("shape", ga.shape, gb.shape))
    sa, sb = np.asarray(ga.spacing), np.asarray(gb.spacing)
    if sa.shape != sb.shape:  # grids of other dimensions: nothing more compares
        return [*diffs, GridDifference("spacing", ga.spacing, gb.spacing)]
    if not np.allclose(sa, sb, rtol=SPACING_RTOL, atol=SPACING_ATOL):
        diffs.append(GridDifference("spacing", ga.spacing, gb.spacing))
    tol = ORIGIN_VOXELS * float(min(sa.min(initial=np.inf), sb.min(initial=np.inf)))
    if not np.allclose(ga.origin, gb.origin, rtol=0.0, atol=tol):
        diffs.append(GridDifference("origin", ga.origin, gb.origin))
    if ga.direction.shape != gb.direction.shape or not np.allclose(
        ga.direction, gb.direction, rtol=0.0, atol=DIRECTION_ATOL
    ):
        diffs.append(GridDifference("direction", ga.direction, gb.direction))
    return diffs


def same_grid(a: Any, b: Any) -> bool:
    """True when ``a`` and ``b`` lie on the same voxel grid (see the module text)."""
    return not grid_differences(a, b)


def resample_onto(volume: Volume, reference: Volume) -> Volume:
    """``volume`` (a label map) on ``reference``'s grid: nearest neighbour through
    physical space (so labels stored e.g. with flipped rows land on the right anatomy),
    0 outside ``volume``, in ``volume``'s dtype. Returns a Volume on ``reference``'s grid."""
    import SimpleITK as sitk

    from napari_vnet.io.writing import volume_to_image

    source = np.asarray(volume.array)
    moving = volume_to_image(Volume(source, volume.spacing, volume.origin, volume.direction))
    ref = volume_to_image(
        Volume(np.zeros(reference.shape[: len(reference.spacing)], np.uint8),
               reference.spacing, reference.origin, reference.direction)
    )  # fmt: skip
    out = sitk.Resample(
        moving, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, moving.GetPixelID()
    )
    return reference.with_array(sitk.GetArrayFromImage(out).astype(source.dtype, copy=False))
