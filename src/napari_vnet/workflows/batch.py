"""Batch prediction over a folder of scans: cases, prefetch, background writing, statistics.

Qt-free core behind ``napari-vnet predict INPUT_DIR --out OUT_DIR``.

* :func:`discover_cases` lists every volume file and DICOM series under a folder (the
  worklist's header-only walk, :func:`napari_vnet.workflows.worklist_scan.discover_scans`) and names
  each case's outputs after its input (see :func:`output_stem`).
* :func:`shard` gives one process its share of the cases: nnU-Net's
  ``--num-parts N --part-id K`` convention (``cases[K::N]``), then the same split again
  over the ranks of a ``torch.distributed`` job (:func:`distributed_context`).
* :func:`predict_cases` runs one model over the cases. The next cases are read in a
  small thread pool while the current one is segmented (as nnU-Net's preprocessing
  workers do), and the outputs are written by a background thread, each file atomically
  (a temporary file in the same folder, then ``os.replace``), the label map last - so a
  case whose label map exists is complete, and a rerun skips it when the label map's
  record (``<stem>_provenance.json``, :mod:`napari_vnet.workflows.batch_records`) names the same
  weights; outputs made by other weights are neither skipped nor replaced without
  ``overwrite``.
* :func:`label_statistics` gives per-class voxel count, volume (ml) and mean/std of
  the image intensity; :func:`write_dicom_seg` writes a DICOM Segmentation object
  referencing the source series (highdicom, optional extra ``napari-vnet[dicom-seg]``).

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
import datetime
import fnmatch
import io
import json
import logging
import math
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
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
    "DistributedContext",
    "OutputPlan",
    "discover_cases",
    "distributed_context",
    "label_statistics",
    "output_stem",
    "plan_outputs",
    "predict_cases",
    "require_highdicom",
    "shard",
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


# ----------------------------------------------------------------------- partitioning


@dataclass
class DistributedContext:
    """This process's place in a ``torchrun`` job (world 1 outside one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` on every rank (rank order); ``[obj]`` outside a job."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.active:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def distributed_context(device: str = "auto", timeout_hours: float = 48.0) -> DistributedContext:
    """Join the ``torch.distributed`` job started by ``torchrun`` (``WORLD_SIZE > 1``).

    NCCL when this rank will run on CUDA, else gloo. The collective timeout is long
    (``timeout_hours``) because ranks meet only once, at the end, to gather results: a
    rank that finishes early waits there for the slowest.
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return DistributedContext()
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    use_cuda = torch.cuda.is_available() and not str(device).startswith(("cpu", "mps"))
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend, timeout=datetime.timedelta(hours=float(timeout_hours))
        )
    return DistributedContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        backend=backend,
    )


def shard(items: Sequence[Any], num_parts: int = 1, part_id: int = 0) -> list[Any]:
    """Part ``part_id`` of ``num_parts`` (round robin: ``items[part_id::num_parts]``)."""
    if num_parts < 1:
        raise ValueError(f"num_parts must be >= 1, got {num_parts}")
    if not 0 <= part_id < num_parts:
        raise ValueError(f"part_id must be in [0, {num_parts - 1}], got {part_id}")
    return list(items)[part_id::num_parts]


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


def write_class_sidecar(label_path: str | os.PathLike, card) -> Path:
    """``<stem>.labels.json`` beside a written label map: the card's class names with the
    colours napari-vnet shows them in, so the file reopens with names and colours."""
    from napari_vnet.label_names import classes_with_colors, write_label_classes

    return write_label_classes(label_path, classes_with_colors(card.classes))


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


def _background_priority() -> None:
    """Lower this thread's CPU priority (Linux: nice applies per thread), so that reading
    and writing take idle CPU time and never stall the inference threads' barriers."""
    import threading

    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):  # not Linux, or not allowed: run as is
        pass


class _Deferred(Future):
    """A future whose job runs in the thread that first asks for its result."""

    def __init__(self, fn, args, kwargs) -> None:
        super().__init__()
        self._job = (fn, args, kwargs)

    def _run(self) -> None:
        if self._job is not None:
            fn, args, kwargs = self._job
            self._job = None
            try:
                self.set_result(fn(*args, **kwargs))
            except Exception as exc:  # noqa: BLE001 - delivered through the future
                self.set_exception(exc)

    def result(self, timeout=None):
        self._run()
        return super().result(timeout)


