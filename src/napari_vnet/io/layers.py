"""Volume <-> napari layer arguments, without importing napari.

napari maps a data index ``idx`` to world coordinates as
``world = A_lin @ (R @ Sh @ diag(scale) @ idx + translate) + A_t`` (``affine`` = A,
``rotate`` = R, ``shear`` = Sh). The package's contract is that world coordinates are
physical LPS millimetres in (z, y, x) order, so for a Volume
``world = origin + direction @ diag(spacing) @ idx``:

* diagonal direction (identity or axis flips, e.g. RAS-stored NIfTI): ``scale =
  spacing * sign(diag(direction))`` (negative scale for flipped axes; napari >= 0.5
  handles it in ``data_to_world`` and on screen), ``translate = origin``;
* oblique direction: ``scale = spacing``, ``translate = 0`` and a homogeneous
  ``affine`` holding ``direction`` and ``origin``.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import numpy as np

from napari_vnet.io.volume import Volume

log = logging.getLogger(__name__)

#: Key of the geometry record inside a layer's ``metadata``.
META_KEY = "napari_vnet"

#: Names of the three world axes (z, y, x) = LPS millimetres, as napari shows them on the
#: dims sliders and the axes overlay: each goes from the first side to the second.
ANATOMICAL_AXIS_LABELS = ("I→S", "A→P", "R→L")

#: CT windows (level, width) in HU, as radiology workstations offer them.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "soft tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}
DEFAULT_CT_WINDOW = "soft tissue"

_DIAGONAL_TOL = 1e-6  # off-diagonal direction terms below this count as exactly zero
_LABEL_NAME = re.compile(r"(seg|label|mask)", re.IGNORECASE)


def _geometry_record(vol: Volume, *, is_label: bool | None = None) -> dict[str, Any]:
    rec = {
        "spacing": [float(v) for v in vol.spacing],
        "origin": [float(v) for v in vol.origin],
        "direction": np.asarray(vol.direction, float).tolist(),
        "shape": [int(s) for s in vol.array.shape[: len(vol.spacing)]],
        "pixel_type": vol.pixel_type,
        "path": vol.path,
        "metadata": dict(vol.metadata),
    }
    if is_label is not None:
        rec["is_label"] = bool(is_label)
    return rec


def volume_to_layer_kwargs(vol: Volume, *, is_label: bool | None = None) -> dict[str, Any]:
    """``scale``, ``translate`` (and ``affine`` when oblique) and ``metadata`` for a layer.

    Use as ``napari.layers.Image(vol.array, **kw)`` / ``Labels(mask, **kw)``; for
    multi-component volumes (array has one axis more than ``spacing``) add
    ``channel_axis=-1`` or ``rgb=True``. ``metadata["napari_vnet"]`` records the exact
    source geometry, path and the volume's metadata (modality, window, ...).
    """
    n = len(vol.spacing)
    spacing = np.asarray(vol.spacing, float)
    origin = np.asarray(vol.origin, float)
    d = np.asarray(vol.direction, float)
    off = d - np.diag(np.diag(d))
    kw: dict[str, Any]
    if np.all(np.abs(off) <= _DIAGONAL_TOL) and np.allclose(np.abs(np.diag(d)), 1.0, atol=1e-9):
        kw = {
            "scale": tuple(float(v) for v in spacing * np.sign(np.diag(d))),
            "translate": tuple(float(v) for v in origin),
        }
    else:
        affine = np.eye(n + 1)
        affine[:n, :n] = d
        affine[:n, n] = origin
        kw = {"scale": tuple(float(v) for v in spacing), "translate": (0.0,) * n, "affine": affine}
    kw["metadata"] = {META_KEY: _geometry_record(vol, is_label=is_label)}
    if n in (2, 3):
        kw["units"] = ("mm",) * n  # napari's scale bar and status bar then say mm
    if n == 3:
        kw["axis_labels"] = ANATOMICAL_AXIS_LABELS
    return kw


def _as_matrix(obj, n: int) -> np.ndarray | None:
    if obj is None:
        return None
    m = getattr(obj, "affine_matrix", obj)  # napari Affine object or plain matrix
    m = np.asarray(m, float)
    if m.shape == (n, n):  # linear part only
        full = np.eye(n + 1)
        full[:n, :n] = m
        return full
    if m.shape == (n + 1, n + 1):
        return m
    raise ValueError(f"affine must be {n}x{n} or {n + 1}x{n + 1} for {n}-D data, got {m.shape}")


def _shear_matrix(shear, n: int) -> np.ndarray:
    if shear is None:
        return np.eye(n)
    s = np.asarray(shear, float)
    if s.ndim == 2:
        return s
    m = np.eye(n)
    m[np.triu_indices(n, 1)] = s  # napari's upper-triangular vector convention
    return m


def layer_world_matrix(
    n: int, *, scale, translate, affine=None, rotate=None, shear=None
) -> tuple[np.ndarray, np.ndarray]:
    """(linear n x n, offset n) of napari's data-to-world map (scale/translate/rotate/shear/affine)."""
    scale = np.asarray(scale if scale is not None else np.ones(n), float)[-n:]
    translate = np.asarray(translate if translate is not None else np.zeros(n), float)[-n:]
    rot = np.eye(n) if rotate is None else np.asarray(rotate, float)
    if rot.shape != (n, n):
        raise ValueError(f"rotate must be an {n}x{n} matrix, got shape {rot.shape}")
    inner = rot @ _shear_matrix(shear, n) @ np.diag(scale)
    a = _as_matrix(affine, n)
    if a is None:
        return inner, translate
    return a[:n, :n] @ inner, a[:n, :n] @ translate + a[:n, n]


