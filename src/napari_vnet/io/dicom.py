"""DICOM series discovery from headers only (no pixel data is read).

:func:`list_dicom_series` groups the DICOM files of a folder into series (by
SeriesInstanceUID, split further by orientation and matrix size, the way a scanner
console shows them), orders each series' files by slice position along the slice
normal, and reports patient / study / series descriptions and the geometry the series
will have once read, in the package's (z, y, x) convention.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import numpy as np

from napari_vnet.io.dicom_lengths import dicom_length_problem
from napari_vnet.io.dicom_tilt import slice_shear
from napari_vnet.io.errors import VolumeReadError
from napari_vnet.io.headers import DICOM_EXTENSIONS, dicom_preamble, read_head

log = logging.getLogger(__name__)


# tag -> attribute name, read from every file header
_TAGS = {
    "0020|000e": "series_uid",
    "0020|000d": "study_uid",
    "0008|103e": "description",
    "0008|1030": "study_description",
    "0010|0010": "patient_name",
    "0010|0020": "patient_id",
    "0008|0060": "modality",
    "0008|0020": "study_date",
    "0020|0011": "series_number",
    "0020|0013": "instance_number",
    "0020|0032": "position",
    "0020|0037": "orientation",
    "0028|0010": "rows",
    "0028|0011": "columns",
    "0028|0030": "pixel_spacing",
    "0028|0008": "frames",
    "0028|1050": "window_center",
    "0028|1051": "window_width",
    "0018|0050": "slice_thickness",
}


def is_dicom_file(path: str | os.PathLike) -> bool:
    """Cheap check: the DICOM preamble magic ("DICM" at byte 128) or a DICOM extension."""
    p = Path(path)
    if p.name.upper() == "DICOMDIR":  # an index, not an image
        return False
    head = read_head(p, 132)  # None for a FIFO or device: it would block or never end
    if head is None:
        return False
    return dicom_preamble(head) or (p.suffix.lower() in DICOM_EXTENSIONS and len(head) > 0)


def _floats(text: str) -> list[float]:
    out = []
    for part in text.replace(",", ".").split("\\"):
        part = part.strip()
        if part:
            try:
                out.append(float(part))
            except ValueError:
                return []
    return out


@overload
def _int(text: str) -> int | None: ...
@overload
def _int(text: str, default: int) -> int: ...
def _int(text: str, default: int | None = None) -> int | None:
    try:
        return int(float(text.strip()))
    except (ValueError, AttributeError):
        return default


@dataclass
class _FileInfo:
    path: str
    tags: dict[str, str]
    size: tuple[int, ...]  # ITK (x, y, z) order
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @property
    def orientation(self) -> tuple[float, ...] | None:
        v = _floats(self.tags.get("orientation", ""))
        return tuple(v) if len(v) == 6 else None

    @property
    def position(self) -> tuple[float, ...] | None:
        v = _floats(self.tags.get("position", ""))
        return tuple(v) if len(v) == 3 else None


def _positions(infos: list[_FileInfo]) -> list[tuple[float, ...]] | None:
    """The image position of each slice, or None when one has none."""
    positions = []
    for info in infos:
        position = info.position
        if position is None:
            return None
        positions.append(position)
    return positions


def _read_file_info(path: str) -> _FileInfo | None:
    """Header of one file; cached on (path, size, mtime) so rescanning a folder is cheap."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return _read_file_info_cached(path, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=1 << 16)
def _read_file_info_cached(path: str, size: int, mtime_ns: int) -> _FileInfo | None:
    import SimpleITK as sitk

    from napari_vnet.io.paths import itk_name

    problem = dicom_length_problem(path)
    if problem:
        log.info("skipping %s: %s", path, problem)
        return None
    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.LoadPrivateTagsOff()
    try:
        with itk_name(path) as itk_path:
            reader.SetFileName(itk_path)
            reader.ReadImageInformation()
    except RuntimeError as exc:  # not an image DICOM (SR, RT struct...) or broken
        log.debug("skipping %s: %s", path, exc)
        return None
    keys = set(reader.GetMetaDataKeys())
    tags = {name: reader.GetMetaData(tag).strip() for tag, name in _TAGS.items() if tag in keys}
    if "rows" not in tags:
        return None
    return _FileInfo(
        path=path,
        tags=tags,
        size=tuple(reader.GetSize()),
        spacing=tuple(reader.GetSpacing()),
        origin=tuple(reader.GetOrigin()),
        direction=tuple(reader.GetDirection()),
    )


