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
  the image intensity; :func:`napari_vnet.io.dicom_seg.write_dicom_seg` writes a DICOM
  Segmentation object referencing the source series (highdicom, optional extra
  ``napari-vnet[dicom-seg]``).

Output naming (:func:`output_stem`, :func:`plan_outputs`): an input file
``INPUT_DIR/a/b/ct.nii.gz`` gives ``OUT_DIR/a/b/ct`` + extension; nnU-Net's channel
files ``a/CASE_0000.nii.gz``, ``a/CASE_0001.nii.gz``... (one case,
:mod:`napari_vnet.workflows.batch_channels`) give ``OUT_DIR/a/CASE``; a DICOM series gives
its folder's relative path (``OUT_DIR/a/series``; the input folder's own name when the
series lies directly in INPUT_DIR; ``<folder>/<series description>`` when one folder
holds several series). The extension is the input's own when it is a writable format
(.nii.gz, .nii, .nrrd, .mha, .mhd), else .nii.gz (DICOM, .nhdr, .hdr, .gipl), unless
``fmt`` names one; ``fmt="dicom-seg"`` (or ``"dicom-rtstruct"``) writes ``<stem>.dcm``
for DICOM inputs (others as with "same"). Beside each label map: ``<stem>_statistics.json`` and
``<stem>_probabilities.npz`` when asked for.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_vnet.io.headers import VOLUME_SUFFIXES, known_suffix
from napari_vnet.io.paths import slug

log = logging.getLogger(__name__)

__all__ = [
    "FORMATS",
    "Case",
    "CaseResult",
    "OutputPlan",
    "discover_cases",
    "label_statistics",
    "output_stem",
    "plan_outputs",
    "statistics_rows",
    "write_run_summary",
]

#: ``--format`` choices: "same" (the input's own format when writable, else .nii.gz),
#: a writable extension, "dicom-seg" or "dicom-rtstruct" (DICOM inputs only).
FORMATS = ("same", ".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", "dicom-seg", "dicom-rtstruct")
DICOM_FORMATS = ("dicom-seg", "dicom-rtstruct")  # written for DICOM inputs only

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
    #: nnU-Net's channel files of the case (``CASE_0000``, ``CASE_0001``... in channel
    #: order; ``path`` is the first): read as one multi-channel volume
    channels: tuple[str, ...] = ()

    @property
    def files(self) -> tuple[str, ...]:
        """Every input file of the case."""
        return self.channels or (self.path,)


def output_stem(entry, root: Path, n_series_in_folder: int = 1) -> str:
    """The output name (relative, posix, no extension) of a worklist entry."""
    if entry.kind == "dicom":
        rel_dir = entry.key.split("#", 1)[0]
        base = root.name if rel_dir in ("", ".") else rel_dir
        if n_series_in_folder > 1:
            desc = entry.name.split(" / ", 1)[-1]
            return f"{base}/{slug(desc, fallback='series')}"
        return base
    ext = known_suffix(entry.key, VOLUME_SUFFIXES)
    return entry.key[: len(entry.key) - len(ext)] if ext else entry.key


def _not_outputs(entries: list, outputs_in: str | os.PathLike | None) -> list:
    """The worklist ``entries`` that are no output recorded under ``outputs_in``."""
    from napari_vnet.workflows.batch_records import _norm, recorded_outputs

    if outputs_in is None:
        return entries
    files, uids = recorded_outputs(outputs_in)
    return [
        e
        for e in entries
        if not (e.kind == "dicom" and e.series_uid and e.series_uid in uids)
        and not (e.kind != "dicom" and _norm(e.path) in files)
    ]


def discover_cases(
    root: str | os.PathLike,
    *,
    pattern: str | None = None,
    exclude: Iterable[str | os.PathLike] = (),
    outputs_in: str | os.PathLike | None = None,
    in_channels: int | None = None,
) -> list[Case]:
    """Every volume file and DICOM series under ``root`` (recursively), sorted by key.

    ``pattern`` (shell wildcards, e.g. ``"*.nii.gz"`` or ``"patient*/*"``) keeps the
    cases whose relative path - or file name - matches (a multi-channel case: any of its
    files); for a DICOM series the relative folder is matched. Only headers are read.
    Output names that would collide get the input's extension (files) or the series
    UID's last digits (DICOM) appended. nnU-Net's channel files ``CASE_0000``,
    ``CASE_0001``... become one case named ``CASE`` (``in_channels``: the model's input
    channels; :func:`napari_vnet.workflows.batch_channels.channel_groups` states when).
    The outputs of earlier runs recorded under ``outputs_in`` (files and DICOM-SEG
    series, :func:`napari_vnet.workflows.batch_records.recorded_outputs`; read after the listing,
    so that a label map written meanwhile is known too) are left out: outputs are never
    inputs.
    """
    from napari_vnet.workflows.batch_channels import channel_groups
    from napari_vnet.workflows.worklist_scan import discover_scans

    root_path = Path(root).expanduser().resolve()
    entries = _not_outputs(list(discover_scans(root_path, exclude=exclude)), outputs_in)
    per_folder: dict[str, int] = {}
    for e in entries:
        if e.kind == "dicom" and not e.broken:
            folder = e.key.split("#", 1)[0]
            per_folder[folder] = per_folder.get(folder, 0) + 1
    cases: list[Case] = []
    used: set[str] = set()
    entries.sort(key=lambda e: e.key)
    for group in channel_groups(entries, in_channels):
        e = group.entries[0]
        rels = [x.key.split("#", 1)[0] if x.kind == "dicom" else x.key for x in group.entries]
        if pattern and not any(
            fnmatch.fnmatch(rel, pattern) or fnmatch.fnmatch(os.path.basename(rel), pattern)
            for rel in rels
        ):
            continue
        if group.stem is not None:
            stem = group.stem
        elif e.broken and e.kind == "dicom":
            stem = e.key
        else:
            stem = output_stem(e, root_path, per_folder.get(rels[0], 1))
        if stem.lower() in used:
            tail = (
                e.series_uid.replace(".", "")[-8:]
                if e.kind == "dicom"
                else known_suffix(e.key, VOLUME_SUFFIXES).strip(".").replace(".", "_")
            )
            stem = f"{stem}_{tail}"
        used.add(stem.lower())
        cases.append(
            Case(
                key=e.key,
                path=e.path,
                kind=e.kind,
                stem=stem,
                source_ext="" if e.kind == "dicom" else known_suffix(e.key, VOLUME_SUFFIXES),
                error=e.error or group.error,
                channels=group.paths if group.stem is not None else (),
            )
        )
    return cases


# --------------------------------------------------------------------------- outputs


@dataclass
class OutputPlan:
    """The files one case produces (the label map is written last)."""

    labels: Path
    fmt: str  # extension, "dicom-seg" or "dicom-rtstruct"
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
    if fmt in DICOM_FORMATS and case.kind == "dicom":
        ext = ".dcm"
        kind = fmt
    else:
        if fmt in ("same", *DICOM_FORMATS):
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
    volume, its array the intensities - channel 0 of a multi-channel image, channels
    last or first);
    ``classes`` the card's :class:`~napari_vnet.models.ClassInfo` list. Every non-zero
    class of the card is listed, also when absent (0 voxels, mean/std None).
    """
    labels = np.asarray(labels)
    image = np.asarray(volume.array)
    if image.ndim == labels.ndim + 1:
        image = image[..., 0] if image.shape[:-1] == labels.shape else image[0]
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
    threads: int | None = None  # torch intra-op threads of the inference
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
