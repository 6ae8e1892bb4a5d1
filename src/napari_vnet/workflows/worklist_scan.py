"""The scans of a worklist: folder discovery (headers only).

Qt-free core behind the "Scans" dock (:mod:`napari_vnet._widgets.scans`) and the folder
runs of ``napari-vnet predict``; the status store of a work folder is
:mod:`napari_vnet.workflows.worklist`.

* :func:`discover_scans` walks a folder and *yields* one :class:`ScanEntry` per volume
  file (every format the reader supports) and per DICOM series found in sub-folders.
  Only headers are read (SimpleITK ``ReadImageInformation``, GDCM's header scanner),
  never pixel data, so hundreds of files list in seconds. A file that cannot be read is
  yielded as a *broken* entry (``entry.error``) and the walk goes on.

Geometry follows :mod:`napari_vnet.io.volume`: shapes and spacings are ``(z, y, x)``.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from napari_vnet.io.headers import (
    DATA_SUFFIXES,
    DICOM_EXTENSIONS,
    IGNORED_SUFFIXES,
    VOLUME_SUFFIXES,
    has_dicom_magic,
    known_suffix,
)
from napari_vnet.io.label_names import label_files_in_folder
from napari_vnet.io.paths import printable
from napari_vnet.io.reading import read_file_header

logger = logging.getLogger(__name__)

__all__ = [
    "ORDERS",
    "ScanEntry",
    "discover_scans",
    "order_scans",
    "read_scan",
]

#: how the Scans dock orders its list: as listed, or the least certain prediction first
ORDERS = ("folder", "least certain first")


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


def _file_entry(path: str, rel: str) -> ScanEntry:
    try:
        st = os.stat(path)
        size_bytes = st.st_size
    except OSError:
        st, size_bytes = None, 0
    entry = ScanEntry(key=rel, path=path, name=printable(rel), size_bytes=size_bytes)
    if st is not None and not stat.S_ISREG(st.st_mode):
        entry.error = f"{printable(path)}: not a regular file (a device, FIFO or socket); skipped"
        return entry
    try:
        head = read_file_header(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable header is a broken entry
        shown = printable(path)
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
        key=rel, path=path, name=printable(rel), kind="dicom", error=f"{printable(path)}: {problem}"
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
            name=printable(_series_name(info, rel_dir)),
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
        raise NotADirectoryError(f"{printable(str(root_path))}: scans folder does not exist")
    walker = _Walk(
        root_path,
        recursive=recursive,
        excluded={os.path.normpath(str(Path(p).expanduser().resolve())) for p in exclude},
        should_stop=should_stop,
        max_depth=max_depth,
        max_entries=max_entries,
    )
    try:
        yield from walker.folder(str(root_path), 0)
    except _Stop as stop:
        logger.warning("%s", stop)
        yield ScanEntry(
            key="<listing stopped>",
            path=str(root_path),
            name="(listing stopped)",
            error=f"{printable(str(root_path))}: listing stopped: {stop}",
        )


class _Stop(Exception):
    """The listing went past one of its bounds (depth, directory entries)."""


@dataclass
class _Walk:
    """One listing of :func:`discover_scans`: its bounds and what it has seen so far."""

    root: Path
    recursive: bool
    excluded: set[str]
    should_stop: Any
    max_depth: int
    max_entries: int
    seen_dirs: set[str] = field(default_factory=set)
    seen_files: set[str] = field(default_factory=set)
    counted: int = 0

    def _stopped(self) -> bool:
        return self.should_stop is not None and bool(self.should_stop())

    def _items(self, folder: str) -> list[os.DirEntry]:
        """The entries of ``folder`` sorted by name (counted against ``max_entries``)."""
        items = []
        with os.scandir(folder) as it:
            for e in it:
                self.counted += 1
                if self.counted > self.max_entries:
                    raise _Stop(
                        f"more than {self.max_entries} files and folders; choose a smaller folder"
                    )
                items.append(e)
        items.sort(key=lambda e: e.name.lower())
        return items

    def folder(self, folder: str, depth: int) -> Iterator[ScanEntry]:
        """The scans of ``folder``, then (``recursive``) of its sub-folders."""
        real = os.path.realpath(folder)
        if real in self.seen_dirs:
            logger.warning(
                "%s: already listed as %s (a symbolic link loop or a second link); skipped",
                printable(folder),
                printable(real),
            )
            return
        self.seen_dirs.add(real)
        try:
            items = self._items(folder)
        except OSError as exc:
            rel = os.path.relpath(folder, self.root)
            yield ScanEntry(
                key=rel, path=folder, name=printable(rel), error=f"{printable(folder)}: {exc}"
            )
            return
        subdirs: list[str] = []
        yield from self._files(folder, items, subdirs)
        if self.recursive and not self._stopped():  # real folders first: real paths win
            subdirs.sort(key=os.path.islink)
            for sub in subdirs:
                if depth + 1 > self.max_depth:
                    raise _Stop(
                        f"folders nested deeper than {self.max_depth} levels ({printable(sub)})"
                    )
                yield from self.folder(sub, depth + 1)

    def _files(
        self, folder: str, items: list[os.DirEntry], subdirs: list[str]
    ) -> Iterator[ScanEntry]:
        """The scans among one folder's ``items``; its sub-folders go into ``subdirs``."""
        rel_dir = os.path.relpath(folder, self.root).replace(os.sep, "/")
        names = {e.name.lower() for e in items}
        label_of = label_files_in_folder(
            folder, [e.path for e in items if known_suffix(e.name) in VOLUME_SUFFIXES], self.root
        )
        dicom_candidates: list[str] = []
        for item in items:
            if self._stopped():
                return
            if item.name.startswith("."):
                continue
            try:
                is_dir = item.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                if os.path.normpath(item.path) not in self.excluded:
                    subdirs.append(item.path)
                continue
            target = os.path.realpath(item.path)
            if target in self.seen_files:
                continue  # the same file through another link
            self.seen_files.add(target)
            rel = item.name if rel_dir == "." else f"{rel_dir}/{item.name}"
            if _is_dicom_candidate(item):
                dicom_candidates.append(item.path)
            else:
                yield from _file_scan(item, rel, names, label_of)
        if dicom_candidates:
            yield from _dicom_entries(folder, rel_dir, dicom_candidates)