@dataclass
class DicomSeries:
    """One DICOM series found on disk (header information only).

    ``files`` are ordered by slice position along the slice normal (ascending), i.e. the
    order in which they become ``array[0], array[1], ...`` of :func:`read_volume`.
    ``shape``, ``spacing``, ``origin`` and ``direction`` follow the package's (z, y, x)
    geometry contract and predict what :func:`napari_vnet.io.read_volume` returns.
    """

    uid: str  # SeriesInstanceUID ("" when the files carry none)
    key: str  # unique id within one listing (uid, or uid#n / a hash when needed)
    description: str
    patient_name: str
    patient_id: str
    study_uid: str
    study_description: str
    study_date: str
    modality: str
    series_number: int | None
    files: tuple[str, ...]
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: list[list[float]]
    window: tuple[float, float] | None = None  # first (centre, width) pair, if any
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def folder(self) -> str:
        return os.path.dirname(self.files[0])

    @property
    def name(self) -> str:
        """A human name for the series (description, else modality + number, else folder)."""
        if self.description:
            return self.description
        if self.modality and self.series_number is not None:
            return f"{self.modality} series {self.series_number}"
        return os.path.basename(self.folder) or "DICOM series"

    def header(self) -> dict[str, Any]:
        """The :func:`napari_vnet.io.read_header` dict of this series."""
        return {
            "path": self.folder,
            "format": "DICOM",
            "shape": tuple(self.shape),
            "spacing": tuple(self.spacing),
            "origin": tuple(self.origin),
            "direction": [list(r) for r in self.direction],
            "pixel_type": "",  # known only once SimpleITK applies rescale slope/intercept
            "n_components": 1,
            "description": self.name,
            "modality": self.modality,
            "patient_name": self.patient_name,
            "patient_id": self.patient_id,
            "study_date": self.study_date,
            "series_uid": self.uid,
            "series_key": self.key,
            "n_files": len(self.files),
            "window": self.window,
        }


def _candidate_files(folder: Path, recursive: bool) -> list[str]:
    out: list[str] = []
    if recursive:
        for root, dirs, files in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            out.extend(os.path.join(root, f) for f in sorted(files) if not f.startswith("."))
    else:
        with os.scandir(folder) as it:
            out = sorted(e.path for e in it if e.is_file() and not e.name.startswith("."))
    return [f for f in out if is_dicom_file(f)]


def _normal(orientation: tuple[float, ...]) -> np.ndarray:
    r = np.asarray(orientation[:3], float)
    c = np.asarray(orientation[3:], float)
    return np.cross(r, c)


def _group_key(info: _FileInfo) -> tuple:
    t = info.tags
    o = info.orientation
    o_key = tuple(round(v, 3) for v in o) if o else None
    uid = t.get("series_uid", "")
    if uid:
        return (uid, o_key, t.get("rows"), t.get("columns"))
    # anonymised files without a SeriesInstanceUID: fall back on what a console shows
    return (
        "",
        t.get("study_uid", ""),
        t.get("series_number", ""),
        t.get("description", ""),
        o_key,
        t.get("rows"),
        t.get("columns"),
    )