def layer_to_volume(
    data,
    *,
    scale,
    translate,
    affine=None,
    metadata: dict | None = None,
    rotate=None,
    shear=None,
) -> Volume:
    """The Volume a napari layer shows (the inverse of :func:`volume_to_layer_kwargs`).

    A layer opened by this package (``metadata["napari_vnet"]`` present, same grid
    shape, transform unchanged) gets its exact source geometry, path and metadata back;
    any other layer gets spacing/origin/direction decomposed from its transform.
    ``data`` may have one trailing channel axis more than ``scale`` (RGB/vector).
    """
    array = np.asarray(data)
    n = len(np.asarray(scale)) if scale is not None else array.ndim
    lin, off = layer_world_matrix(
        n, scale=scale, translate=translate, affine=affine, rotate=rotate, shear=shear
    )
    rec = (metadata or {}).get(META_KEY)
    if rec and list(array.shape[:n]) == list(rec.get("shape", [])) and len(rec["spacing"]) == n:
        src_lin = np.asarray(rec["direction"], float) @ np.diag(rec["spacing"])
        src_off = np.asarray(rec["origin"], float)
        tol = 1e-6 * max(1.0, float(np.abs(src_off).max(initial=0.0)))
        if np.allclose(lin, src_lin, atol=1e-9, rtol=1e-6) and np.allclose(off, src_off, atol=tol):
            meta = dict(rec.get("metadata") or {})
            if "is_label" in rec:
                meta["is_label"] = rec["is_label"]
            return Volume(
                array=array,
                spacing=tuple(rec["spacing"]),
                origin=tuple(rec["origin"]),
                direction=np.asarray(rec["direction"], float),
                pixel_type=rec.get("pixel_type", ""),
                metadata=meta,
                path=rec.get("path"),
            )
        log.info("layer was moved since it was read; using its current transform")
    spacing = np.linalg.norm(lin, axis=0)
    if np.any(spacing <= 0):
        raise ValueError(f"layer transform is singular (scale {tuple(np.asarray(scale))})")
    direction = lin / spacing
    if not np.allclose(direction.T @ direction, np.eye(n), atol=1e-4):
        log.warning("layer transform has shear; its direction cosines are not orthonormal")
    return Volume(
        array=array,
        spacing=tuple(float(v) for v in spacing),
        origin=tuple(float(v) for v in off),
        direction=direction,
        metadata={},
    )


