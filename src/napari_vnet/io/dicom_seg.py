"""DICOM Segmentation objects (SEG): written from a label map, read back as one.

:func:`write_dicom_seg` (highdicom, the optional extra ``napari-vnet[dicom-seg]``)
writes one BINARY segment per foreground class of a model card, its frames referencing
the source series' images; each segment is coded (SNOMED CT anatomy from the class name,
:mod:`napari_vnet.io.dicom_codes`) and names napari-vnet, its version and the model.

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

import io
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from napari_vnet.errors import NapariVnetError
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
    for f, (pos, value) in enumerate(zip(positions, values, strict=True)):
        kk = _slice_index(grid, pos[::-1], shape[0])
        if kk is None:
            raise VolumeReadError(
                path, f"frame {f + 1} at {tuple(pos)} mm is not a slice of the source grid"
            )
        out[kk][frames[f]] = value
    return out


def _slice_index(grid, position_zyx, n_slices: int) -> int | None:
    """The slice of ``grid`` (a Volume's geometry) a plane at ``position_zyx`` (mm) is,
    None when it lies off the grid's slices (by more than 0.1 voxel)."""
    inv = np.linalg.inv(np.asarray(grid.direction, float))
    origin, spacing = np.asarray(grid.origin, float), np.asarray(grid.spacing, float)
    k, j, i = (inv @ (np.asarray(position_zyx, float) - origin)) / spacing
    kk = int(round(k))
    if abs(k - kk) > 0.1 or abs(j) > 0.1 or abs(i) > 0.1 or not 0 <= kk < n_slices:
        return None
    return kk


# --------------------------------------------------------------------------- writing


class DicomSegUnavailableError(NapariVnetError, ImportError):
    """highdicom (the ``dicom-seg`` extra) is not installed."""


def require_highdicom():
    """``(highdicom, pydicom)``, or DicomSegUnavailableError saying what to install."""
    try:
        import highdicom
        import pydicom
    except ImportError as exc:
        raise DicomSegUnavailableError(
            "--format dicom-seg needs highdicom: pip install 'napari-vnet[dicom-seg]' "
            f"(or pip install highdicom) ({exc})"
        ) from exc
    return highdicom, pydicom


def _lab_color(hd, rgba) -> Any:
    if rgba is None:
        return None
    rgb = tuple(int(round(255 * min(max(float(c), 0.0), 1.0))) for c in rgba[:3])
    return hd.color.CIELabColor.from_rgb(*rgb)


def _source_dataset(pydicom, path: str):
    """A source image's header; SOP class/instance UIDs blanked by an anonymiser are
    taken from the file meta information (where they must also be)."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    meta = getattr(ds, "file_meta", None)
    for tag, meta_tag in (
        ("SOPClassUID", "MediaStorageSOPClassUID"),
        ("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
    ):
        if not str(getattr(ds, tag, "") or ""):
            value = str(getattr(meta, meta_tag, "") or "") if meta is not None else ""
            if not value:
                raise ValueError(f"{path}: no {tag}; a DICOM-SEG cannot reference this image")
            setattr(ds, tag, value)
    return ds


def _source_datasets(hd, pydicom, volume, path: Path) -> tuple[list[str], list]:
    """The files and headers of the series ``volume`` was read from (one Study Instance
    UID for all, a new one when an anonymiser blanked it)."""
    files = list(volume.metadata.get("source_files") or [])
    if not files:
        raise ValueError(f"{volume.path}: not read from a DICOM series; DICOM-SEG needs one")
    sources = [_source_dataset(pydicom, f) for f in files]
    if not str(getattr(sources[0], "StudyInstanceUID", "") or ""):
        # anonymisers sometimes blank it; the SEG needs one (it will not join a study)
        log.warning("%s: the source series has no Study Instance UID; using a new one", path)
        study = hd.UID()
        for ds in sources:
            ds.StudyInstanceUID = study
    return files, sources


def _source_frames(labels: np.ndarray, volume, files: list[str], sources: list) -> np.ndarray:
    """The slice of ``labels`` under each source image (in the sources' order), found by
    the image's position, so the order the files were listed in does not matter."""
    if labels.ndim != 3 or labels.shape[0] != len(sources):
        raise ValueError(
            f"{volume.path}: labels {labels.shape} do not match the {len(sources)} source slices"
        )
    index_of: list[int] = []
    for name, ds in zip(files, sources, strict=True):
        ipp = np.asarray([float(v) for v in ds.ImagePositionPatient])[::-1]  # (z, y, x)
        kk = _slice_index(volume, ipp, labels.shape[0])
        if kk is None:
            raise ValueError(f"{name}: slice position {tuple(ipp)} is not on the volume's grid")
        index_of.append(kk)
    if len(set(index_of)) != len(sources):
        raise ValueError(f"{volume.path}: two source images share a slice position")
    return labels[index_of]


def _segment_frames(frames: np.ndarray, foreground: list) -> np.ndarray:
    """Label values -> segment numbers 1..n (in the card's class order; 0 elsewhere)."""
    top = int(max(frames.max(initial=0), max(c.value for c in foreground)))
    lut = np.zeros(top + 1, np.uint16)
    for n, c in enumerate(foreground, start=1):
        lut[int(c.value)] = n
    return lut[frames].astype(np.uint8 if len(foreground) < 256 else np.uint16)


def model_name(card, weights: str | os.PathLike | None = None) -> str:
    """The name of the model a segmentation came from: the weights' name (a shipped name
    or the file's stem), else where foreign weights come from, else the network."""
    if weights is not None and str(weights):
        path = Path(weights)
        name = path.name if path.is_dir() else path.stem
        origin = card.origin()
        return f"{name} ({origin})" if origin and origin != name else name
    return card.origin() or f"napari-vnet {card.arch}"


def _segment_descriptions(hd, card, foreground: list, model: str) -> list:
    """One description per foreground class: its name, coded anatomy (SNOMED CT, from
    the class name; "Tissue" when nothing fits), napari's colour for it, napari-vnet and
    its version as the algorithm (the model's name among its parameters), and its label
    value in ``TrackingID`` (so :func:`read_dicom_seg` gives the values back)."""
    from pydicom.sr.codedict import codes

    from napari_vnet import __version__
    from napari_vnet.io.dicom_codes import segment_codes
    from napari_vnet.io.label_names import class_colors

    algorithm = hd.AlgorithmIdentificationSequence(
        name="napari-vnet",
        family=codes.cid7162.ArtificialIntelligence,
        version=__version__,
        source=model[:64],
        parameters={"model": model, "network": card.arch},
    )
    colors = class_colors(card.classes)  # every segment gets the colour napari shows
    out = []
    for n, c in enumerate(foreground, start=1):
        coded = segment_codes(c.name)
        segment = hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=str(c.name)[:64] or f"label {c.value}",
            segmented_property_category=coded.category,
            segmented_property_type=coded.type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_id=f"label {int(c.value)}",
            tracking_uid=hd.UID(),
            display_color=_lab_color(hd, colors[int(c.value)]),
        )
        if coded.modifier is not None:  # left, right, or both of a paired organ
            m = coded.modifier
            type_item = segment.SegmentedPropertyTypeCodeSequence[0]
            type_item.SegmentedPropertyTypeModifierCodeSequence = [
                hd.sr.CodedConcept(m.value, m.scheme_designator, m.meaning)
            ]
        out.append(segment)
    return out


def _pixel_measures(hd, volume, sources: list):
    """Pixel spacing and slice spacing of the volume; the first source's thickness (or
    the slice spacing, also filled into sources that lack the type-2 tag)."""
    thickness = getattr(sources[0], "SliceThickness", None)
    for ds in sources:  # highdicom reads it from the sources; a type-2 tag may be absent
        if getattr(ds, "SliceThickness", None) in (None, ""):
            ds.SliceThickness = float(volume.spacing[0])
    return hd.PixelMeasuresSequence(
        pixel_spacing=(float(volume.spacing[1]), float(volume.spacing[2])),  # rows, columns
        slice_thickness=float(thickness) if thickness else float(volume.spacing[0]),
        spacing_between_slices=float(volume.spacing[0]),
    )


def write_dicom_seg(
    labels: np.ndarray,
    volume,
    card,
    path: str | os.PathLike,
    *,
    series_uid: str | None = None,
    weights: str | os.PathLike | None = None,
) -> Path:
    """Write ``labels`` (on ``volume``'s grid, read from a DICOM series) as DICOM-SEG.

    One segment per foreground class of the card (its name, SNOMED CT codes and colour;
    ``weights``: the weights' path or shipped name, for the model's name), a BINARY
    segmentation whose frames reference the source images (matched by their slice
    position, so the order the files were listed in does not matter). Readable by
    pydicom, highdicom, 3D Slicer (QuantitativeReporting) and OHIF. The file is
    written atomically.
    """
    hd, pydicom = require_highdicom()
    from napari_vnet import __version__
    from napari_vnet._atomic import atomic_open

    path = Path(path)
    files, sources = _source_datasets(hd, pydicom, volume, path)
    frames = _source_frames(np.asarray(labels), volume, files, sources)
    foreground = [c for c in card.classes if int(c.value) != 0]
    if not foreground:
        raise ValueError("the model card lists no foreground class")
    if len(foreground) > 65535:
        raise ValueError("too many classes for one DICOM-SEG")
    model = model_name(card, weights)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=_segment_frames(frames, foreground),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_segment_descriptions(hd, card, foreground, model),
        series_instance_uid=series_uid or hd.UID(),
        series_number=int(getattr(sources[0], "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="napari-vnet",
        manufacturer_model_name=f"napari-vnet {card.arch}",
        software_versions=__version__,
        device_serial_number="0",
        series_description=f"napari-vnet {card.arch} segmentation"[:64],
        pixel_measures=_pixel_measures(hd, volume, sources),
        omit_empty_frames=True,
    )
    buf = io.BytesIO()
    seg.save_as(buf)
    with atomic_open(path, "wb") as fh:
        fh.write(buf.getvalue())
    return path
