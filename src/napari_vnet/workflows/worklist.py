"""A worklist of scans: folder discovery (headers only) and a per-project status store.

Qt-free core behind the "Scans" dock (:mod:`napari_vnet._widgets.scans`).

* :func:`discover_scans` walks a folder and *yields* one :class:`ScanEntry` per volume
  file (every format the reader supports) and per DICOM series found in sub-folders.
  Only headers are read (SimpleITK ``ReadImageInformation``, GDCM's header scanner),
  never pixel data, so hundreds of files list in seconds. A file that cannot be read is
  yielded as a *broken* entry (``entry.error``) and the walk goes on.
* :class:`ScanProject` keeps, in a work folder of the user's choice (the scans folder
  may be read-only), a small JSON project file (written atomically) with each scan's
  status (``not opened`` -> ``opened`` -> ``predicted`` -> ``corrected`` ->
  ``reviewed``), the weights used, time stamps, the autosaved label volumes and their
  edited-slice records.

Geometry follows :mod:`napari_vnet.io.volume`: shapes and spacings are ``(z, y, x)``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import stat
import struct
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from napari_vnet.label_names import label_files_in_folder

logger = logging.getLogger(__name__)

__all__ = [
    "BROKEN",
    "PROJECT_FILENAME",
    "STATUSES",
    "VOLUME_SUFFIXES",
    "ProjectError",
    "ProjectMismatchError",
    "ScanEntry",
    "ScanProject",
    "discover_scans",
    "read_file_header",
    "read_scan",
    "write_labels_file",
]

#: Every status a scan can have, in the order of the workflow.
STATUSES = ("not opened", "opened", "predicted", "corrected", "reviewed")
#: Pseudo-status of entries whose header could not be read.
BROKEN = "broken"
PROJECT_FILENAME = "napari-vnet-scans.json"
PROJECT_VERSION = 1

#: Single-file volume formats listed as one scan each (lower-case suffixes).
VOLUME_SUFFIXES = (
    ".nii.gz",
    ".nii",
    ".mha",
    ".mhd",
    ".nrrd",
    ".nhdr",
    ".hdr",  # Analyze 7.5 / NIfTI pair header; its .img is the pixel data
    ".gipl.gz",
    ".gipl",
)
#: Pixel-data companions of header files: never listed on their own.
_DATA_SUFFIXES = (".raw", ".img", ".zraw", ".raw.gz", ".img.gz")
#: Suffixes that say "DICOM" outright.
_DICOM_SUFFIXES = (".dcm", ".ima", ".dicom")
#: Suffixes that are certainly not volumes (skipped without opening).
_IGNORED_SUFFIXES = (
    ".json",
    ".txt",
    ".md",
    ".csv",
    ".py",
    ".png",
    ".jpg",
    ".jpeg",
    ".pdf",
    ".zip",
    ".pt",
    ".pth",
    ".xml",
    ".yaml",
    ".yml",
    ".log",
    ".tmp",
)


class ProjectError(RuntimeError):
    """The project file of a work folder cannot be read or written."""


@dataclass
class ScanEntry:
    """One scan of the worklist: a volume file or a DICOM series.

    ``key`` is stable across sessions (the path relative to the scans folder, plus the
    series UID for DICOM) and indexes the project's records. ``path`` is what
    :func:`napari_vnet.io.read_volume` opens: a file, or for DICOM the series' folder
    when it holds only that series, else the series' first file (which reads the
    whole series).
    """

    key: str
    path: str
    name: str
    kind: str = "file"  # "file" | "dicom"
    shape: tuple[int, ...] | None = None  # (z, y, x)
    spacing: tuple[float, ...] | None = None  # (z, y, x) mm
    pixel_type: str = ""
    components: int = 1
    size_bytes: int = 0
    n_files: int = 1
    modality: str = ""
    series_uid: str = ""
    error: str | None = None
    #: label files paired with this image (``case_seg``, ``labels/`` beside ``images/``,
    #: nnU-Net ``labelsTr/case`` for ``imagesTr/case_0000``): opened as Labels with it
    labels: tuple[str, ...] = ()

    @property
    def broken(self) -> bool:
        return self.error is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_scan(entry: ScanEntry):
    """Read the pixel data of a worklist entry as a :class:`~napari_vnet.io.Volume`."""
    from napari_vnet.io import read_volume

    if entry.broken:
        raise ValueError(entry.error)
    return read_volume(entry.path)


# --------------------------------------------------------------------------- headers


def _suffix(name: str) -> str:
    low = name.lower()
    for suf in (*VOLUME_SUFFIXES, *_DATA_SUFFIXES):
        if low.endswith(suf):
            return suf
    return os.path.splitext(low)[1]


def _has_dicom_magic(path: str) -> bool:
    """Part-10 DICOM files carry 'DICM' at byte 128 (reads 132 bytes, no pixels)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False  # a FIFO would block the walk
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _series_name(info: dict[str, Any], folder_rel: str) -> str:
    parts = Path(folder_rel).parts
    patient = info["patient"] or info["patient_id"] or (parts[0] if parts else "DICOM")
    desc = info["description"] or info["study"]
    if not desc:
        bits = [info["modality"] or "DICOM"]
        if info["series_number"]:
            bits.append(f"series {info['series_number']}")
        desc = " ".join(bits)
    return f"{patient} / {desc}"


