"""A folder of scans: its cases, their outputs, statistics and the run's summary.

Qt-free core behind ``napari-vnet predict INPUT_DIR --out OUT_DIR``; the run itself (read
ahead, segment each case with :mod:`napari_vnet.workflows.segment`, write in the
background, share the cases among processes) is :mod:`napari_vnet.workflows.batch_run`.

* :func:`discover_cases` lists every volume file and DICOM series under a folder (the
  worklist's header-only walk,
  :func:`napari_vnet.workflows.worklist_scan.discover_scans`) and names each case's
  outputs after its input (see :func:`output_stem`).
* :func:`plan_outputs` says where a case's outputs go; each gets a record
  (``<stem>_provenance.json``, :mod:`napari_vnet.workflows.batch_records`) naming the
  weights that made it.
* :func:`label_statistics` gives per-class voxel count, volume (ml) and mean/std of
  the image intensity; :func:`write_dicom_seg` writes a DICOM Segmentation object
  referencing the source series (highdicom, optional extra ``napari-vnet[dicom-seg]``);
  :func:`write_run_summary` writes ``summary.json`` and ``statistics.csv``.

Output naming (:func:`output_stem`, :func:`plan_outputs`): an input file
``INPUT_DIR/a/b/ct.nii.gz`` gives ``OUT_DIR/a/b/ct`` + extension; a DICOM series gives
its folder's relative path (``OUT_DIR/a/series``; the input folder's own name when the
series lies directly in INPUT_DIR; ``<folder>/<series description>`` when one folder
holds several series). The extension is the input's own when it is a writable format
(.nii.gz, .nii, .nrrd, .mha, .mhd), else .nii.gz (DICOM, .nhdr, .hdr, .gipl), unless
``fmt`` names one; ``fmt="dicom-seg"`` writes ``<stem>.dcm`` for DICOM inputs (others
as with "same"). Beside each label map: ``<stem>_statistics.json`` and
``<stem>_probabilities.npz`` when asked for.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = [
    "FORMATS",
    "Case",
    "CaseResult",
    "DicomSegUnavailableError",
    "OutputPlan",
    "discover_cases",
    "label_statistics",
    "output_stem",
    "plan_outputs",
    "require_highdicom",
    "statistics_rows",
    "write_dicom_seg",
    "write_run_summary",
]

#: ``--format`` choices: "same" (the input's own format when writable, else .nii.gz),
#: a writable extension, or "dicom-seg" (DICOM inputs only).
FORMATS = ("same", ".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", "dicom-seg")

STATISTICS_SUFFIX = "_statistics.json"
PROBABILITIES_SUFFIX = "_probabilities.npz"
STATISTICS_CSV_FIELDS = (
    "case",
    "input",
    "label",
    "name",
    "voxels",
    "volume_ml",
    "intensity_mean",
    "intensity_std",
)


class DicomSegUnavailableError(ImportError):
    """highdicom (the ``dicom-seg`` extra) is not installed."""


# ----------------------------------------------------------------------------- cases


@dataclass
class Case:
    """One input of a batch run: a volume file or a DICOM series."""

    key: str  # stable id (relative path; folder#SeriesInstanceUID for DICOM)
    path: str  # what napari_vnet.io.read_volume opens
    kind: str  # "file" | "dicom"
    stem: str  # output name relative to the output folder, without extension ("a/b/ct")
    source_ext: str = ""  # the input's extension (".nii.gz"...), "" for DICOM
    error: str | None = None  # header unreadable: reported, never predicted


def _volume_ext(name: str) -> str:
    from napari_vnet.workflows.worklist_scan import VOLUME_SUFFIXES

    low = name.lower()
    for suf in VOLUME_SUFFIXES:
        if low.endswith(suf):
            return suf
    return os.path.splitext(low)[1]


def _slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return s[:60] or "series"


def output_stem(entry, root: Path, n_series_in_folder: int = 1) -> str:
    """The output name (relative, posix, no extension) of a worklist entry."""
    if entry.kind == "dicom":
        rel_dir = entry.key.split("#", 1)[0]
        base = root.name if rel_dir in ("", ".") else rel_dir
        if n_series_in_folder > 1:
            desc = entry.name.split(" / ", 1)[-1]
            return f"{base}/{_slug(desc)}"
        return base
    ext = _volume_ext(entry.key)
    return entry.key[: len(entry.key) - len(ext)] if ext else entry.key


def discover_cases(
    root: str | os.PathLike,
    *,
    pattern: str | None = None,
    exclude: Iterable[str | os.PathLike] = (),
    outputs_in: str | os.PathLike | None = None,
) -> list[Case]:
    """Every volume file and DICOM series under ``root`` (recursively), sorted by key.

    ``pattern`` (shell wildcards, e.g. ``"*.nii.gz"`` or ``"patient*/*"``) keeps the
    cases whose relative path - or file name - matches; for a DICOM series the relative
    folder is matched. Only headers are read. Output names that would collide get the
    input's extension (files) or the series UID's last digits (DICOM) appended.
    The outputs of earlier runs recorded under ``outputs_in`` (files and DICOM-SEG
    series, :func:`napari_vnet.workflows.batch_records.recorded_outputs`; read after the listing,
    so that a label map written meanwhile is known too) are left out: outputs are never
    inputs.
    """
    from napari_vnet.workflows.batch_records import _norm, recorded_outputs
    from napari_vnet.workflows.worklist_scan import discover_scans

    root_path = Path(root).expanduser().resolve()
    entries = list(discover_scans(root_path, exclude=exclude))
    if outputs_in is not None:
        files, uids = recorded_outputs(outputs_in)
        entries = [
            e
            for e in entries
            if not (e.kind == "dicom" and e.series_uid and e.series_uid in uids)
            and not (e.kind != "dicom" and _norm(e.path) in files)
        ]
    per_folder: dict[str, int] = {}
    for e in entries:
        if e.kind == "dicom" and not e.broken:
            folder = e.key.split("#", 1)[0]
            per_folder[folder] = per_folder.get(folder, 0) + 1
    cases: list[Case] = []
    used: set[str] = set()
    for e in sorted(entries, key=lambda e: e.key):
        rel = e.key.split("#", 1)[0] if e.kind == "dicom" else e.key
        if pattern and not (
            fnmatch.fnmatch(rel, pattern) or fnmatch.fnmatch(os.path.basename(rel), pattern)
        ):
            continue
        if e.broken and e.kind == "dicom":
            stem = e.key
        else:
            stem = output_stem(e, root_path, per_folder.get(rel, 1))
        if stem.lower() in used:
            tail = (
                e.series_uid.replace(".", "")[-8:]
                if e.kind == "dicom"
                else _volume_ext(e.key).strip(".").replace(".", "_")
            )
            stem = f"{stem}_{tail}"
        used.add(stem.lower())
        cases.append(
            Case(
                key=e.key,
                path=e.path,
                kind=e.kind,
                stem=stem,
                source_ext="" if e.kind == "dicom" else _volume_ext(e.key),
                error=e.error,
            )
        )
    return cases


# --------------------------------------------------------------------------- outputs


@dataclass
class OutputPlan:
    """The files one case produces (the label map is written last)."""

    labels: Path
    fmt: str  # extension or "dicom-seg"
    statistics: Path | None = None
    probabilities: Path | None = None

    def files(self) -> list[Path]:
        return [p for p in (self.statistics, self.probabilities, self.labels) if p is not None]

    def complete(self) -> bool:
        return all(p.is_file() for p in self.files())

    @property
    def record(self) -> Path:
        """Which weights made these outputs (:mod:`napari_vnet.workflows.batch_records`)."""
        from napari_vnet.workflows.batch_records import record_path

        return record_path(self.labels)


def plan_outputs(
    case: Case,
    out_dir: str | os.PathLike,
    fmt: str = "same",
    *,
    statistics: bool = False,
    probabilities: bool = False,
) -> OutputPlan:
    """Where ``case``'s outputs go (see the module docstring for the naming rule)."""
    from napari_vnet.io import WRITE_EXTENSIONS

    if fmt not in FORMATS:
        raise ValueError(f"unknown output format {fmt!r}; choose from {', '.join(FORMATS)}")
    if fmt == "dicom-seg" and case.kind == "dicom":
        ext = ".dcm"
        kind = "dicom-seg"
    else:
        if fmt in ("same", "dicom-seg"):
            ext = case.source_ext if case.source_ext in WRITE_EXTENSIONS else ".nii.gz"
        else:
            ext = fmt
        kind = ext
    base = Path(out_dir) / case.stem
    return OutputPlan(
        labels=base.parent / (base.name + ext),
        fmt=kind,
        statistics=base.parent / (base.name + STATISTICS_SUFFIX) if statistics else None,
        probabilities=base.parent / (base.name + PROBABILITIES_SUFFIX) if probabilities else None,
    )