def _series_geometry(infos: list[_FileInfo]):
    """(ordered infos, shape zyx, spacing zyx, origin zyx, direction zyx, shear or None);
    a sheared series (gantry tilt) gets the orthogonal grid that holds all its slices."""
    first = infos[0]
    if len(infos) == 1:  # one file, maybe multi-frame: trust ITK's own header reading
        size = first.size
        dim = len(size)
        d = np.asarray(first.direction, float).reshape(dim, dim)
        return (
            infos,
            tuple(int(s) for s in reversed(size)),
            tuple(reversed(first.spacing)),
            tuple(reversed(first.origin)),
            d[::-1, ::-1],
            None,
        )
    o = first.orientation
    shear = None
    positions = _positions(infos)
    if o is not None and positions is not None:
        n = _normal(o)
        where = {id(i): p for i, p in zip(infos, positions, strict=True)}
        proj = {id(i): float(np.dot(p, n)) for i, p in zip(infos, positions, strict=True)}
        infos = sorted(
            infos, key=lambda i: (proj[id(i)], _int(i.tags.get("instance_number", ""), 0))
        )
        positions = [where[id(i)] for i in infos]
        steps = np.diff([proj[id(i)] for i in infos])
        dz = float(np.median(steps)) if len(steps) else 0.0
        r = np.asarray(o[:3], float)
        c = np.asarray(o[3:], float)
        d_itk = np.stack([r, c, n], axis=1)
        origin_itk = np.asarray(positions[0], float)
    else:  # no positions: order by instance number, identity geometry along the stack
        infos = sorted(infos, key=lambda i: _int(i.tags.get("instance_number", ""), 0))
        dz = 0.0
        d_itk = np.asarray(first.direction, float).reshape(3, 3)
        origin_itk = np.asarray(first.origin, float)
    if dz <= 1e-6:
        dz = (_floats(first.tags.get("slice_thickness", "")) or [1.0])[0]
    ps = _floats(first.tags.get("pixel_spacing", ""))  # (row spacing = dy, column spacing = dx)
    dy, dx = (ps[0], ps[1]) if len(ps) == 2 else (first.spacing[1], first.spacing[0])
    rows = _int(first.tags.get("rows", ""), first.size[1])
    cols = _int(first.tags.get("columns", ""), first.size[0])
    if o is not None and positions is not None:
        shear = slice_shear(positions, o, (dy, dx), (rows, cols))
    if shear is not None:  # the grid widened to hold every slice at its true place
        rows, cols = shear.shape
        j0, i0 = shear.start
        origin_itk = origin_itk + i0 * dx * d_itk[:, 0] + j0 * dy * d_itk[:, 1]
    return (
        infos,
        (len(infos), rows, cols),
        (dz, dy, dx),
        tuple(reversed(tuple(float(v) for v in origin_itk))),
        d_itk[::-1, ::-1],
        shear,
    )


def _drop_duplicate_slices(infos: list[_FileInfo]) -> tuple[list[_FileInfo], str | None]:
    """Slices at the position of another slice of the series (a file copied twice, a
    re-sent slice) left out, keeping the lowest instance number; with a note saying which.
    Without that, the duplicate made a zero step, a wrong slice spacing and a "missing
    slice" warning."""
    positions = _positions(infos)
    if len(infos) < 2 or positions is None:
        return infos, None
    ordered = sorted(
        zip(infos, positions, strict=True),
        key=lambda ip: (_int(ip[0].tags.get("instance_number", ""), 0), ip[0].path),
    )
    kept: dict[tuple, _FileInfo] = {}
    dropped: list[str] = []
    for info, position in ordered:
        key = tuple(round(v, 3) for v in position)
        if key in kept:
            dropped.append(os.path.basename(info.path))
        else:
            kept[key] = info
    if not dropped:
        return infos, None
    shown = ", ".join(dropped[:5]) + (" …" if len(dropped) > 5 else "")
    return list(kept.values()), (
        f"{len(dropped)} duplicated slice(s) at the position of another slice left out "
        f"({shown})"
    )


def _irregular_spacing(infos: list[_FileInfo]) -> str | None:
    """Why the slice distances of a position-ordered series are not uniform (a missing
    slice, a duplicated one), or None when they are."""
    o = infos[0].orientation
    positions = _positions(infos)
    if len(infos) < 3 or o is None or positions is None:
        return None
    n = _normal(o)
    steps = np.diff([float(np.dot(p, n)) for p in positions])
    dz = float(np.median(steps))
    bad = np.flatnonzero(np.abs(steps - dz) > max(0.1 * abs(dz), 1e-3))
    if not len(bad):
        return None
    k = int(bad[0])
    return (
        f"irregular slice spacing: {len(bad)} of {len(steps)} slice distances differ from "
        f"{dz:g} mm (first between slices {k} and {k + 1}: {steps[k]:g} mm); a slice may "
        "be missing, so distances along the slice axis are wrong there"
    )