class _InlineExecutor:
    """``workers=0``: jobs run in the calling thread, at once (``lazy=False``) or when
    their result is asked for (``lazy=True``: a read happens when the case's turn comes)."""

    def __init__(self, lazy: bool) -> None:
        self.lazy = lazy

    def submit(self, fn, /, *args, **kwargs) -> Future:
        fut = _Deferred(fn, args, kwargs)
        if not self.lazy:
            fut._run()
        return fut

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


def _read_case(case: Case, card=None, prepare_kwargs: dict[str, Any] | None = None):
    """Read one case and, given a card, run its preprocessing too (on the read-ahead
    thread, so that the segmenting thread only runs the engine). Returns
    ``(volume, read seconds, Prepared or the exception preparing raised, or None)``."""
    from napari_vnet.io import read_volume

    t0 = time.perf_counter()
    vol = read_volume(case.path)
    if vol.array.ndim < 3:
        raise ValueError(f"{case.path}: not a 3-D volume (shape {vol.shape})")
    t_read = time.perf_counter() - t0
    prepared: Any = None
    if card is not None:
        from napari_vnet.inference import prepare

        try:
            prepared = prepare(vol, card, spacing=vol.spacing, **(prepare_kwargs or {}))
        except Exception as exc:  # noqa: BLE001 - reported when the case's turn comes
            prepared = exc
    return vol, t_read, prepared


def _write_outputs(
    case: Case,
    plan: OutputPlan,
    vol,
    pred,
    card,
    t_read: float,
    rank: int,
    timing: dict,
    weights: dict[str, Any] | None = None,
):
    """Write one case's outputs (label map last, between the two writes of its record);
    runs on the writer thread."""
    from napari_vnet.io import write_volume
    from napari_vnet.workflows.batch_records import write_record

    weights = weights or {}

    t_write = time.perf_counter()
    stats = None
    if plan.statistics is not None:
        stats = label_statistics(pred.labels, vol, card.classes)
        record = {
            "case": case.stem,
            "input": case.path,
            "shape": list(vol.shape[-3:]),
            "spacing_mm": [float(s) for s in vol.spacing[-3:]],
            "voxel_volume_ml": float(np.prod(vol.spacing[-3:])) / 1000.0,
            "classes": stats,
        }
        _write_json(plan.statistics, record)
    if plan.probabilities is not None and pred.probabilities is not None:
        probs = np.asarray(pred.probabilities, dtype=np.float16)

        def save(fh) -> None:
            np.savez(
                fh,
                probabilities=probs,
                label_values=np.asarray(card.label_values, np.int32),
                class_names=np.asarray([c.name for c in card.classes]),
                spacing=np.asarray(vol.spacing[-3:], float),
                origin=np.asarray(vol.origin[-3:], float),
                direction=np.asarray(vol.direction, float),
            )

        _atomic_write(plan.probabilities, save, binary=True)
    plan.labels.parent.mkdir(parents=True, exist_ok=True)
    extra = {}
    if plan.fmt == "dicom-seg":
        extra["series_uid"] = str(require_highdicom()[0].UID())
    # the record first: a label map is never without one (nor taken for an input)
    write_record(plan, case, weights, complete=False, **extra)
    if plan.fmt == "dicom-seg":
        write_dicom_seg(pred.labels, vol, card, plan.labels, series_uid=extra["series_uid"])
    else:
        write_volume(pred.labels, plan.labels, like=vol, is_label=True)
        write_class_sidecar(plan.labels, card)
    write_record(plan, case, weights, complete=True, **extra)
    return CaseResult(
        key=case.key,
        stem=case.stem,
        input=case.path,
        status="written",
        outputs=[str(p) for p in plan.files()],
        seconds=round(float(pred.seconds), 3),
        total_seconds=round(time.perf_counter() - t_read, 3),
        shape=[int(s) for s in vol.shape],
        spacing=[float(s) for s in vol.spacing],
        statistics=stats,
        rank=rank,
        read_s=round(timing.get("read_s", 0.0), 3),
        prepare_s=round(timing.get("prepare_s", 0.0), 3),
        read_wait_s=round(timing.get("read_wait_s", 0.0), 3),
        write_s=round(time.perf_counter() - t_write, 3),
        weights=weights.get("weights"),
        weights_sha256=weights.get("weights_sha256"),
    )


