"""Autosaves of the Scans dock, compressed and written in a background thread.

Compressing a 300 x 512 x 512 label volume to ``.nii.gz`` takes about a second, so the
dock only hands the layer's array to :class:`BackgroundSaver` (as it is when the layer is
about to get another scan's data, else copied first thing in the writer thread:
``SaveJob.copy``):

* one writer thread: two writes of the same file never overlap, and a snapshot queued
  behind a newer one of the same file is dropped (the newer one is written);
* each file is written atomically
  (:func:`napari_vnet.workflows.worklist.write_labels_file`: a temporary file in the
  same folder, then ``os.replace``), so a process killed during a write leaves the
  previous autosave intact;
* the project file is updated in the same thread after the write
  (:meth:`~napari_vnet.workflows.worklist.ScanProject.record_labels`), never before;
  status changes go through the same thread (:meth:`BackgroundSaver.run`): the project file is
  written with ``fsync``, which can wait seconds while a big label file is written;
* until then the snapshot stays available (:meth:`BackgroundSaver.pending`), so a scan
  reopened while its autosave is still being written shows the newest labels.

:meth:`BackgroundSaver.flush` waits for every write and update: used when napari quits
and before the work folder changes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, Signal

from napari_vnet.workflows.worklist import write_labels_file

log = logging.getLogger(__name__)


@dataclass(eq=False)
class SaveJob:
    """One labels layer to write: where, what, and what to record afterwards."""

    project: Any  # ScanProject
    key: str
    name: str
    path: Path
    volume: Any  # napari_vnet.io.Volume holding the snapshot
    annotated_slices: dict[str, Any] | None = None
    weights: str | None = None
    entry: Any = None  # ScanEntry
    #: class names and colours the layer shows (``<stem>.labels.json`` beside the file)
    classes: list | None = None
    #: the volume's array is still the layer's: copied first thing in the writer thread
    #: (numpy copies without holding the GIL; a page-faulting 75 MB copy can take 0.3 s)
    copy: bool = False
    #: write nothing when the labels are all zero (a new layer nobody painted on)
    skip_if_empty: bool = False
    error: str | None = None
    skipped: bool = False
    done: bool = field(default=False, repr=False)


@dataclass
class _Call:
    then: Callable[[Any], None] | None
    result: Any
    error: str | None


class BackgroundSaver(QObject):
    """Writes :class:`SaveJob` snapshots and records them in their project, in one worker
    thread; reports on the GUI thread."""

    #: a job was written and recorded in its project (GUI thread)
    saved = Signal(object)
    #: a job could not be written or recorded, or a project update failed: (job or None,
    #: message) (GUI thread)
    failed = Signal(object, str)
    _finished = Signal()

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="napari-vnet-autosave")
        self._lock = threading.Lock()
        self._queued: dict[Path, SaveJob] = {}  # submitted, not started (newest per file)
        self._latest: dict[tuple[str, str], SaveJob] = {}  # newest per (scan, layer), unrecorded
        self._done: list = []  # SaveJob / _Call finished, not yet reported
        self._futures: set[Future] = set()
        self._versions: dict[tuple[str, str], int] = {}  # snapshots submitted per layer
        self._finished.connect(self._drain)
        self._pool.submit(lambda: None)  # start the thread now, not during the first save

    # ------------------------------------------------------------------ public
    def submit(self, job: SaveJob) -> None:
        """Queue ``job``; a queued, not yet started job of the same file is replaced."""
        with self._lock:
            coalesced = job.path in self._queued
            self._queued[job.path] = job
            self._latest[(job.key, job.name)] = job
            self._versions[(job.key, job.name)] = self._versions.get((job.key, job.name), 0) + 1
        if not coalesced:
            future = self._pool.submit(self._write, job.path)
            self._futures.add(future)
            future.add_done_callback(self._futures.discard)

    def pending(self, key: str) -> dict[str, SaveJob]:
        """Layer name -> newest snapshot of scan ``key`` not yet recorded in its project."""
        with self._lock:
            return {name: job for (k, name), job in self._latest.items() if k == key}

    def versions(self, key: str) -> dict[str, int]:
        """Layer name -> how many snapshots of scan ``key`` were submitted this session."""
        with self._lock:
            return {name: n for (k, name), n in self._versions.items() if k == key}

    def busy(self) -> bool:
        with self._lock:
            return bool(self._latest)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait for every queued write and record it now; False on timeout."""
        _done, not_done = wait(list(self._futures), timeout=timeout)
        self._drain()
        return not not_done

    def write_now(self, job: SaveJob) -> Path:
        """Write and record ``job`` on the calling thread (after the queued writes)."""
        self.flush()
        if not (job.skip_if_empty and not np.any(job.volume.array)):
            write_labels_file(job.volume, job.path, job.classes)
            self._record(job)
        job.done = True
        with self._lock:
            if self._latest.get((job.key, job.name)) is job:
                del self._latest[(job.key, job.name)]
        return job.path

    def shutdown(self) -> None:
        self.flush()
        self._pool.shutdown(wait=True)

    # ------------------------------------------------------------------ worker
    def _write(self, path: Path) -> None:
        with self._lock:
            job = self._queued.pop(path, None)
        if job is None:  # pragma: no cover - every future has its queued job
            return
        try:
            if job.copy:
                job.volume = job.volume.with_array(np.array(job.volume.array, copy=True))
                job.copy = False
            if job.skip_if_empty and not np.any(job.volume.array):
                job.skipped = True
            else:
                write_labels_file(job.volume, job.path, job.classes)
                self._record(job)  # the project file, after the labels file is on disk
        except Exception as exc:  # noqa: BLE001 - reported on the GUI thread
            log.exception("autosave of %s failed", job.path)
            job.error = f"{job.path}: {exc}"
        job.done = True
        with self._lock:
            if job.error is None and self._latest.get((job.key, job.name)) is job:
                del self._latest[(job.key, job.name)]  # failed: the snapshot stays pending
            self._done.append(job)
        self._finished.emit()  # queued to the GUI thread

    def run(self, fn: Callable[[], Any], then: Callable[[Any], None] | None = None) -> None:
        """Run ``fn()`` in the writer thread, after the writes queued before it (e.g. a
        project status change: its file is written with fsync, which can wait seconds
        for a big label file being written); ``then(result)`` follows on the GUI thread."""

        def call():
            try:
                result, error = fn(), None
            except Exception as exc:  # noqa: BLE001 - reported on the GUI thread
                log.exception("project update failed")
                result, error = None, str(exc)
            with self._lock:
                self._done.append(_Call(then, result, error))
            self._finished.emit()

        future = self._pool.submit(call)
        self._futures.add(future)
        future.add_done_callback(self._futures.discard)

    # ------------------------------------------------------------------ GUI thread
    def _drain(self) -> None:
        with self._lock:
            done, self._done = self._done, []
        for item in done:
            if isinstance(item, _Call):
                if item.error is not None:
                    self.failed.emit(None, item.error)
                elif item.then is not None:
                    item.then(item.result)
            elif item.error is not None:  # the snapshot stays in ``pending``: nothing is lost
                self.failed.emit(item, item.error)
            elif not item.skipped:
                self.saved.emit(item)

    @staticmethod
    def _record(job: SaveJob) -> None:
        job.project.record_labels(
            job.key,
            job.name,
            job.path,
            annotated_slices=job.annotated_slices,
            weights=job.weights,
            entry=job.entry,
        )
