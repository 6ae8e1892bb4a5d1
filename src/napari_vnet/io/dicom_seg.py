"""Reading DICOM Segmentation objects (SEG) back as a label volume.

A SEG (``napari-vnet predict --format dicom-seg``, 3D Slicer, OHIF, highdicom) holds one
binary (or fractional) frame per segment and source slice; each frame says which segment
it is (``SegmentIdentificationSequence``) and where it lies (``PlanePositionSequence``).
:func:`read_dicom_seg` turns them into one label volume:

* **grid**: the source series' own grid when it is found (``source`` given, the
  ``*_provenance.json`` record ``napari-vnet predict`` writes beside its outputs, or the
  SEG's folder), checked by its Series Instance UID; otherwise the grid spanned by the
  SEG's frames (same orientation, pixel spacing and slice spacing, the slices between the
  first and last frame). Each frame is placed by its Image Position (Patient), so the
  order of the frames in the file does not matter;
* **values**: napari-vnet's segments carry their label value in ``TrackingID``
  (``"label 5"``), so labels come back with the values they were predicted with; other
  SEGs get the segment numbers 1..n. Where segments overlap, the later one wins;
* **classes**: each segment's label and ``RecommendedDisplayCIELabValue`` colour, in
  ``Volume.metadata["classes"]`` (``[{"value", "name", "color"}]``).

Needs pydicom (the ``dicom-seg`` extra: highdicom brings it). No napari import here.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from napari_vnet.io.errors import VolumeReadError
from napari_vnet.io.volume import Volume

log = logging.getLogger(__name__)

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
_TRACKING = re.compile(r"^\s*label\s+(\d+)\s*$", re.I)


def is_dicom_seg(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a DICOM Segmentation object (Modality ``SEG``), from its header."""
    from napari_vnet.io.dicom import _read_file_info, is_dicom_file

    p = Path(path)
    if not p.is_file() or not is_dicom_file(p):
        return False
    info = _read_file_info(str(p))
    return info is not None and info.tags.get("modality", "").upper() == "SEG"


def _pydicom(path: Path):
    try:
        import pydicom
    except ImportError as exc:
        raise VolumeReadError(
            path,
            f"a DICOM-SEG; reading it needs pydicom: pip install 'napari-vnet[dicom-seg]' ({exc})",
        ) from exc
    return pydicom


def _lab_to_rgba(value) -> list[float] | None:
    """DICOM CIELab (0..65535 each) -> RGBA in 0..1 (sRGB, D65)."""
    try:
        lab = [int(v) for v in value]
    except (TypeError, ValueError):
        return None
    if len(lab) != 3:
        return None
    L = lab[0] * 100.0 / 65535.0
    a = lab[1] * 255.0 / 65535.0 - 128.0
    b = lab[2] * 255.0 / 65535.0 - 128.0
    fy = (L + 16.0) / 116.0
    fx, fz = fy + a / 500.0, fy - b / 200.0

    def inv(t: float) -> float:
        return t**3 if t > 6.0 / 29.0 else 3 * (6.0 / 29.0) ** 2 * (t - 4.0 / 29.0)

    x, y, z = 0.95047 * inv(fx), 1.0 * inv(fy), 1.08883 * inv(fz)
    lin = (
        3.2404542 * x - 1.5371385 * y - 0.4985314 * z,
        -0.9692660 * x + 1.8760108 * y + 0.0415560 * z,
        0.0556434 * x - 0.2040259 * y + 1.0572252 * z,
    )

    def gamma(c: float) -> float:
        c = min(max(c, 0.0), 1.0)
        return 12.92 * c if c <= 0.0031308 else 1.055 * c ** (1 / 2.4) - 0.055

    return [round(gamma(c), 4) for c in lin] + [1.0]