# ------------------------------------------------------------------------- discovery


#: SimpleITK ImageIO per suffix: naming it skips the probing of every registered ImageIO
#: (which reads tens of kB of each file, pixel data included, before the header).
_IMAGE_IO = {
    ".nii": "NiftiImageIO",
    ".nii.gz": "NiftiImageIO",
    ".hdr": "NiftiImageIO",
    ".mha": "MetaImageIO",
    ".mhd": "MetaImageIO",
    ".nrrd": "NrrdImageIO",
    ".nhdr": "NrrdImageIO",
    ".gipl": "GiplImageIO",
    ".gipl.gz": "GiplImageIO",
}


#: NIfTI datatype code -> SimpleITK pixel type string (plain scalar types only)
_NIFTI_TYPES = {
    2: "8-bit unsigned integer",
    4: "16-bit signed integer",
    8: "32-bit signed integer",
    16: "32-bit float",
    64: "64-bit float",
    256: "8-bit signed integer",
    512: "16-bit unsigned integer",
    768: "32-bit unsigned integer",
    1024: "64-bit signed integer",
    1280: "64-bit unsigned integer",
}


def _nifti_header(path: str) -> dict[str, Any] | None:
    """Shape/spacing/pixel type of a plain 2D/3D scalar NIfTI-1/2 file from its first bytes.

    ITK's NIfTI reader takes ~15 ms per ``.nii.gz`` header (it re-opens and re-buffers
    the stream); this reads at most 8 kB and inflates only the header. Returns None for
    anything unusual (rescaled, 4D, vector, odd sizes) so that SimpleITK decides.
    """
    gz = path.lower().endswith(".gz")
    try:
        with open(path, "rb") as fh:
            raw = fh.read(8192 if gz else 544)
        hdr = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(raw, 544) if gz else raw
    except (OSError, zlib.error):
        return None
    if len(hdr) < 348:
        return None
    for endian in "<>":
        size = struct.unpack_from(f"{endian}i", hdr, 0)[0]
        if size in (348, 540):
            break
    else:
        return None
    if size == 348:
        dim = struct.unpack_from(f"{endian}8h", hdr, 40)
        code = struct.unpack_from(f"{endian}h", hdr, 70)[0]
        pixdim = struct.unpack_from(f"{endian}8f", hdr, 76)
        slope, inter = struct.unpack_from(f"{endian}2f", hdr, 112)
    else:
        if len(hdr) < 540:
            return None
        code = struct.unpack_from(f"{endian}h", hdr, 12)[0]
        dim = struct.unpack_from(f"{endian}8q", hdr, 16)
        pixdim = struct.unpack_from(f"{endian}8d", hdr, 104)
        slope, inter = struct.unpack_from(f"{endian}2d", hdr, 168)
    ndim = dim[0]
    sizes, spacing = dim[1 : ndim + 1], pixdim[1 : ndim + 1]
    if (
        ndim not in (2, 3)
        or code not in _NIFTI_TYPES
        or any(n < 2 for n in sizes)
        or not all(math.isfinite(d) and d > 0 for d in spacing)
        or slope not in (0.0, 1.0)
        or inter != 0.0
    ):
        return None
    return {
        "shape": tuple(int(n) for n in sizes)[::-1],
        "spacing": tuple(float(d) for d in spacing)[::-1],
        "pixel_type": _NIFTI_TYPES[code],
        "components": 1,
    }


