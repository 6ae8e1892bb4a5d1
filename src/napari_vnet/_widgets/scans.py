"""The "Scans" dock: a folder or DICOM study as a worklist, with autosaved corrections.

The dock lists every volume of a scans folder (headers only, in a worker thread, the
list filling as it goes), loads one scan at a time (click, Previous/Next buttons,
PageUp/PageDown in the viewer), and keeps each scan's status, weights, time stamps and
autosaved Labels layers in a project file inside a work folder
(:class:`napari_vnet.workflows.worklist.ScanProject`).

A scan predicted while it is shown here gets an uncertainty score (the Segment dock then
computes the uncertainty map, whether or not it shows it as a layer;
:func:`napari_vnet.correct.uncertainty.scan_score`), kept in the project and shown in the
"Uncertainty" column; "Order: least certain first" lists (and steps through) the least
certain scans first, the ones not predicted yet last.

Stepping through scans of clinical size stays fluid because the GUI thread does only
what napari itself must do:

* the next scan is read (with its contrast limits and autosaved labels) in a worker
  (:mod:`._scan_loading`), and the scan after it is prefetched in the background;
* the scan's Image and Labels layers are kept and their data swapped, instead of
  closing them and adding new layers;
* edited Labels layers are autosaved by a background writer (:mod:`._autosave`): the
  GUI thread hands over the array (when the layer gets another scan's data) or a copy
  (timer, "Save labels now"), the writer compresses and writes atomically, and the
  project file is updated after the write. When napari closes, the labels are saved
  synchronously.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QEvent, QObject, QTimer, Signal
from qtpy.QtWidgets import (
    QApplication,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_vnet._atomic import atomic_write_text
from napari_vnet._widgets._autosave import BackgroundSaver
from napari_vnet._widgets._compact import Collapsible
from napari_vnet._widgets._scan_edits import ScanEditsMixin
from napari_vnet._widgets._scan_loading import ScanLoadingMixin
from napari_vnet._widgets._scans_table import FILTERS, ScanTable
from napari_vnet._widgets._session import join_session
from napari_vnet.io.paths import printable
from napari_vnet.workflows.worklist import BROKEN, ProjectError, ScanProject
from napari_vnet.workflows.worklist_scan import ORDERS, ScanEntry, discover_scans

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

SETTINGS_FILE = "scans.json"
NEXT_KEY = "PageDown"
PREVIOUS_KEY = "PageUp"
_BATCH = 40  # entries per list update while discovering
_BATCH_SECONDS = 0.2


def _config_dir() -> Path:
    from napari_vnet._widgets._session import config_dir

    return config_dir()


def _discover_in_batches(root: str, exclude: list[str]):
    """Worker body: yields lists of :class:`ScanEntry` while walking ``root``."""
    batch: list[ScanEntry] = []
    last = time.monotonic()
    for entry in discover_scans(root, exclude=exclude):
        batch.append(entry)
        if len(batch) >= _BATCH or time.monotonic() - last > _BATCH_SECONDS:
            yield batch
            batch, last = [], time.monotonic()
    if batch:
        yield batch


def _about_to_quit(ref) -> None:
    widget = ref()
    if widget is None:
        return
    try:
        widget.objectName()
    except RuntimeError:  # its Qt side is gone (the viewer was closed before)
        return
    widget._autosave_quietly("quit")


class _CloseFilter(QObject):
    """Autosaves when the napari main window receives its close event."""

    def __init__(self, owner: ScansWidget):
        super().__init__(owner)
        self._owner = owner

    def eventFilter(self, obj, event):  # noqa: N802 - Qt API
        if event.type() == QEvent.Type.Close:
            self._owner._autosave_quietly("window closing")
            if self._owner._discovery is not None:
                self._owner._discovery.quit()
        return False


class ScansWidget(ScanLoadingMixin, ScanEditsMixin, QWidget):
    """Worklist of the scans in a folder, with per-scan status and autosaved labels."""

    #: emitted with the :class:`ScanEntry` once its layers are in the viewer
    scan_loaded = Signal(object)
    #: emitted with the number of entries when a folder scan is complete
    discovery_finished = Signal(int)
    #: emitted with (key, status) when a scan's status moves
    status_changed = Signal(str, str)
    #: emitted with the list of written paths once an autosave is on disk and recorded
    autosaved = Signal(list)

    def __init__(self, napari_viewer: napari.Viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = join_session(napari_viewer, "scans", self)
        self.project: ScanProject | None = None
        self.scans_folder: Path | None = None
        self.work_folder: Path | None = None
        self.current: ScanEntry | None = None
        self._geometry = None  # Volume (empty array) with the current scan's grid
        self._scan_shape: tuple[int, ...] = ()
        self._scan_layers: list = []
        self._image_layer = None
        self._dirty: set[int] = set()
        self._trackers: dict[int, Any] = {}
        self._requested: ScanEntry | None = None
        self._discovery = None
        self._loader = None
        self._prefetch: tuple[str, Any] | None = None  # (key, worker or LoadedScan)
        self._direction = 1
        self._closing = False
        self._restoring = False
        self._syncing = False
        self.saver = BackgroundSaver(self)
        self._status_ahead: dict[str, str] = {}  # statuses still being written
        self._score_ahead: dict[str, float] = {}  # uncertainty scores still being written
        self.saver.saved.connect(self._on_saved)
        self.saver.failed.connect(self._on_save_failed)
        self._build()
        self._connect_viewer()
        self._restore_settings()

    @property
    def entries(self) -> list[ScanEntry]:
        return self.table.entries

    @property
    def _row_of(self) -> dict[str, int]:
        return self.table.row_of

    # ------------------------------------------------------------------ UI
    def _build(self) -> None:
        layout = QVBoxLayout(self)
        self.scans_edit = QLineEdit(
            readOnly=True, placeholderText="scans folder (may be read-only)"
        )
        self.work_edit = QLineEdit(readOnly=True, placeholderText="work folder (status + labels)")
        for label, edit, slot in (
            ("Scans", self.scans_edit, self._choose_scans),
            ("Work", self.work_edit, self._choose_work),
        ):
            row = QHBoxLayout()
            row.addWidget(QLabel(label))
            row.addWidget(edit, 1)
            button = QPushButton("Choose…")
            button.clicked.connect(slot)
            row.addWidget(button)
            layout.addLayout(row)

        row = QHBoxLayout()
        row.addWidget(QLabel("Show"))
        self.filter_combo = QComboBox()
        self.filter_combo.addItems(list(FILTERS))
        self.filter_combo.currentTextChanged.connect(lambda _: self._apply_filter())
        row.addWidget(self.filter_combo, 1)
        self.rescan_button = QPushButton("Rescan")
        self.rescan_button.clicked.connect(self.rescan)
        row.addWidget(self.rescan_button)
        layout.addLayout(row)
        row = QHBoxLayout()
        row.addWidget(QLabel("Order"))
        self.order_combo = QComboBox()
        self.order_combo.addItems(list(ORDERS))
        self.order_combo.setToolTip(
            "folder: as listed; least certain first: the scans whose prediction the model is "
            "least sure of first (review those first), scans not predicted yet last"
        )
        self.order_combo.currentTextChanged.connect(self._on_order)
        row.addWidget(self.order_combo, 1)
        layout.addLayout(row)

        self.table = ScanTable(self.status_of, self.uncertainty_of)
        self.table.itemSelectionChanged.connect(self._on_selection)
        layout.addWidget(self.table, 1)

        options = QWidget()
        opts = QVBoxLayout(options)
        opts.setContentsMargins(0, 0, 0, 0)
        self.predict_check = QCheckBox("Predict on open (weights of Segment volume)")
        self.predict_check.toggled.connect(lambda _: self._save_settings())
        opts.addWidget(self.predict_check)
        row = QHBoxLayout()
        row.addWidget(QLabel("Autosave while editing every"))
        self.autosave_spin = QSpinBox(minimum=1, maximum=120, value=2, suffix=" min")
        self.autosave_spin.valueChanged.connect(lambda _: self._save_settings())
        row.addWidget(self.autosave_spin)
        opts.addLayout(row)
        self.options_group = Collapsible("Options", options)  # closed by default
        layout.addWidget(self.options_group)
        self.finetune_button = QPushButton("Fine-tune on corrected scans")
        self.finetune_button.clicked.connect(self.finetune_on_corrected)
        layout.addWidget(self.finetune_button)
        self._build_footer(layout)

        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(lambda: self._autosave_quietly("timer"))

    def _build_footer(self, layout) -> None:
        """Previous / Next, Mark reviewed / Save labels now and the status line: pinned
        below the scroll area when docked (:class:`~._docking.ScrollDock`)."""
        self.footer = QWidget()
        foot = QVBoxLayout(self.footer)
        row = QHBoxLayout()
        self.prev_button = QPushButton(f"◀ Previous ({PREVIOUS_KEY})")
        self.prev_button.clicked.connect(self.previous_scan)
        self.next_button = QPushButton(f"Next ({NEXT_KEY}) ▶")
        self.next_button.clicked.connect(self.next_scan)
        row.addWidget(self.prev_button)
        row.addWidget(self.next_button)
        foot.addLayout(row)

        row = QHBoxLayout()
        self.reviewed_button = QPushButton("Mark reviewed")
        self.reviewed_button.clicked.connect(self.mark_reviewed)
        row.addWidget(self.reviewed_button)
        self.save_button = QPushButton("Save labels now")
        self.save_button.clicked.connect(lambda: self.autosave())
        row.addWidget(self.save_button)
        foot.addLayout(row)
        self.info_label = QLabel("Choose a scans folder.")
        self.info_label.setWordWrap(True)
        # a long path in the text must not widen the dock
        self.info_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        foot.addWidget(self.info_label)
        layout.addWidget(self.footer)

    def _connect_viewer(self) -> None:
        self.viewer.layers.events.inserted.connect(self._on_inserted)
        self.viewer.layers.events.removing.connect(self._on_removing)
        self.viewer.bind_key(NEXT_KEY, lambda _v: self.next_scan(), overwrite=True)
        self.viewer.bind_key(PREVIOUS_KEY, lambda _v: self.previous_scan(), overwrite=True)
        self._close_filter = _CloseFilter(self)
        self._hooked_window = None
        app = QApplication.instance()
        if app is not None:  # a weak hook: a closed dock must not be kept alive by the app
            app.aboutToQuit.connect(functools.partial(_about_to_quit, weakref.ref(self)))

    def _hook_window(self) -> None:
        """Watch the close event of the main window this dock sits in (once docked)."""
        win = self.window()
        hooked = self._hooked_window() if self._hooked_window is not None else None
        if win is self or win is hooked:
            return
        if hooked is not None:
            hooked.removeEventFilter(self._close_filter)
        win.installEventFilter(self._close_filter)
        self._hooked_window = weakref.ref(win)  # never keep napari's window alive

    def event(self, event) -> bool:
        if event.type() in (QEvent.Type.ParentChange, QEvent.Type.Show):
            self._hook_window()
        return super().event(event)

    # ------------------------------------------------------------ settings
    def _settings_path(self) -> Path:
        return _config_dir() / SETTINGS_FILE

    def _save_settings(self) -> None:
        data = {
            "scans_folder": str(self.scans_folder) if self.scans_folder else None,
            "work_folder": str(self.work_folder) if self.work_folder else None,
            "predict_on_open": self.predict_check.isChecked(),
            "autosave_minutes": self.autosave_spin.value(),
            "order": self.order_combo.currentText(),
        }
        path = self._settings_path()
        try:
            atomic_write_text(path, json.dumps(data, indent=1))
        except OSError as exc:  # settings are a convenience only
            log.warning("cannot save scan browser settings to %s: %s", path, exc)

    def _restore_settings(self) -> None:
        try:
            data = json.loads(self._settings_path().read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if not isinstance(data, dict):
            return
        self.predict_check.setChecked(bool(data.get("predict_on_open", False)))
        self.autosave_spin.setValue(int(data.get("autosave_minutes", 2) or 2))
        if data.get("order") in ORDERS:
            self.order_combo.setCurrentText(data["order"])
        scans, work = data.get("scans_folder"), data.get("work_folder")
        try:  # a remembered folder that cannot be listed must never stop the dock
            if scans and Path(scans).is_dir():
                if work:
                    self.set_work_folder(work, save=False)
                self.set_scans_folder(scans)
        except Exception as exc:  # noqa: BLE001 - any failure: start without the folders
            self._notify("warning", f"The last scans folder could not be reopened: {exc}")

    def default_work_folder(self, scans_folder: str | Path) -> Path:
        """Where a scans folder's project lives unless the user picks another folder."""
        scans = Path(scans_folder).expanduser().resolve()
        digest = hashlib.sha1(os.fsencode(scans)).hexdigest()[:8]
        # the name as before; only bytes that are not UTF-8 are replaced (as \xNN -> _xNN)
        name = printable(scans.name).replace("\\", "_") or "scans"
        return _config_dir() / "projects" / f"{name}-{digest}"

    # ------------------------------------------------------------- folders
    def _choose_scans(self) -> None:
        folder = QFileDialog.getExistingDirectory(
            self, "Scans folder", str(self.scans_folder or "")
        )
        if folder:
            self.set_scans_folder(folder)

    def _choose_work(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Work folder", str(self.work_folder or ""))
        if folder:
            self.set_work_folder(folder)

    def set_work_folder(self, folder: str | Path, *, save: bool = True) -> None:
        """Use ``folder`` for the project file and the autosaved labels."""
        self._close_current()
        self.saver.flush()
        work = Path(folder).expanduser().resolve()
        try:  # a work folder belongs to one scans folder (ProjectMismatchError)
            work.mkdir(parents=True, exist_ok=True)
            project = ScanProject(work, self.scans_folder)
        except (ProjectError, OSError) as exc:
            self._notify("error", f"Cannot use the work folder {printable(work)}: {exc}")
            return
        if self.project is not None:
            self.project.release_session()
        self.work_folder, self.project = work, project
        self._status_ahead.clear()
        self._score_ahead.clear()
        self.work_edit.setText(printable(self.work_folder))
        for notice in (project.notice, project.acquire_session("napari")):
            if notice:
                self._notify("warning", notice)
        self.table.refresh_all()
        self.table.apply_order()
        self._apply_filter()
        if save:
            self._save_settings()

    def set_scans_folder(self, folder: str | Path, *, scan: bool = True):
        """List ``folder``; returns the discovery worker (None when ``scan`` is False)."""
        self._close_current()
        self.scans_folder = Path(folder).expanduser().resolve()
        self.scans_edit.setText(printable(self.scans_folder))
        bound = self.project.scans_root if self.project is not None else None
        if self.work_folder is None or bound not in (None, str(self.scans_folder)):
            # another folder, another project: its labels and statuses never carry over
            self.set_work_folder(self.default_work_folder(self.scans_folder), save=False)
        elif self.project is not None:
            self.project.bind(self.scans_folder)
        self._save_settings()
        return self.rescan() if scan else None

    # ----------------------------------------------------------- discovery
    def rescan(self):
        """(Re)list the scans folder in a worker thread; the table fills as it goes."""
        from napari.qt.threading import create_worker

        if self.scans_folder is None:
            return None
        if self._discovery is not None:
            self._discovery.quit()
        self.table.clear_entries()
        self._prefetch = None
        exclude = [str(self.work_folder)] if self.work_folder else []
        worker = create_worker(
            _discover_in_batches, str(self.scans_folder), exclude, _start_thread=False
        )
        worker.yielded.connect(lambda batch, w=worker: self._add_entries(batch, w))
        worker.errored.connect(lambda exc: self._notify("error", f"Listing failed: {exc}"))
        worker.finished.connect(lambda w=worker: self._on_discovery_finished(w))
        self._discovery = worker
        self.info_label.setText(f"Scanning {self.scans_folder} …")
        worker.start()
        return worker

    def _add_entries(self, batch: list[ScanEntry], worker) -> None:
        if worker is not self._discovery:
            return  # a stale listing of a previous folder
        self.table.add_entries(batch)
        self._apply_filter()
        self._update_summary(scanning=True)

    def _on_discovery_finished(self, worker) -> None:
        if worker is not self._discovery:
            return
        self._discovery = None
        self._update_summary()
        self.discovery_finished.emit(len(self.entries))

    # ---------------------------------------------------------------- table
    def status_of(self, entry: ScanEntry) -> str:
        if entry.broken:
            return BROKEN
        return self._status(entry.key) if self.project else "not opened"

    def uncertainty_of(self, entry: ScanEntry) -> float | None:
        """The scan's uncertainty score (0..1), None when it was not predicted (with a
        score) yet; a score still being written counts."""
        if entry.key in self._score_ahead:
            return self._score_ahead[entry.key]
        return self.project.uncertainty(entry.key) if self.project else None

    def scores_image(self, layer) -> bool:
        """Whether a prediction of ``layer`` gets an uncertainty score here (it shows the
        current scan)."""
        shown = self.current is not None and layer is self._image_layer
        return self.project is not None and shown

    def set_order(self, order: str) -> None:
        """List (and step through) the scans in ``order``: "folder" or "least certain
        first"."""
        index = self.order_combo.findText(order)
        if index < 0:
            raise ValueError(f"unknown order {order!r}; expected one of {ORDERS}")
        self.order_combo.setCurrentIndex(index)

    def _on_order(self, order: str) -> None:
        self.table.set_order(order)
        self._prefetch = None  # the scan after this one may be another now
        self._save_settings()

    def _refresh_key(self, key: str) -> None:
        self.table.current_key = self.current.key if self.current else None
        self.table.refresh_key(key)
        if self.table.order != "folder":
            self.table.apply_order()
        self._apply_filter()
        self._update_summary(scanning=self._discovery is not None)

    def set_filter(self, status: str) -> None:
        """Show only scans with this status ("all", "to do (not reviewed)", a status, "broken")."""
        index = self.filter_combo.findText(status)
        if index < 0:
            raise ValueError(f"unknown filter {status!r}")
        self.filter_combo.setCurrentIndex(index)

    def _apply_filter(self) -> None:
        self.table.apply_filter(self.filter_combo.currentText())

    def visible_entries(self) -> list[ScanEntry]:
        return self.table.visible_entries()

    def _update_summary(self, scanning: bool = False) -> None:
        self.info_label.setText(self.table.summary(scanning=scanning, current=self.current))

    # -------------------------------------------------------------- loading
    def _entry(self, which) -> ScanEntry:
        if isinstance(which, ScanEntry):
            return which
        if isinstance(which, int):
            return self.entries[which]
        for entry in self.entries:
            if entry.key == which or entry.name == which or entry.path == which:
                return entry
        raise KeyError(f"no scan {which!r} in {self.scans_folder}")

    def _on_selection(self) -> None:
        if self._syncing:
            return
        rows = self.table.selectionModel().selectedRows()
        if rows:
            self.load_scan(rows[0].row())

    def _select_row(self, key: str) -> None:
        row = self._row_of.get(key)
        if row is None:
            return
        self._syncing = True
        try:
            self.table.selectRow(row)
            self.table.scrollToItem(self.table.item(row, 0))
        finally:
            self._syncing = False

    # -------------------------------------------------------------- status
    def mark_reviewed(self) -> None:
        """Mark the current scan reviewed (its labels are saved in the background)."""
        if self.current is None or self.project is None:
            self._notify("info", "Open a scan first.")
            return
        self.autosave()
        self._mark(self.current.key, "reviewed", entry=self.current)

    def finetune_on_corrected(self) -> int:
        """Hand every corrected/reviewed scan with its saved labels to the fine-tune dock."""
        if self.project is None:
            self._notify("info", "Choose a scans folder first.")
            return 0
        self.autosave(wait=True)
        pairs = self.project.training_pairs()
        if not pairs:
            self._notify("info", "No corrected or reviewed scan with saved labels yet.")
            return 0
        widget = self.session.open_dock("finetune")
        added = 0
        for pair in pairs:
            try:
                widget.add_file_pair(
                    pair["image"], str(pair["labels"]), annotated=pair["annotated_slices"]
                )
            except Exception as exc:  # noqa: BLE001 - one bad pair must not stop the rest
                self._notify("warning", f"{pair['name']} not added for fine-tuning: {exc}")
            else:
                added += 1
        self._notify("info", f"Added {added} corrected scan(s) to 'Fine-tune model'.")
        return added

    # ---------------------------------------------------------------- misc
    def _notify(self, level: str, message: str) -> None:
        from napari.utils.notifications import show_error, show_info, show_warning

        {"info": show_info, "warning": show_warning, "error": show_error}[level](message)
        if level != "info":
            log.warning("%s", message)