def _segments(ds) -> tuple[dict[int, int], list[dict[str, Any]]]:
    """(segment number -> label value, classes)."""
    numbers = [int(s.SegmentNumber) for s in ds.SegmentSequence]
    values: dict[int, int] = {}
    for s in ds.SegmentSequence:
        m = _TRACKING.match(str(s.get("TrackingID", "") or ""))
        values[int(s.SegmentNumber)] = int(m.group(1)) if m else int(s.SegmentNumber)
    if len(set(values.values())) != len(numbers) or 0 in values.values():
        values = {n: n for n in numbers}  # tracking ids that do not name distinct values
    classes = [{"value": 0, "name": "background", "color": None}]
    for s in ds.SegmentSequence:
        n = int(s.SegmentNumber)
        name = str(s.get("SegmentLabel", "") or f"segment {n}")
        color = _lab_to_rgba(s.get("RecommendedDisplayCIELabValue"))
        classes.append({"value": values[n], "name": name, "color": color})
    return values, classes


def _item(seq_owner, name: str):
    seq = getattr(seq_owner, name, None)
    return seq[0] if seq else None


def _frame_geometry(ds) -> tuple[np.ndarray, tuple[float, float], float | None]:
    """(row/column direction cosines 2x3 (x, y, z), pixel spacing (row, column), slice
    spacing or None) from the shared (else the first frame's) functional groups."""
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    first = _item(ds, "PerFrameFunctionalGroupsSequence")
    orient = measures = None
    for group in (shared, first):
        if group is None:
            continue
        orient = orient or _item(group, "PlaneOrientationSequence")
        measures = measures or _item(group, "PixelMeasuresSequence")
    if orient is None or measures is None:
        raise ValueError("no plane orientation or pixel measures")
    cosines = np.asarray([float(v) for v in orient.ImageOrientationPatient], float).reshape(2, 3)
    spacing = tuple(float(v) for v in measures.PixelSpacing)
    between = measures.get("SpacingBetweenSlices")
    return cosines, (spacing[0], spacing[1]), float(between) if between else None


def _frame_positions(ds) -> np.ndarray:
    out = []
    for group in ds.PerFrameFunctionalGroupsSequence:
        pos = _item(group, "PlanePositionSequence")
        if pos is None:
            raise ValueError("a frame without Plane Position")
        out.append([float(v) for v in pos.ImagePositionPatient])
    return np.asarray(out, float)


def _grid_of_frames(ds, n_rows: int, n_cols: int) -> Volume:
    """The grid the frames span (no source series found)."""
    cosines, (dr, dc), between = _frame_geometry(ds)
    normal = np.cross(cosines[0], cosines[1])
    pos = _frame_positions(ds)
    along = pos @ normal
    gaps = np.diff(np.unique(np.round(along, 4)))
    dz = float(np.min(gaps)) if len(gaps) else (between or 1.0)
    if between and len(gaps):
        steps = (along - along.min()) / between
        if np.all(np.abs(steps - np.round(steps)) < 0.1):  # the frames lie on its multiples
            dz = between
    first = pos[int(np.argmin(along))]
    n = int(round((along.max() - along.min()) / dz)) + 1
    direction = np.stack([normal[::-1], cosines[1][::-1], cosines[0][::-1]], axis=1)  # zyx
    return Volume(
        np.zeros((n, n_rows, n_cols), np.uint8),
        spacing=(dz, dr, dc),
        origin=tuple(first[::-1]),
        direction=direction,
    )


def _recorded_input(path: Path) -> Path | None:
    """The input ``napari-vnet predict`` recorded for this output
    (``<stem>_provenance.json`` beside it, see :mod:`napari_vnet.workflows.batch_records`)."""
    import json

    stem = path.name[: -len(".dcm")] if path.name.lower().endswith(".dcm") else path.stem
    record = path.with_name(stem + "_provenance.json")
    try:
        if record.stat().st_size > 1 << 20:
            return None
        data = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("napari_vnet") != "napari-vnet predict output record":
        return None
    return Path(data["input"]) if isinstance(data.get("input"), str) else None


def _find_source_grid(path: Path, series_uid: str, source) -> Volume | None:
    """The source series' grid (its header only), checked by its Series Instance UID:
    ``source`` (a Volume, a DICOM folder or file), the recorded input, the SEG's folder."""
    from napari_vnet.io.dicom import list_dicom_series

    if isinstance(source, Volume):
        return source
    candidates = [Path(source)] if source is not None else []
    candidates += [p for p in (_recorded_input(path), path.parent) if p is not None]
    for cand in candidates:
        folder = cand if cand.is_dir() else cand.parent
        try:
            found = list_dicom_series(folder) or list_dicom_series(folder, recursive=True)
        except OSError:
            continue
        for s in found:
            if s.uid == series_uid and s.modality.upper() != "SEG":
                return Volume(
                    np.zeros(tuple(s.shape), np.uint8),
                    spacing=tuple(s.spacing),
                    origin=tuple(s.origin),
                    direction=np.asarray(s.direction, float),
                    path=s.folder,
                )
    return None