def read_file_header(path: str | os.PathLike) -> dict[str, Any]:
    """Shape and spacing ``(z, y, x)`` and pixel type of a volume file, from its header.

    Uses the ImageIO that the suffix names (no probing, so only the header is read);
    falls back to :func:`napari_vnet.io.read_header` when that ImageIO refuses the file.
    Raises :class:`napari_vnet.io.VolumeReadError` naming the file when neither can.
    """
    import SimpleITK as sitk

    path = str(path)
    suffix = _suffix(os.path.basename(path))
    if suffix in (".nii", ".nii.gz"):
        head = _nifti_header(path)
        if head is not None:
            return head
    from napari_vnet.io.paths import itk_name
    from napari_vnet.io.reading import _companions

    companions = _companions(Path(path))  # data files checked before ITK opens them
    io_name = _IMAGE_IO.get(suffix)
    if io_name is not None:
        reader = sitk.ImageFileReader()
        reader.SetImageIO(io_name)
        try:
            with itk_name(path, companions) as itk_path:
                reader.SetFileName(itk_path)
                reader.ReadImageInformation()
        except RuntimeError:
            pass  # let io.read_header try every ImageIO and word the error
        else:
            return {
                "shape": tuple(int(s) for s in reader.GetSize())[::-1],
                "spacing": tuple(float(s) for s in reader.GetSpacing())[::-1],
                "pixel_type": sitk.GetPixelIDValueAsString(reader.GetPixelID()),
                "components": int(reader.GetNumberOfComponents()),
            }
    from napari_vnet.io import read_header

    return read_header(path)