def _skipped(case: Case, plan: OutputPlan, rank: int, record: dict) -> CaseResult:
    stats = None
    if plan.statistics is not None:
        try:
            stats = json.loads(plan.statistics.read_text(encoding="utf-8")).get("classes")
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("%s: unreadable statistics from an earlier run: %s", plan.statistics, exc)
    return CaseResult(
        key=case.key,
        stem=case.stem,
        input=case.path,
        status="skipped",
        outputs=[str(p) for p in plan.files()],
        statistics=stats,
        rank=rank,
        weights=record.get("weights"),
        weights_sha256=record.get("weights_sha256"),
    )


def _triage(
    cases: Sequence[Case], plans: Sequence[OutputPlan], weights: dict, overwrite: bool, rank: int
) -> tuple[list[CaseResult], list[tuple[Case, OutputPlan]]]:
    """``(results known now, cases to segment)``: a case is skipped only when its outputs
    are complete and its record names the same weights; outputs made by other weights
    (or not by napari-vnet) are neither skipped nor replaced without ``overwrite``."""
    from napari_vnet.workflows.batch_records import read_record, record_mismatch

    done: list[CaseResult] = []
    todo: list[tuple[Case, OutputPlan]] = []
    for case, plan in zip(cases, plans, strict=True):
        if case.error:
            done.append(_failed(case, case.error, rank))
            continue
        if not overwrite and plan.labels.exists():
            why = record_mismatch(plan, weights["weights_sha256"])
            if why:
                done.append(_failed(case, f"{why}; use --overwrite to replace it", rank))
                continue
            record = read_record(plan.record) or {}
            if record.get("complete") and plan.complete():
                done.append(_skipped(case, plan, rank, record))
                continue
        todo.append((case, plan))
    return done, todo


def _failed(case: Case, exc: BaseException | str, rank: int, t0: float | None = None) -> CaseResult:
    text = str(exc) or type(exc).__name__
    if case.path not in text:
        text = f"{case.path}: {text}"
    return CaseResult(
        key=case.key,
        stem=case.stem,
        input=case.path,
        status="failed",
        error=text,
        total_seconds=0.0 if t0 is None else round(time.perf_counter() - t0, 3),
        rank=rank,
    )


def _check_case(case: Case, vol, card) -> str | None:
    """Model/image mismatches (napari_vnet.input_check) as warnings in the log; the
    refusal text when the model cannot take this image (channel count), else None."""
    from napari_vnet.input_check import check_input, value_sample

    n = len(vol.spacing)
    issues = check_input(
        card,
        shape=tuple(vol.array.shape[:n]),
        spacing=tuple(vol.spacing),
        values=value_sample(vol.array),
        channels=int(vol.array.shape[-1]) if vol.array.ndim > n else 1,
        modality=str(vol.metadata.get("modality", "")),
    )
    for issue in issues:
        if not issue.refuses:
            log.warning("%s: %s", case.path, issue.text)
    refusals = [i.text for i in issues if i.refuses]
    return "; ".join(refusals) or None