def _is_dicom_candidate(item: os.DirEntry) -> bool:
    suf = known_suffix(item.name)
    if suf in VOLUME_SUFFIXES or suf in DATA_SUFFIXES:
        return False
    return suf in DICOM_EXTENSIONS or (suf not in IGNORED_SUFFIXES and has_dicom_magic(item.path))


def _file_scan(
    item: os.DirEntry, rel: str, names: set[str], label_of: dict[str, str]
) -> Iterator[ScanEntry]:
    """The entry of one volume file (none for a label file, listed with its image), or a
    broken entry for Analyze image data without its header; nothing for other files."""
    suf = known_suffix(item.name)
    if suf in VOLUME_SUFFIXES:
        if item.path in label_of:
            return  # a label file: listed with its image, not as a scan
        entry = _file_entry(item.path, rel)
        entry.labels = tuple(sorted(k for k, v in label_of.items() if v == item.path))
        yield entry
    elif suf in DATA_SUFFIXES:
        stem = item.name[: -len(suf)].lower()
        if suf in (".img", ".img.gz") and f"{stem}.hdr" not in names:
            yield ScanEntry(
                key=rel,
                path=item.path,
                name=printable(rel),
                error=f"{printable(item.path)}: image data without its .hdr header",
            )
        # .raw / .img companions of a header are read through the header


def order_scans(
    keys: Iterable[str], scores: Callable[[str], float | None], order: str = "folder"
) -> list[str]:
    """The scan ``keys`` in the order ``order`` (one of :data:`ORDERS`).

    ``"folder"``: as given (the listing order). ``"least certain first"``: by
    ``scores(key)`` (a scan's uncertainty, 0..1) from the highest down, as active learning
    picks the scans to annotate; scans without a score (not predicted yet) come last; ties
    and unscored scans keep the listing order.
    """
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; expected one of {ORDERS}")
    keys = list(keys)
    if order == "folder":
        return keys
    scored = [(scores(k), i, k) for i, k in enumerate(keys)]
    known = sorted((-s, i, k) for s, i, k in scored if s is not None)
    return [k for _s, _i, k in known] + [k for s, _i, k in scored if s is None]