def _atomic_write(path: Path, write: Callable[[Any], None], *, binary: bool) -> None:
    """``write(file object)`` into a temporary file beside ``path``, then os.replace."""
    from napari_vnet._atomic import atomic_open

    with atomic_open(path, "wb" if binary else "w") as fh:
        write(fh)


def _write_json(path: Path, data: Any) -> None:
    _atomic_write(path, lambda fh: json.dump(data, fh, indent=1), binary=False)


# ------------------------------------------------------------------------ statistics


def _finite_or_none(x: float) -> float | None:
    return round(float(x), 6) if math.isfinite(x) else None


def label_statistics(labels: np.ndarray, volume, classes) -> list[dict[str, Any]]:
    """Per foreground class: voxel count, volume (ml) and mean/std of the image intensity.

    ``volume`` is the input :class:`~napari_vnet.io.Volume` (its spacing gives the voxel
    volume, its array the intensities - channel 0 of a multi-channel image);
    ``classes`` the card's :class:`~napari_vnet.models.ClassInfo` list. Every non-zero
    class of the card is listed, also when absent (0 voxels, mean/std None).
    """
    labels = np.asarray(labels)
    image = np.asarray(volume.array)
    if image.ndim == labels.ndim + 1:
        image = image[0]
    if image.shape != labels.shape:
        raise ValueError(f"image {image.shape} and labels {labels.shape} differ in shape")
    voxel_ml = float(np.prod([float(s) for s in volume.spacing[-3:]])) / 1000.0
    flat = labels.ravel().astype(np.intp, copy=False)
    n = int(flat.max(initial=0)) + 1
    counts = np.bincount(flat, minlength=n)
    values = image.ravel().astype(np.float64, copy=False)
    finite = np.isfinite(values)
    if not finite.all():
        values = np.where(finite, values, 0.0)
        counts_finite = np.bincount(flat, weights=finite.astype(np.float64), minlength=n)
    else:
        counts_finite = counts.astype(np.float64)
    sums = np.bincount(flat, weights=values, minlength=n)
    squares = np.bincount(flat, weights=values * values, minlength=n)
    rows = []
    for c in classes:
        v = int(c.value)
        if v == 0:
            continue
        count = int(counts[v]) if v < n else 0
        m = float(counts_finite[v]) if v < n else 0.0
        if m > 0:
            mean = float(sums[v]) / m
            var = max(float(squares[v]) / m - mean * mean, 0.0)
            mean_out, std_out = _finite_or_none(mean), _finite_or_none(math.sqrt(var))
        else:
            mean_out = std_out = None
        rows.append(
            {
                "label": v,
                "name": str(c.name),
                "voxels": count,
                "volume_ml": round(count * voxel_ml, 6),
                "intensity_mean": mean_out,
                "intensity_std": std_out,
            }
        )
    return rows