def _frames(ds, path: Path) -> np.ndarray:
    try:
        pixels = np.asarray(ds.pixel_array)
    except Exception as exc:  # noqa: BLE001 - pydicom's decoders raise many types
        raise VolumeReadError(path, f"cannot decode the SEG frames: {exc}") from exc
    n = int(getattr(ds, "NumberOfFrames", 1) or 1)
    pixels = pixels.reshape(n, int(ds.Rows), int(ds.Columns))
    if str(getattr(ds, "SegmentationType", "BINARY")).upper() == "FRACTIONAL":
        top = float(getattr(ds, "MaximumFractionalValue", 255) or 255)
        return pixels >= top / 2.0
    return pixels > 0


def read_dicom_seg(path: str | os.PathLike, source=None) -> Volume:
    """A DICOM-SEG as a label volume on its source series' grid (see module docstring).

    ``source``: the source series (folder, one of its files, or its Volume) when it is
    not beside the SEG or named by a napari-vnet provenance record.
    Raises :class:`VolumeReadError` naming the file and the problem.
    """
    path = Path(path)
    pydicom = _pydicom(path)
    try:
        ds = pydicom.dcmread(str(path))
        values, classes = _segments(ds)
        series_uid = str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID)
    except (AttributeError, IndexError, KeyError, ValueError, TypeError) as exc:
        raise VolumeReadError(path, f"not a readable DICOM-SEG: {exc}") from exc
    frames = _frames(ds, path)
    try:
        grid = _find_source_grid(path, series_uid, source)
        from_source = grid is not None
        if grid is None:
            log.warning("%s: source series %s not found; using the frames' extent", path,
                        series_uid)  # fmt: skip
            grid = _grid_of_frames(ds, frames.shape[1], frames.shape[2])
        positions = _frame_positions(ds)
        numbers = [
            int(_item(g, "SegmentIdentificationSequence").ReferencedSegmentNumber)
            for g in ds.PerFrameFunctionalGroupsSequence
        ]
    except (AttributeError, IndexError, KeyError, ValueError, TypeError) as exc:
        raise VolumeReadError(path, f"not a readable DICOM-SEG: {exc}") from exc
    labels = _place_frames(path, grid, frames, positions, [values.get(n, n) for n in numbers])
    meta = {
        "format": "DICOM-SEG",
        "modality": "SEG",
        "classes": classes,
        "referenced_series_uid": series_uid,
        "grid_from": grid.path if from_source else "SEG frames",
    }
    return Volume(
        labels,
        spacing=tuple(grid.spacing),
        origin=tuple(grid.origin),
        direction=np.asarray(grid.direction, float),
        metadata=meta,
        path=str(path),
    )


def _place_frames(path: Path, grid: Volume, frames, positions, values) -> np.ndarray:
    """Each frame into its slice of ``grid`` (by its position; off-grid frames refused)."""
    shape = grid.array.shape
    if shape[1:] != frames.shape[1:]:
        raise VolumeReadError(
            path, f"frames of {frames.shape[1:]} pixels do not match the source {shape[1:]}"
        )
    top = max([0, *values])
    out = np.zeros(shape, np.uint8 if top < 256 else np.uint16)
    inv = np.linalg.inv(np.asarray(grid.direction, float))
    origin, spacing = np.asarray(grid.origin, float), np.asarray(grid.spacing, float)
    for f, (pos, value) in enumerate(zip(positions, values, strict=True)):
        k, j, i = (inv @ (pos[::-1] - origin)) / spacing  # (z, y, x) index of the frame
        kk = int(round(k))
        if abs(k - kk) > 0.1 or abs(j) > 0.1 or abs(i) > 0.1 or not 0 <= kk < shape[0]:
            raise VolumeReadError(
                path, f"frame {f + 1} at {tuple(pos)} mm is not a slice of the source grid"
            )
        out[kk][frames[f]] = value
    return out