def _shown(path: str) -> str:
    """Printable text of a path or name (bytes that are not UTF-8 become ``\\xNN``)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _file_entry(path: str, rel: str) -> ScanEntry:
    try:
        st = os.stat(path)
        size_bytes = st.st_size
    except OSError:
        st, size_bytes = None, 0
    entry = ScanEntry(key=rel, path=path, name=_shown(rel), size_bytes=size_bytes)
    if st is not None and not stat.S_ISREG(st.st_mode):
        entry.error = f"{_shown(path)}: not a regular file (a device, FIFO or socket); skipped"
        return entry
    try:
        head = read_file_header(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable header is a broken entry
        shown = _shown(path)
        entry.error = str(exc) if shown in str(exc) else f"{shown}: {exc}"
        logger.info("broken scan %s: %s", path, exc)
        return entry
    entry.shape = tuple(int(v) for v in head["shape"])
    entry.spacing = tuple(float(v) for v in head["spacing"])
    entry.pixel_type = head.get("pixel_type", "")
    entry.components = int(head.get("components", head.get("n_components", 1)))
    entry.modality = head.get("modality", "") or ""
    return entry


def _series_infos(folder: str) -> list[dict[str, Any]]:
    """The series of one folder as dicts (io's lister when present, GDCM fallback)."""
    from napari_vnet.io import list_dicom_series

    out = []
    for s in list_dicom_series(folder):
        out.append(
            {
                "uid": s.key,
                "files": list(s.files),
                "shape": tuple(s.shape),
                "spacing": tuple(s.spacing),
                "pixel_type": "",
                "components": 1,
                "patient": s.patient_name,
                "patient_id": s.patient_id,
                "description": s.description,
                "study": s.study_description,
                "modality": s.modality,
                "series_number": "" if s.series_number is None else str(s.series_number),
            }
        )
    if not out:
        raise ValueError(f"{folder}: no readable DICOM series found")
    return out


def _broken_dicom(path: str, rel_dir: str, problem: str) -> ScanEntry:
    """A list entry for a DICOM file that belongs to no readable series."""
    name = os.path.basename(path)
    rel = name if rel_dir == "." else f"{rel_dir}/{name}"
    return ScanEntry(
        key=rel, path=path, name=_shown(rel), kind="dicom", error=f"{_shown(path)}: {problem}"
    )


def _dicom_entries(folder: str, rel_dir: str, candidates: list[str]) -> Iterator[ScanEntry]:
    try:
        series = _series_infos(folder)
    except Exception as exc:  # noqa: BLE001 - a broken folder must not stop the walk
        for path in candidates:
            yield _broken_dicom(path, rel_dir, f"not a readable DICOM series ({exc})")
        return
    used: set[str] = set()
    for info in series:
        files = info["files"]
        used.update(os.path.normpath(f) for f in files)
        size_bytes = 0
        for f in files:
            try:
                size_bytes += os.path.getsize(f)
            except OSError:
                pass
        yield ScanEntry(
            key=f"{rel_dir}#{info['uid']}",
            path=folder if len(series) == 1 else files[0],
            name=_shown(_series_name(info, rel_dir)),
            kind="dicom",
            shape=tuple(info["shape"]),
            spacing=tuple(info["spacing"]),
            pixel_type=info["pixel_type"],
            components=info["components"],
            size_bytes=size_bytes,
            n_files=len(files),
            modality=info["modality"],
            series_uid=info["uid"],
        )
    for path in candidates:
        if os.path.normpath(path) not in used:
            yield _broken_dicom(path, rel_dir, "DICOM file not part of any readable image series")


#: Bounds of one listing: folder depth below the scans folder, and directory entries seen.
MAX_DEPTH = 40
MAX_ENTRIES = 200_000


def discover_scans(
    root: str | os.PathLike,
    *,
    recursive: bool = True,
    exclude: Iterable[str | os.PathLike] = (),
    should_stop=None,
    max_depth: int = MAX_DEPTH,
    max_entries: int = MAX_ENTRIES,
) -> Iterator[ScanEntry]:
    """Yield the scans under ``root`` one by one, reading headers only.

    Volume files (see :data:`VOLUME_SUFFIXES`) give one entry each; folders holding
    DICOM files (``.dcm``/``.ima`` or extension-less files with the ``DICM`` marker)
    give one entry per series, named "patient / series description". Files whose
    header cannot be read are yielded with ``error`` set. Hidden entries and the
    folders in ``exclude`` (e.g. a work folder inside the scans folder) are skipped.
    ``should_stop()`` is polled between files so a worker can be cancelled.

    Symbolic links are followed at most once per real path (a link back to a parent
    folder, or two links to one file, list nothing twice); below ``max_depth`` folders
    or after ``max_entries`` directory entries the walk stops with a broken entry
    saying so (key ``"<listing stopped>"``).
    """
    root_path = Path(root).expanduser().resolve()
    if not root_path.is_dir():
        raise NotADirectoryError(f"{_shown(str(root_path))}: scans folder does not exist")
    excluded = {os.path.normpath(str(Path(p).expanduser().resolve())) for p in exclude}
    seen_dirs: set[str] = set()
    seen_files: set[str] = set()
    counted = 0

    class _Stop(Exception):
        pass

    def stop_entry(why: str) -> ScanEntry:
        return ScanEntry(
            key="<listing stopped>",
            path=str(root_path),
            name="(listing stopped)",
            error=f"{_shown(str(root_path))}: listing stopped: {why}",
        )

    def walk(folder: str, depth: int) -> Iterator[ScanEntry]:
        nonlocal counted
        real = os.path.realpath(folder)
        if real in seen_dirs:
            logger.warning(
                "%s: already listed as %s (a symbolic link loop or a second link); skipped",
                _shown(folder),
                _shown(real),
            )
            return
        seen_dirs.add(real)
        try:
            with os.scandir(folder) as it:
                items = []
                for e in it:
                    counted += 1
                    if counted > max_entries:
                        raise _Stop(
                            f"more than {max_entries} files and folders; choose a smaller folder"
                        )
                    items.append(e)
            items.sort(key=lambda e: e.name.lower())
        except OSError as exc:
            rel = os.path.relpath(folder, root_path)
            yield ScanEntry(
                key=rel, path=folder, name=_shown(rel), error=f"{_shown(folder)}: {exc}"
            )
            return
        rel_dir = os.path.relpath(folder, root_path).replace(os.sep, "/")
        names = {e.name.lower() for e in items}
        label_of = label_files_in_folder(
            folder, [e.path for e in items if _suffix(e.name) in VOLUME_SUFFIXES], root_path
        )
        dicom_candidates: list[str] = []
        subdirs: list[str] = []
        for item in items:
            if should_stop is not None and should_stop():
                return
            if item.name.startswith("."):
                continue
            try:
                is_dir = item.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                if os.path.normpath(item.path) not in excluded:
                    subdirs.append(item.path)
                continue
            target = os.path.realpath(item.path)
            if target in seen_files:
                continue  # the same file through another link
            seen_files.add(target)
            suf = _suffix(item.name)
            rel = item.name if rel_dir == "." else f"{rel_dir}/{item.name}"
            if suf in VOLUME_SUFFIXES:
                if item.path in label_of:
                    continue  # a label file: listed with its image, not as a scan
                entry = _file_entry(item.path, rel)
                entry.labels = tuple(sorted(k for k, v in label_of.items() if v == item.path))
                yield entry
            elif suf in _DATA_SUFFIXES:
                stem = item.name[: -len(suf)].lower()
                if suf in (".img", ".img.gz") and f"{stem}.hdr" not in names:
                    yield ScanEntry(
                        key=rel,
                        path=item.path,
                        name=_shown(rel),
                        error=f"{_shown(item.path)}: image data without its .hdr header",
                    )
                # .raw / .img companions of a header are read through the header
            elif suf in _DICOM_SUFFIXES or (
                suf not in _IGNORED_SUFFIXES and _has_dicom_magic(item.path)
            ):
                dicom_candidates.append(item.path)
        if dicom_candidates:
            yield from _dicom_entries(folder, rel_dir, dicom_candidates)
        if recursive:  # real folders before links to folders: real paths win
            subdirs.sort(key=os.path.islink)
            for sub in subdirs:
                if depth + 1 > max_depth:
                    raise _Stop(f"folders nested deeper than {max_depth} levels ({_shown(sub)})")
                yield from walk(sub, depth + 1)

    try:
        yield from walk(str(root_path), 0)
    except _Stop as stop:
        logger.warning("%s", stop)
        yield stop_entry(str(stop))


# --------------------------------------------------------------------------- project


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _slug(text: str, limit: int = 60) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return s[:limit] or "scan"


def _atomic_write_text(path: Path, text: str) -> None:
    from napari_vnet._atomic import atomic_write_text

    atomic_write_text(path, text)


class ProjectMismatchError(ProjectError):
    """The work folder holds the project of another scans folder."""


_LOCK_NAME = ".napari-vnet-scans.lock"
_SESSION_NAME = ".napari-vnet-session.lock"
_STALE_SECONDS = 3600


def _lock_file(fh, *, blocking: bool = True) -> bool:
    """An exclusive lock on an open file (fcntl on POSIX, msvcrt on Windows); False when
    ``blocking`` is False and another process (or open file) holds it."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        mode = msvcrt.LK_LOCK if blocking else msvcrt.LK_NBLCK
        try:
            fh.seek(0)
            msvcrt.locking(fh.fileno(), mode, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def _unlock_file(fh) -> None:
    try:
        import fcntl
    except ImportError:
        import msvcrt

        try:
            fh.seek(0)
            msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)
        except OSError:
            pass
        return
    fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _key_bytes(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")


def _scan_stem(key: str) -> str:
    """``"sub/ct0.nii.gz"`` -> ``"ct0"``; DICOM keys (``"folder#uid"``) -> the folder name."""
    base = key.split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    low = base.lower()
    for suf in (*VOLUME_SUFFIXES, *_DICOM_SUFFIXES):
        if low.endswith(suf) and len(base) > len(suf):
            return base[: -len(suf)]
    return base


def _layer_part(layer_name: str, key: str) -> str:
    """What a layer name adds to its scan's name: ``"p1.nii.gz [3D U-Net]"`` ->
    ``"3D U-Net"``, ``"p1 (labels)"`` -> ``"labels"``, ``"edit"`` -> ``"edit"``."""
    name = layer_name.strip()
    base = key.split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    if name in (base, _scan_stem(key)):
        return "labels"
    for prefix in sorted({base, _scan_stem(key)}, key=len, reverse=True):
        if prefix and name.startswith(prefix):
            name = name[len(prefix) :]
            break
    name = re.sub(r"[\[\]()]", " ", name).strip(" _-.")
    return name or "labels"


def _scan_folder_name(key: str) -> str:
    """``"sub/ct0.nii.gz"`` -> ``"sub_ct0"``; ``"pat/ct#1.2.3"`` -> ``"pat_ct"``."""
    path = key.split("#", 1)[0].rstrip("/")
    head = path.rsplit("/", 1)[0] + "/" if "/" in path else ""
    return _slug(head + _scan_stem(key))


@dataclass
class _Record:
    status: str = "not opened"
    name: str = ""
    source: str = ""
    weights: str | None = None
    times: dict[str, str] = field(default_factory=dict)
    labels: dict[str, dict[str, Any]] = field(default_factory=dict)


class ScanProject:
    """The status store of one work folder (``<work>/napari-vnet-scans.json``).

    A project belongs to one scans folder: its absolute path is stored, and opening the
    work folder for another scans folder raises :class:`ProjectMismatchError`, so a scan
    with the same relative name elsewhere never receives these labels or statuses.

    Every change is a short transaction under an exclusive file lock
    (``<work>/.napari-vnet-scans.lock``): the file is re-read, the one change applied to
    what is on disk and the result written atomically (temporary file +
    ``os.replace``). Two sessions (or processes) on one work folder so never lose a
    status or a label record. :meth:`acquire_session` tells whether another session
    holds the folder. A damaged project file is set aside (renamed
    ``*.damaged-<time>``) and a new one started; :attr:`notice` says so.
    Autosaved labels live in ``<work>/labels/<scan>/<scan stem>_<model>.nii.gz`` (see
    :meth:`labels_path`), each with its class names and colours in ``.labels.json``.
    Statuses only move forward (``mark``) unless ``force=True``.
    """

    def __init__(self, work_dir: str | os.PathLike, scans_root: str | os.PathLike | None = None):
        self.work_dir = Path(work_dir).expanduser().resolve()
        self.path = self.work_dir / PROJECT_FILENAME
        self.scans_root = str(Path(scans_root).expanduser().resolve()) if scans_root else None
        self.records: dict[str, dict[str, Any]] = {}
        self.notice: str | None = None
        self._session = None
        #: folder / file names given out this session (casefolded) -> scan key / layer name
        self._claimed: dict[str, str] = {}
        self._clean_orphans()
        self.load()

    # -- identity
    def bind(self, scans_root: str | os.PathLike) -> None:
        """Make this the project of ``scans_root`` (absolute); raises
        :class:`ProjectMismatchError` when it already belongs to another folder."""
        root = str(Path(scans_root).expanduser().resolve())
        with self._locked():
            self._load_unlocked(check=False)
            stored = self._stored_root
            if stored and stored != root:
                raise ProjectMismatchError(
                    f"{_shown(str(self.work_dir))}: this work folder holds the project of the "
                    f"scans folder {_shown(stored)}, not {_shown(root)}; choose another work "
                    "folder"
                )
            self.scans_root = root
            if stored != root:
                self._write()

    # -- file
    @contextmanager
    def _locked(self):
        try:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            fh = open(self.work_dir / _LOCK_NAME, "a+b")  # noqa: SIM115 - held for the block
        except OSError as exc:
            raise ProjectError(f"{self.work_dir}: cannot lock the scans project ({exc})") from exc
        try:
            _lock_file(fh)
            yield
        finally:
            try:
                _unlock_file(fh)
            finally:
                fh.close()

    def load(self) -> None:
        """Re-read the project file (under the lock)."""
        with self._locked():
            self._load_unlocked()

    def _load_unlocked(self, check: bool = True) -> None:
        self._stored_root = None
        if not self.path.exists():
            self.records = {}
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("scans"), dict):
                raise ValueError("not a napari-vnet scans project (no 'scans')")
            if not all(
                isinstance(r, dict) and r.get("status") in STATUSES for r in data["scans"].values()
            ):
                raise ValueError("a scan record is damaged")
        except (OSError, ValueError) as exc:
            self._set_aside(exc)
            return
        self.records = data["scans"]
        for rec in self.records.values():
            rec.setdefault("labels", {})
            rec.setdefault("times", {})
        self._stored_root = data.get("scans_root")
        if self.scans_root is None:
            self.scans_root = self._stored_root
        elif check and self._stored_root and self._stored_root != self.scans_root:
            raise ProjectMismatchError(
                f"{_shown(str(self.work_dir))}: this work folder holds the project of the scans "
                f"folder {_shown(self._stored_root)}, not {_shown(self.scans_root)}; choose "
                "another work folder"
            )

    def _set_aside(self, exc: Exception) -> None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        aside = self.path.with_name(f"{PROJECT_FILENAME}.damaged-{stamp}")
        try:
            os.replace(self.path, aside)
        except OSError as err:
            raise ProjectError(
                f"{self.path}: the scans project is damaged ({exc}) and cannot be set aside ({err})"
            ) from exc
        self.notice = (
            f"The scans project {_shown(str(self.path))} was damaged ({exc}); it was set aside "
            f"as {aside.name} and a new project started."
        )
        logger.warning("%s", self.notice)
        self.records = {}

    def _write(self) -> None:
        data = {
            "format": "napari-vnet-scans",
            "version": PROJECT_VERSION,
            "scans_root": self.scans_root,
            "saved_at": _now(),
            "scans": self.records,
        }
        try:
            _atomic_write_text(self.path, json.dumps(data, indent=1, sort_keys=True))
        except OSError as exc:
            raise ProjectError(f"{self.path}: cannot write the scans project ({exc})") from exc

    def save(self, keys: Iterable[str] | None = None) -> None:
        """Write the project atomically, under the lock.

        With ``keys``, only those records are taken from memory and the others are
        re-read from disk first; without, the whole memory state is written.
        """
        with self._locked():
            if keys is not None:
                mine = {k: self.records[k] for k in keys if k in self.records}
                self._load_unlocked()
                self.records.update(mine)
            self._write()

    @contextmanager
    def _transaction(self, key: str, entry: ScanEntry | None = None):
        """Lock, re-read, yield the record of ``key`` as on disk, write: one change that
        never undoes another session's."""
        with self._locked():
            self._load_unlocked()
            rec = self._rec(key, entry)
            yield rec
            self._write()

    def _clean_orphans(self) -> None:
        """Remove what writes killed half-way left in the work folder and its label
        folders (see :func:`napari_vnet.io.writing.clean_orphans`)."""
        from napari_vnet.io.writing import clean_orphans

        clean_orphans(self.work_dir)
        try:
            folders = [e.path for e in os.scandir(self.work_dir / "labels") if e.is_dir()]
        except OSError:
            folders = []
        for folder in folders:
            clean_orphans(Path(folder))

    # -- sessions
    def acquire_session(self, who: str = "") -> str | None:
        """Hold ``<work>/.napari-vnet-session.lock`` while this session uses the folder.

        Returns None when this session holds it, else a notice naming the other session
        (which keeps it; both may still work, every change being merged under the lock).
        """
        if self._session is not None:
            return None
        self.work_dir.mkdir(parents=True, exist_ok=True)
        path = self.work_dir / _SESSION_NAME
        fh = open(path, "a+b")  # noqa: SIM115 - held until release_session
        if not _lock_file(fh, blocking=False):
            fh.seek(0)
            other = fh.read(300).decode("utf-8", "replace").strip() or "another session"
            fh.close()
            return (
                f"Another napari-vnet session ({other}) is using the work folder "
                f"{_shown(str(self.work_dir))}. Changes of both are merged, but edits of one "
                "scan in two sessions may confuse; close the other session if you can."
            )
        import socket

        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {_now()} {who}".encode())
        fh.flush()
        self._session = fh
        return None

    def release_session(self) -> None:
        if self._session is not None:
            try:
                _unlock_file(self._session)
            finally:
                self._session.close()
                self._session = None

    # -- records
    def record(self, key: str) -> dict[str, Any]:
        """The record of a scan (a copy; defaults when the scan was never opened)."""
        rec = self.records.get(key)
        if rec is None:
            return asdict(_Record())
        return json.loads(json.dumps(rec))

    def _rec(self, key: str, entry: ScanEntry | None = None) -> dict[str, Any]:
        rec = self.records.setdefault(key, asdict(_Record()))
        if entry is not None:
            rec["name"] = entry.name
            rec["source"] = entry.path
        return rec

    def status(self, key: str) -> str:
        rec = self.records.get(key)
        return rec["status"] if rec else "not opened"

    def mark(
        self,
        key: str,
        status: str,
        *,
        entry: ScanEntry | None = None,
        weights: str | os.PathLike | None = None,
        force: bool = False,
    ) -> bool:
        """Move a scan to ``status`` (forward only unless ``force``); returns True if changed.

        The time stamp of the status is recorded (``times[status]``) even when the status
        does not move (e.g. a second prediction updates ``times["predicted"]`` and weights).
        The change is applied to the record as it is on disk (another session's later
        status is kept).
        """
        if status not in STATUSES:
            raise ValueError(f"unknown scan status {status!r}; expected one of {STATUSES}")
        with self._transaction(key, entry) as rec:
            now = _now()
            rec["times"][status] = now
            rec["times"]["updated"] = now
            if weights is not None:
                rec["weights"] = str(weights)
            changed = force or STATUSES.index(status) > STATUSES.index(rec["status"])
            if changed:
                rec["status"] = status
        return changed

    # -- labels
    def labels_dir(self, key: str) -> Path:
        """``<work>/labels/<scan>``: one folder per scan, named after its key. Only when
        another scan's key makes the same folder name (characters the name drops, case on
        a case-insensitive disk) does the folder get a short hash of the key."""
        plain = self.work_dir / "labels" / _scan_folder_name(key)
        if self._folder_is_for(plain, key):
            return plain
        digest = hashlib.sha1(_key_bytes(key)).hexdigest()[:8]
        return plain.with_name(f"{plain.name}-{digest}")

    def _folder_is_for(self, folder: Path, key: str) -> bool:
        claim = str(folder).casefold()
        owner = self._claimed.get(claim)
        if owner is None:
            owner = next(
                (
                    k
                    for k, rec in self.records.items()
                    if k != key
                    and any(
                        str((self.work_dir / info["path"]).parent).casefold() == claim
                        for info in rec.get("labels", {}).values()
                    )
                ),
                key,
            )
            self._claimed[claim] = owner
        return owner == key

    def labels_path(self, key: str, layer_name: str) -> Path:
        """``<labels_dir>/<scan>_<model>.nii.gz``: the scan's name, then what the layer
        name adds to it (``p1.nii.gz [3D U-Net]`` -> ``p1_3D_U-Net.nii.gz``). Only when
        two layer names of one scan make the same file name does one get a short hash."""
        folder = self.labels_dir(key)
        stem = _slug(_scan_stem(key), 60)
        path = folder / f"{stem}_{_slug(_layer_part(layer_name, key), 60)}.nii.gz"
        claim = str(path).casefold()
        recorded = {
            str(self.work_dir / info["path"]).casefold(): name
            for name, info in self.records.get(key, {}).get("labels", {}).items()
        }
        owner = self._claimed.setdefault(claim, recorded.get(claim, layer_name))
        if owner == layer_name:
            return path
        digest = hashlib.sha1(_key_bytes(layer_name)).hexdigest()[:8]
        return path.with_name(f"{path.name[: -len('.nii.gz')]}-{digest}.nii.gz")

    def save_labels(
        self,
        key: str,
        layer_name: str,
        volume,
        *,
        annotated_slices: dict[str, Any] | None = None,
        weights: str | None = None,
        entry: ScanEntry | None = None,
        classes: list | None = None,
    ) -> Path:
        """Write a labels :class:`~napari_vnet.io.Volume` (with its geometry) atomically,
        with its class names and colours (``classes``) in a ``.labels.json`` beside it.

        The newest save of each layer name replaces the previous one; the record keeps
        its path (relative to the work folder), time and edited-slice record.
        """
        path = self.labels_path(key, layer_name)
        write_labels_file(volume, path, classes)
        self.record_labels(
            key, layer_name, path, annotated_slices=annotated_slices, weights=weights, entry=entry
        )
        return path

    def record_labels(
        self,
        key: str,
        layer_name: str,
        path: str | os.PathLike,
        *,
        annotated_slices: dict[str, Any] | None = None,
        weights: str | None = None,
        entry: ScanEntry | None = None,
    ) -> None:
        """Record labels already written to ``path`` (see :func:`write_labels_file`).

        The second half of :meth:`save_labels`, for a caller that writes the file in
        another thread and updates the project (not thread-safe) afterwards.
        """
        path = Path(path)
        with self._transaction(key, entry) as rec:
            rec["labels"][layer_name] = {
                "path": path.relative_to(self.work_dir).as_posix(),
                "saved_at": _now(),
                "annotated_slices": annotated_slices,
                "weights": weights,
            }

    def forget_labels(self, key: str, layer_name: str) -> None:
        if layer_name not in self.records.get(key, {}).get("labels", {}):
            return
        with self._transaction(key) as rec:
            rec["labels"].pop(layer_name, None)

    def saved_labels(self, key: str) -> list[dict[str, Any]]:
        """The autosaved label layers of a scan that still exist on disk, oldest first."""
        rec = self.records.get(key)
        if not rec:
            return []
        out = []
        for name, info in rec["labels"].items():
            path = self.work_dir / info["path"]
            if path.exists():
                out.append({"name": name, **info, "path": path})
        out.sort(key=lambda d: d.get("saved_at") or "")
        return out

    def scans_with_status(self, statuses: Iterable[str]) -> list[tuple[str, dict[str, Any]]]:
        wanted = set(statuses)
        return [(k, self.record(k)) for k, r in self.records.items() if r["status"] in wanted]

    def training_pairs(self) -> list[dict[str, Any]]:
        """Corrected/reviewed scans with their newest saved labels, for fine-tuning.

        Each item: ``key, name, image (source path), labels (Path), annotated_slices,
        status``. Scans without saved labels are left out.
        """
        pairs = []
        for key, rec in self.scans_with_status(("corrected", "reviewed")):
            saved = self.saved_labels(key)
            if not saved or not rec.get("source"):
                continue
            edited = [s for s in saved if s.get("annotated_slices")]
            best = (edited or saved)[-1]
            pairs.append(
                {
                    "key": key,
                    "name": rec.get("name") or key,
                    "image": rec["source"],
                    "labels": best["path"],
                    "annotated_slices": best.get("annotated_slices"),
                    "status": rec["status"],
                }
            )
        return pairs


def write_labels_file(volume, path: str | os.PathLike, classes: list | None = None) -> Path:
    """Atomic label write with the volume's geometry (smallest unsigned integer type).

    ``classes`` (``[{"value", "name", "color"}]``): written after the labels as
    ``<stem>.labels.json`` beside them (:func:`napari_vnet.label_names.write_label_classes`),
    which restores the names and colours when the file is read again.
    Touches no project state, so it may run in a worker thread; record the file with
    :meth:`ScanProject.record_labels` afterwards.
    """
    from napari_vnet.io import write_volume

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_volume(volume, path, is_label=True, overwrite_source=True)
    if classes:
        from napari_vnet.label_names import write_label_classes

        try:
            write_label_classes(path, classes)
        except OSError as exc:  # the labels are safe; only their names/colours are not
            logger.warning("%s: class names and colours not written: %s", path, exc)
    return path
