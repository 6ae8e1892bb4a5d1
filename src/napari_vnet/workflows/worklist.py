"""A worklist of scans: the status store of a work folder.

Qt-free core behind the "Scans" dock (:mod:`napari_vnet._widgets.scans`).
:class:`ScanProject` keeps, in a work folder of the user's choice (the scans folder may be
read-only), a small JSON project file (written atomically) with each scan's status
(``not opened`` -> ``opened`` -> ``predicted`` -> ``corrected`` -> ``reviewed``), the
weights used, the prediction's uncertainty score, time stamps, the autosaved label volumes and their edited-slice records.
The scans themselves are listed by
:func:`napari_vnet.workflows.worklist_scan.discover_scans` (headers only).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from napari_vnet.errors import NapariVnetError
from napari_vnet.io.headers import DICOM_EXTENSIONS, VOLUME_SUFFIXES, split_suffix
from napari_vnet.io.paths import printable, slug
from napari_vnet.workflows.worklist_scan import ScanEntry

logger = logging.getLogger(__name__)

__all__ = [
    "BROKEN",
    "PROJECT_FILENAME",
    "STATUSES",
    "ProjectError",
    "ProjectMismatchError",
    "ScanProject",
    "write_labels_file",
]

#: Every status a scan can have, in the order of the workflow.
STATUSES = ("not opened", "opened", "predicted", "corrected", "reviewed")
#: Pseudo-status of entries whose header could not be read.
BROKEN = "broken"
PROJECT_FILENAME = "napari-vnet-scans.json"
PROJECT_VERSION = 1


class ProjectError(NapariVnetError, RuntimeError):
    """The project file of a work folder cannot be read or written."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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
    if sys.platform == "win32":
        import msvcrt

        mode = msvcrt.LK_LOCK if blocking else msvcrt.LK_NBLCK
        try:
            fh.seek(0)
            msvcrt.locking(fh.fileno(), mode, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def _unlock_file(fh) -> None:
    if sys.platform == "win32":
        import msvcrt

        try:
            fh.seek(0)
            msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)
        except OSError:
            pass
        return
    import fcntl

    fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _key_bytes(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")


def _scan_stem(key: str) -> str:
    """``"sub/ct0.nii.gz"`` -> ``"ct0"``; DICOM keys (``"folder#uid"``) -> the folder name."""
    base = key.split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return (split_suffix(base, VOLUME_SUFFIXES + DICOM_EXTENSIONS) or (base, ""))[0]


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
    return slug(head + _scan_stem(key), fallback="scan")


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
        self._session: IO[bytes] | None = None
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
                    f"{printable(str(self.work_dir))}: this work folder holds the project of the "
                    f"scans folder {printable(stored)}, not {printable(root)}; choose another work "
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
                f"{printable(str(self.work_dir))}: this work folder holds the project of the scans "
                f"folder {printable(self._stored_root)}, not {printable(self.scans_root)}; choose "
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
            f"The scans project {printable(str(self.path))} was damaged ({exc}); it was set aside "
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
                f"{printable(str(self.work_dir))}. Changes of both are merged, but edits of one "
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

    def uncertainty(self, key: str) -> float | None:
        """The scan's uncertainty score (0..1) from its newest scored prediction; None
        when it has none."""
        value = (self.records.get(key) or {}).get("uncertainty")
        return float(value) if isinstance(value, int | float) else None

    def mark(
        self,
        key: str,
        status: str,
        *,
        entry: ScanEntry | None = None,
        weights: str | os.PathLike | None = None,
        force: bool = False,
        uncertainty: float | None = None,
    ) -> bool:
        """Move a scan to ``status`` (forward only unless ``force``); returns True if changed.

        The time stamp of the status is recorded (``times[status]``) even when the status
        does not move (e.g. a second prediction updates ``times["predicted"]`` and weights).
        ``uncertainty``: the prediction's score
        (:func:`napari_vnet.correct.uncertainty.scan_score`), kept as the record's
        ``uncertainty`` until a newer prediction brings one. The change is applied to the
        record as it is on disk (another session's later status is kept).
        """
        if status not in STATUSES:
            raise ValueError(f"unknown scan status {status!r}; expected one of {STATUSES}")
        with self._transaction(key, entry) as rec:
            now = _now()
            rec["times"][status] = now
            rec["times"]["updated"] = now
            if weights is not None:
                rec["weights"] = str(weights)
            if uncertainty is not None:
                rec["uncertainty"] = round(float(uncertainty), 5)
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
        stem = slug(_scan_stem(key), fallback="scan")
        part = slug(_layer_part(layer_name, key), fallback="scan")
        path = folder / f"{stem}_{part}.nii.gz"
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
    ``<stem>.labels.json`` beside them (:func:`napari_vnet.io.label_names.write_label_classes`),
    which restores the names and colours when the file is read again.
    Touches no project state, so it may run in a worker thread; record the file with
    :meth:`ScanProject.record_labels` afterwards.
    """
    from napari_vnet.io import write_volume

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_volume(volume, path, is_label=True, overwrite_source=True)
    if classes:
        from napari_vnet.io.label_names import write_label_classes

        try:
            write_label_classes(path, classes)
        except OSError as exc:  # the labels are safe; only their names/colours are not
            logger.warning("%s: class names and colours not written: %s", path, exc)
    return path
