"""Sheared DICOM series (gantry tilt): slices stacked off their own normal.

A CT acquired with a tilted gantry has slice planes tilted by the gantry angle while the
table moves straight, so the slice positions (ImagePositionPatient) step along the table
axis, not along the slice normal (the cross product of ImageOrientationPatient's row and
column). SimpleITK's series reader takes the first slice's orientation and stacks the
slices along that normal: every slice but the first lands shifted in its own plane, by
up to (slices x step x sin(tilt)) mm, silently.

:func:`slice_shear` measures each slice's in-plane offset from the first one; when the
offsets are not negligible, the series is read onto an orthogonal grid with the slices'
own orientation: output slice k lies in the plane of acquired slice k (no interpolation
between slices), shifted in-plane by its offset (linear interpolation within the slice),
on a grid widened to hold every slice whole. :func:`describe_shear` names the tilt.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: In-plane offsets below this fraction of a pixel are rounding in the position tags.
_NEGLIGIBLE = 0.05
#: A grid widened beyond this factor per axis is not a tilt but scattered slices: they
#: are left stacked along the normal (with a warning) instead of filling a huge grid.
_MAX_GROWTH = 2


@dataclass(frozen=True)
class SliceShear:
    """The in-plane offsets of a sheared series' slices and the grid that holds them."""

    angle: float  # degrees between the slice step and the slice normal
    offsets: tuple[tuple[float, float], ...]  # per slice (along columns c, along rows r), mm
    start: tuple[int, int]  # first output pixel (row j, column i) in the first slice's grid
    shape: tuple[int, int]  # output (rows, columns)
    max_offset: float  # largest in-plane offset, mm
    resampled: bool = True  # False: offsets too wild for a grid (stacked as recorded, warned)


def slice_shear(
    positions: list[tuple[float, ...]],
    orientation: tuple[float, ...],
    pixel: tuple[float, float],
    size: tuple[int, int],
) -> SliceShear | None:
    """The shear of a series whose slices (ordered along the normal) sit at ``positions``,
    all with ``orientation`` (row, column cosines), ``pixel`` = (dy, dx) mm and ``size`` =
    (rows, columns); None when every slice lies on the first slice's normal."""
    if len(positions) < 2:
        return None
    r = np.asarray(orientation[:3], float)
    c = np.asarray(orientation[3:], float)
    r, c = r / np.linalg.norm(r), c / np.linalg.norm(c)
    n = np.cross(r, c)
    rel = np.asarray(positions, float) - np.asarray(positions[0], float)
    along_r, along_c, along_n = rel @ r, rel @ c, rel @ n
    dy, dx = (float(v) if v > 0 else 1.0 for v in pixel)
    if max(np.abs(along_r).max() / dx, np.abs(along_c).max() / dy) < _NEGLIGIBLE:
        return None
    # the tilt: least-squares in-plane drift per mm along the normal
    norm2 = float(np.dot(along_n, along_n)) or 1.0
    drift = math.hypot(float(along_r @ along_n), float(along_c @ along_n)) / norm2
    angle = math.degrees(math.atan(drift))
    j0 = math.floor(min(0.0, float(along_c.min())) / dy + 1e-6)
    i0 = math.floor(min(0.0, float(along_r.min())) / dx + 1e-6)
    j1 = math.ceil(max(0.0, float(along_c.max())) / dy - 1e-6)
    i1 = math.ceil(max(0.0, float(along_r.max())) / dx - 1e-6)
    rows, cols = int(size[0]) + j1 - j0, int(size[1]) + i1 - i0
    fits = rows <= _MAX_GROWTH * int(size[0]) and cols <= _MAX_GROWTH * int(size[1])
    return SliceShear(
        angle=angle,
        offsets=tuple((float(a), float(b)) for a, b in zip(along_c, along_r, strict=True)),
        start=(j0, i0) if fits else (0, 0),
        shape=(rows, cols) if fits else (int(size[0]), int(size[1])),
        max_offset=float(np.hypot(along_r, along_c).max()),
        resampled=fits,
    )


def describe_shear(shear: SliceShear) -> str:
    """One sentence naming the tilt, for warnings and metadata."""
    rows, cols = shear.shape
    what = (
        f"gantry tilt / sheared slices: the slice positions step {shear.angle:.2f} degrees "
        f"off the slice normal (slices shifted up to {shear.max_offset:.1f} mm in their own "
        "plane); "
    )
    if not shear.resampled:
        return what + (
            "NOT corrected (the offsets are too irregular for one grid): the slices are "
            f"stacked along the normal, up to {shear.max_offset:.1f} mm off their recorded "
            "positions"
        )
    return what + (
        f"resampled onto an orthogonal grid of {rows} x {cols} pixels per slice that holds "
        "every slice at its true position"
    )


def unshear(array: np.ndarray, shear: SliceShear, pixel: tuple[float, float]) -> np.ndarray:
    """``array`` (slices, rows, columns[, components]) as read by SimpleITK, each slice
    moved to its true place on the output grid of ``shear`` (outside: the array's minimum)."""
    from scipy import ndimage

    dy, dx = (float(v) if v > 0 else 1.0 for v in pixel)
    rows, cols = shear.shape
    out = np.empty((array.shape[0], rows, cols) + array.shape[3:], array.dtype)
    fill = float(array.min()) if array.size else 0.0
    j0, i0 = shear.start
    work = np.result_type(array.dtype, np.float32)  # exact for int16/uint16 CT values
    canvas = np.full((rows, cols) + array.shape[3:], fill, work)
    for k, (along_c, along_r) in enumerate(shear.offsets):
        canvas.fill(fill)
        canvas[: array.shape[1], : array.shape[2]] = array[k]
        move = (along_c / dy - j0, along_r / dx - i0) + (0.0,) * (array.ndim - 3)
        moved = ndimage.shift(canvas, move, order=1, mode="constant", cval=fill, prefilter=False)
        if np.issubdtype(out.dtype, np.integer):
            info = np.iinfo(out.dtype)
            moved = np.clip(np.rint(moved), info.min, info.max)
        out[k] = moved
    return out


def unsheared_volume(array: np.ndarray, pixel_type: str, series, meta: dict[str, Any]):
    """The :class:`~napari_vnet.io.volume.Volume` of a sheared series (``array`` as
    SimpleITK stacked it) on the orthogonal grid its listing announced, with a warning
    (and a log record) that names the tilt."""
    from napari_vnet.io.volume import Volume

    shear: SliceShear = series.extra["shear"]
    note = describe_shear(shear)
    meta["gantry_tilt"] = round(shear.angle, 4)
    meta["shear_corrected"] = shear.resampled
    meta["shear"] = note
    message = f"{series.folder}: DICOM series {series.name!r}: {note}"
    log.warning(message)
    warnings.warn(message, UserWarning, stacklevel=3)
    return Volume(
        array=unshear(array, shear, tuple(series.spacing[1:])) if shear.resampled else array,
        spacing=tuple(series.spacing),
        origin=tuple(series.origin),
        direction=np.asarray(series.direction, float),
        pixel_type=pixel_type,
        metadata=meta,
        path=series.folder,
    )