def predict_cases(
    cases: Sequence[Case],
    model,
    card,
    out_dir: str | os.PathLike,
    *,
    fmt: str = "same",
    overwrite: bool = False,
    statistics: bool = False,
    save_probabilities: bool = False,
    workers: int = 2,
    predict_kwargs: dict[str, Any] | None = None,
    rank: int = 0,
    should_stop: Callable[[], bool] | None = None,
    on_start: Callable[[Case, int, int], Any] | None = None,
    weights: str | os.PathLike | None = None,
) -> Iterator[CaseResult]:
    """Segment ``cases`` with one model; yield a :class:`CaseResult` per case.

    Each case's outputs get a record naming ``weights`` (the path shown) and the
    network's :func:`~napari_vnet.workflows.batch_records.weights_fingerprint`. Cases whose outputs
    all exist, made by the same weights, are skipped (unless ``overwrite``); existing
    outputs made by other weights fail (unless ``overwrite``); a case that cannot
    be read, segmented or written is yielded as ``failed`` and the run goes on. Up to
    ``workers`` cases are read ahead in a thread pool while the current one is segmented
    (reading holds at most ``workers`` volumes in memory); a single background thread
    writes the outputs (at most two cases wait for it). The read-ahead threads also run
    the card's preprocessing (:func:`napari_vnet.inference.prepare`: normalisation,
    resampling), so a case waiting in the pool holds its volume and its float32
    network input. ``workers=0`` reads, segments
    and writes one case after the other in the calling thread (no overlap). Results are yielded in the order
    cases finish, skipped ones first. ``on_start(case, i, n)`` is called before each
    case is segmented.
    """
    from napari_vnet.inference import predict
    from napari_vnet.workflows.batch_records import weights_fingerprint

    produced_by = {
        "weights": None if weights is None else os.fspath(weights),
        "weights_sha256": weights_fingerprint(model, card),
        "arch": card.arch,
    }
    workers = max(0, int(workers))
    kwargs = dict(predict_kwargs or {})
    prepare_kwargs = {k: kwargs[k] for k in ("overlap", "batch_size") if k in kwargs}
    stop = should_stop or (lambda: False)
    plans = [
        plan_outputs(c, out_dir, fmt, statistics=statistics, probabilities=save_probabilities)
        for c in cases
    ]
    done, todo = _triage(cases, plans, produced_by, overwrite, rank)
    yield from done
    if not todo:
        return

    if workers == 0:
        readers, writer = _InlineExecutor(lazy=True), _InlineExecutor(lazy=False)
    else:
        readers = ThreadPoolExecutor(
            max_workers=workers,
            thread_name_prefix="napari-vnet-read",
            initializer=_background_priority,
        )
        writer = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="napari-vnet-write", initializer=_background_priority
        )
    lookahead = max(1, workers)
    reads: deque[tuple[Case, OutputPlan, Future]] = deque()
    writes: deque[tuple[Case, Future, float]] = deque()
    upcoming = iter(todo)

    def top_up() -> None:
        while len(reads) < lookahead:
            nxt = next(upcoming, None)
            if nxt is None:
                return
            reads.append((nxt[0], nxt[1], readers.submit(_read_case, nxt[0], card, prepare_kwargs)))

    def finished_write(case: Case, fut: Future, t0: float) -> CaseResult:
        t_wait = time.perf_counter()
        try:
            result = fut.result()
        except Exception as exc:  # noqa: BLE001 - one failed case never stops the run
            log.debug("writing %s failed", case.path, exc_info=True)
            return _failed(case, exc, rank, t0)
        result.write_wait_s = round(time.perf_counter() - t_wait, 3)
        return result

    try:
        top_up()
        i = 0
        while reads:
            if stop():
                break
            case, plan, fut = reads.popleft()
            top_up()
            t0 = time.perf_counter()
            i += 1
            try:
                vol, t_read, prepared = fut.result()
            except Exception as exc:  # noqa: BLE001 - a broken file is reported, not fatal
                yield _failed(case, exc, rank, t0)
                continue
            timing = {
                "read_s": t_read,
                "read_wait_s": time.perf_counter() - t0,
                "prepare_s": getattr(prepared, "seconds", 0.0),
            }
            log.info("read %s (%s) in %.2f s", case.path, vol.shape, t_read)
            refused = _check_case(case, vol, card)
            if refused:
                yield _failed(case, refused, rank, t0)
                continue
            if on_start is not None:
                on_start(case, i, len(todo))
            try:
                if isinstance(prepared, Exception):
                    raise prepared
                pred = predict(
                    prepared if prepared is not None else vol,
                    model,
                    card,
                    spacing=vol.spacing,
                    return_probabilities=save_probabilities,
                    **kwargs,
                )
            except Exception as exc:  # noqa: BLE001 - one failed case never stops the run
                log.debug("segmenting %s failed", case.path, exc_info=True)
                yield _failed(case, exc, rank, t0)
                continue
            while len(writes) >= 2:  # bound the memory held by pending writes
                wcase, wfut, wt0 = writes.popleft()
                yield finished_write(wcase, wfut, wt0)
            writes.append(
                (
                    case,
                    writer.submit(
                        _write_outputs, case, plan, vol, pred, card, t0, rank, timing, produced_by
                    ),
                    t0,
                )
            )
            del vol, pred, prepared
            while writes and writes[0][1].done():
                wcase, wfut, wt0 = writes.popleft()
                yield finished_write(wcase, wfut, wt0)
        while writes:
            wcase, wfut, wt0 = writes.popleft()
            yield finished_write(wcase, wfut, wt0)
    finally:
        for _, _, fut in reads:
            fut.cancel()
        readers.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True)


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