def statistics_rows(results: Iterable[CaseResult]) -> list[dict[str, Any]]:
    """One CSV row per case and class (cases without statistics are left out)."""
    rows = []
    for r in results:
        for s in r.statistics or []:
            rows.append({"case": r.stem, "input": r.input, **s})
    return rows


# ------------------------------------------------------------------------- DICOM-SEG


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


def write_dicom_seg(
    labels: np.ndarray, volume, card, path: str | os.PathLike, *, series_uid: str | None = None
) -> Path:
    """Write ``labels`` (on ``volume``'s grid, read from a DICOM series) as DICOM-SEG.

    One segment per foreground class of the card (its name and colour), a BINARY
    segmentation whose frames reference the source images (matched by their slice
    position, so the order the files were listed in does not matter). Readable by
    pydicom, highdicom, 3D Slicer (QuantitativeReporting) and OHIF.
    """
    hd, pydicom = require_highdicom()
    from pydicom.sr.codedict import codes

    path = Path(path)
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
    labels = np.asarray(labels)
    if labels.ndim != 3 or labels.shape[0] != len(sources):
        raise ValueError(
            f"{volume.path}: labels {labels.shape} do not match the {len(sources)} source slices"
        )
    # which slice of the volume each source image is
    origin = np.asarray(volume.origin, float)
    inv = np.linalg.inv(np.asarray(volume.direction, float))
    spacing = np.asarray(volume.spacing, float)
    index_of: dict[int, int] = {}
    for i, ds in enumerate(sources):
        ipp = np.asarray([float(v) for v in ds.ImagePositionPatient])[::-1]  # (z, y, x)
        k, j, q = (inv @ (ipp - origin)) / spacing
        kk = int(round(k))
        if abs(k - kk) > 0.1 or abs(j) > 0.1 or abs(q) > 0.1 or not 0 <= kk < labels.shape[0]:
            raise ValueError(f"{files[i]}: slice position {tuple(ipp)} is not on the volume's grid")
        index_of[i] = kk
    if len(set(index_of.values())) != len(sources):
        raise ValueError(f"{volume.path}: two source images share a slice position")
    fg = [c for c in card.classes if int(c.value) != 0]
    if not fg:
        raise ValueError("the model card lists no foreground class")
    if len(fg) > 65535:
        raise ValueError("too many classes for one DICOM-SEG")
    # label value -> segment number 1..n, in the card's class order
    lut = np.zeros(int(max(labels.max(initial=0), max(c.value for c in fg))) + 1, np.uint16)
    for n, c in enumerate(fg, start=1):
        lut[int(c.value)] = n
    frames = lut[labels[[index_of[i] for i in range(len(sources))]]]
    frames = frames.astype(np.uint8 if len(fg) < 256 else np.uint16)

    from napari_vnet import __version__

    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"napari-vnet {card.arch}",
        family=codes.cid7162.ArtificialIntelligence,
        version=__version__,
    )
    from napari_vnet.label_names import class_colors

    colors = class_colors(card.classes)  # every segment gets the colour napari shows
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=str(c.name)[:64] or f"label {c.value}",
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_id=f"label {int(c.value)}",
            tracking_uid=hd.UID(),
            display_color=_lab_color(hd, colors[int(c.value)]),
        )
        for n, c in enumerate(fg, start=1)
    ]
    first = sources[0]
    thickness = getattr(first, "SliceThickness", None)
    for ds in sources:  # highdicom reads it from the sources; a type-2 tag may be absent
        if getattr(ds, "SliceThickness", None) in (None, ""):
            ds.SliceThickness = float(volume.spacing[0])
    measures = hd.PixelMeasuresSequence(
        pixel_spacing=(float(volume.spacing[1]), float(volume.spacing[2])),  # rows, columns
        slice_thickness=float(thickness) if thickness else float(volume.spacing[0]),
        spacing_between_slices=float(volume.spacing[0]),
    )
    series_number = int(getattr(first, "SeriesNumber", 0) or 0) + 1000
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_uid or hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="napari-vnet",
        manufacturer_model_name=f"napari-vnet {card.arch}",
        software_versions=__version__,
        device_serial_number="0",
        series_description=f"napari-vnet {card.arch} segmentation"[:64],
        pixel_measures=measures,
        omit_empty_frames=True,
    )

    def save(fh) -> None:
        buf = io.BytesIO()
        seg.save_as(buf)
        fh.write(buf.getvalue())

    _atomic_write(path, save, binary=True)
    return path