# ---------------------------------------------------------------- display helpers


def _sample(array: np.ndarray, max_values: int = 2_000_000) -> np.ndarray:
    """A strided subsample (a view) of at most ~max_values elements."""
    a = np.asarray(array)
    if a.size <= max_values:
        return a
    step = int(np.ceil((a.size / max_values) ** (1.0 / a.ndim)))
    return a[(slice(None, None, step),) * a.ndim]


def looks_like_labels(vol: Volume, name: str = "") -> bool:
    """Label map? The name says seg/label/mask (and values are whole numbers), or an
    integer, non-negative volume with few distinct values (not CT/MR from DICOM)."""
    a = np.asarray(vol.array)
    if a.ndim != len(vol.spacing) or a.size == 0:  # vector images are never label maps
        return False
    if a.dtype == bool or vol.metadata.get("format") == "DICOM-SEG":
        return True
    sample = _sample(a)
    if _LABEL_NAME.search(name or ""):
        if a.dtype.kind in "iu":
            return bool(sample.min() >= 0)
        if a.dtype.kind == "f":
            fin = np.isfinite(sample)
            return bool(
                fin.all() and np.array_equal(sample, np.round(sample)) and sample.min() >= 0
            )
        return False
    if a.dtype.kind not in "iu" or vol.metadata.get("format") == "DICOM":
        return False
    if sample.min() < 0 or sample.max() > 4096:
        return False
    return len(np.unique(sample)) <= 128


def window_limits(level: float, width: float) -> tuple[float, float]:
    """Contrast limits (low, high) of a (level, width) window."""
    return (float(level) - float(width) / 2.0, float(level) + float(width) / 2.0)


def looks_like_hu(array: np.ndarray) -> bool:
    """Values in Hounsfield units? Air or the scanner's padding (<= -900) and tissue or
    bone (>= 100) both present, as in every CT of a body; MR (non-negative, arbitrary
    scale) and images scaled to 0..1 are not. A heuristic: used for a default window and
    for warnings, never to refuse anything."""
    a = np.asarray(array)
    if a.size == 0 or a.dtype.kind not in "iuf":
        return False
    sample = _sample(a).ravel()
    if sample.dtype.kind == "f":
        sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return False
    lo, hi = np.percentile(sample, (1.0, 99.9))
    return bool(lo <= -900 and float(sample.min()) >= -4096 and hi >= 100 and hi <= 5000)


def display_range(vol: Volume, *, percentiles=(0.5, 99.5)) -> tuple[float, float]:
    """Contrast limits for a scan as a radiologist would first see it.

    The DICOM header's window if present; else, for data in Hounsfield units (modality
    CT or values that look like HU), the soft-tissue window (level 40, width 400); else
    (MR, PET, microscopy...) robust percentiles (NaN/inf ignored).
    """
    meta = vol.metadata
    if meta.get("window_width"):
        return window_limits(meta["window_center"], meta["window_width"])
    modality = str(meta.get("modality", "")).upper()
    if vol.array.ndim == len(vol.spacing) and modality not in ("MR", "PT", "NM", "US"):
        if modality == "CT" or looks_like_hu(vol.array):
            return window_limits(*WINDOW_PRESETS[DEFAULT_CT_WINDOW])
    sample = _sample(vol.array).ravel()
    if sample.dtype.kind == "f":
        sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return (0.0, 1.0)
    lo, hi = np.percentile(sample, percentiles)
    if not hi > lo:
        lo, hi = float(sample.min()), float(sample.max())
    if not hi > lo:
        hi = lo + 1.0
    return (float(lo), float(hi))