def _window(tags: dict[str, str]) -> tuple[float, float] | None:
    c = _floats(tags.get("window_center", ""))
    w = _floats(tags.get("window_width", ""))
    if c and w and w[0] > 0:
        return (c[0], w[0])
    return None


def list_dicom_series(folder: str | os.PathLike, *, recursive: bool = False) -> list[DicomSeries]:
    """All image series under ``folder`` (headers only), by patient, study and series number.

    Files that are not DICOM images (DICOMDIR, structured reports, other files) are
    skipped. Raises :class:`VolumeReadError` if ``folder`` is not a readable folder;
    returns ``[]`` for a folder without DICOM images.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise VolumeReadError(folder, "not a folder")
    try:
        candidates = _candidate_files(folder, recursive)
    except OSError as exc:
        raise VolumeReadError(folder, f"cannot list the folder ({exc})") from exc
    groups: dict[tuple, list[_FileInfo]] = {}
    for path in candidates:
        info = _read_file_info(path)
        if info is not None:
            groups.setdefault(_group_key(info), []).append(info)

    series: list[DicomSeries] = []
    uid_count: dict[str, int] = {}
    for infos in groups.values():
        infos, duplicates = _drop_duplicate_slices(infos)
        infos, shape, spacing, origin, direction, shear = _series_geometry(infos)
        t = infos[0].tags
        uid = t.get("series_uid", "")
        if uid:
            uid_count[uid] = uid_count.get(uid, 0) + 1
            key = uid if uid_count[uid] == 1 else f"{uid}#{uid_count[uid]}"
        else:
            # os.fsencode: a file name that is not UTF-8 (PEP 383 surrogates) hashes too
            digest = hashlib.sha1(b"\n".join(os.fsencode(i.path) for i in infos)).hexdigest()
            key = f"nouid-{digest[:12]}"
        series.append(
            DicomSeries(
                uid=uid,
                key=key,
                description=t.get("description", ""),
                patient_name=t.get("patient_name", "").replace("^", " ").strip(),
                patient_id=t.get("patient_id", ""),
                study_uid=t.get("study_uid", ""),
                study_description=t.get("study_description", ""),
                study_date=t.get("study_date", ""),
                modality=t.get("modality", ""),
                series_number=_int(t.get("series_number", "")),
                files=tuple(i.path for i in infos),
                shape=shape,
                spacing=tuple(float(v) for v in spacing),
                origin=tuple(float(v) for v in origin),
                direction=np.asarray(direction, float).tolist(),
                window=_window(t),
                extra={
                    "irregular_spacing": _irregular_spacing(infos),
                    "duplicate_slices": duplicates,
                    "shear": shear,
                },
            )
        )
    series.sort(
        key=lambda s: (
            s.patient_id,
            s.study_date,
            s.study_uid,
            s.series_number if s.series_number is not None else 1 << 30,
            s.key,
        )
    )
    return series


def find_series_of_file(path: str | os.PathLike) -> DicomSeries | None:
    """The series (within the file's own folder) that holds ``path``, or None."""
    path = os.path.abspath(path)
    for s in list_dicom_series(os.path.dirname(path)):
        if any(os.path.abspath(f) == path for f in s.files):
            return s
    return None


def select_series(
    series: list[DicomSeries], which: int | str | DicomSeries | None, folder
) -> DicomSeries:
    """Pick one series by index, uid/key or object; ``None`` is fine only if there is one."""
    if not series:
        raise VolumeReadError(folder, "no DICOM image series found in this folder")
    if isinstance(which, DicomSeries):
        return which
    if which is None:
        if len(series) == 1:
            return series[0]
        names = "; ".join(
            f"[{n}] {s.name} ({s.shape[0]} slices, key {s.key})" for n, s in enumerate(series)
        )
        raise VolumeReadError(
            folder, f"the folder holds {len(series)} DICOM series, choose one with series=: {names}"
        )
    if isinstance(which, int):
        if not -len(series) <= which < len(series):
            raise VolumeReadError(
                folder, f"series index {which} out of range (0..{len(series) - 1})"
            )
        return series[which]
    for s in series:
        if which in (s.key, s.uid) and which:
            return s
    raise VolumeReadError(folder, f"no series with uid/key {which!r}")