# ----------------------------------------------------------------------------- running


@dataclass
class CaseResult:
    """What happened to one case."""

    key: str
    stem: str
    input: str
    status: str  # "written" | "skipped" | "failed"
    outputs: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0  # inference (incl. pre/post-processing)
    total_seconds: float = 0.0  # read to written
    shape: list[int] | None = None
    spacing: list[float] | None = None
    statistics: list[dict[str, Any]] | None = None
    rank: int = 0
    # where the time went: reading and writing (in their threads) and how long the
    # segmenting thread waited for them (with workers > 0 mostly hidden behind inference)
    read_s: float = 0.0
    prepare_s: float = 0.0  # the card's preprocessing, on the read-ahead thread
    read_wait_s: float = 0.0
    write_s: float = 0.0
    write_wait_s: float = 0.0
    # the weights that made this case's outputs (for a skipped case: an earlier run's)
    weights: str | None = None
    weights_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- summaries


def write_run_summary(
    results: Sequence[CaseResult],
    out_dir: str | os.PathLike,
    *,
    suffix: str = "",
    info: dict[str, Any] | None = None,
    statistics: bool = False,
) -> dict[str, Path]:
    """``summary<suffix>.json`` (every case's result) and, with ``statistics``,
    ``statistics<suffix>.csv`` (one row per case and class) in ``out_dir``; names that
    are not valid UTF-8 appear there with their undecodable bytes as ``\\xNN``."""
    from napari_vnet.workflows.batch_records import csv_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts = {s: sum(r.status == s for r in results) for s in ("written", "skipped", "failed")}
    timing = {
        k: round(sum(getattr(r, k) for r in results), 3)
        for k in ("read_s", "prepare_s", "read_wait_s", "write_s", "write_wait_s")
    }
    summary = {
        **(info or {}),
        "cases": len(results),
        **counts,
        "timing_totals_s": timing,
        "results": [r.to_dict() for r in sorted(results, key=lambda r: r.key)],
    }
    written = {"summary": out / f"summary{suffix}.json"}
    _write_json(written["summary"], summary)
    if statistics:
        rows = statistics_rows(sorted(results, key=lambda r: r.key))

        def save(fh) -> None:
            w = csv.DictWriter(fh, fieldnames=STATISTICS_CSV_FIELDS, lineterminator="\n")
            w.writeheader()
            for row in rows:
                w.writerow(
                    {k: "" if row.get(k) is None else csv_text(row.get(k)) for k in w.fieldnames}
                )

        written["statistics"] = out / f"statistics{suffix}.csv"
        _atomic_write(written["statistics"], save, binary=False)
    return written
