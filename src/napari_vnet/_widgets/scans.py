"""The "Scans" dock: a folder or DICOM study as a worklist, with autosaved corrections.

The dock lists every volume of a scans folder (headers only, in a worker thread, the
list filling as it goes), loads one scan at a time (click, Previous/Next buttons,
PageUp/PageDown in the viewer), and keeps each scan's status, weights, time stamps and
autosaved Labels layers in a project file inside a work folder
(:class:`napari_vnet.worklist.ScanProject`). Before another scan is loaded, the current
scan's Labels layers are saved (atomically, with the scan's geometry) and its layers are
closed, so memory stays flat; reopening a scan brings its latest labels back. Labels are
also saved when napari closes and every N minutes while the user edits.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QEvent, QObject, Qt, QTimer, Signal
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_vnet.worklist import BROKEN, STATUSES, ScanEntry, ScanProject, discover_scans

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

SETTINGS_FILE = "scans.json"
NEXT_KEY = "PageDown"
PREVIOUS_KEY = "PageUp"
COLUMNS = ("Scan", "Status", "Shape (z, y, x)", "Spacing (mm)", "Size")
COL_SCAN, COL_STATUS = 0, 1
STATUS_COLORS = {
    "not opened": None,
    "opened": "#8fb3ff",
    "predicted": "#e0c060",
    "corrected": "#f08a4b",
    "reviewed": "#5cc46b",
    BROKEN: "#e05050",
}
_BATCH = 40  # entries per list update while discovering
_BATCH_SECONDS = 0.2


def _config_dir() -> Path:
    from napari_vnet._widgets._session import config_dir

    return config_dir()


def _human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


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


def _load_scan(entry: ScanEntry, saved: list[dict[str, Any]]):
    """Worker body: the scan's volume and its autosaved label volumes (broken ones skipped)."""
    from napari_vnet.io import read_volume
    from napari_vnet.worklist import read_scan

    volume = read_scan(entry)
    labels, problems = [], []
    for info in saved:
        try:
            labels.append((info, read_volume(info["path"])))
        except Exception as exc:  # noqa: BLE001 - one bad autosave must not block the scan
            problems.append(f"{info['path']}: {exc}")
    return entry, volume, labels, problems


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


class ScansWidget(QWidget):
    """Worklist of the scans in a folder, with per-scan status and autosaved labels."""

    #: emitted with the :class:`ScanEntry` once its layers are in the viewer
    scan_loaded = Signal(object)
    #: emitted with the number of entries when a folder scan is complete
    discovery_finished = Signal(int)
    #: emitted with (key, status) when a scan's status moves
    status_changed = Signal(str, str)
    #: emitted with the list of written paths after an autosave that wrote something
    autosaved = Signal(list)

    def __init__(self, napari_viewer: napari.Viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.entries: list[ScanEntry] = []
        self.project: ScanProject | None = None
        self.scans_folder: Path | None = None
        self.work_folder: Path | None = None
        self.current: ScanEntry | None = None
        self._geometry = None  # Volume (empty array) with the current scan's grid
        self._scan_layers: list = []
        self._image_layer = None
        self._dirty: set[int] = set()
        self._trackers: dict[int, Any] = {}
        self._requested: ScanEntry | None = None
        self._discovery = None
        self._loader = None
        self._closing = False
        self._restoring = False
        self._syncing = False
        self._row_of: dict[str, int] = {}
        self._build()
        self._connect_viewer()
        self._restore_settings()

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
        self.filter_combo.addItems(["all", "to do (not reviewed)", *STATUSES, BROKEN])
        self.filter_combo.currentTextChanged.connect(lambda _: self._apply_filter())
        row.addWidget(self.filter_combo, 1)
        self.rescan_button = QPushButton("Rescan")
        self.rescan_button.clicked.connect(self.rescan)
        row.addWidget(self.rescan_button)
        layout.addLayout(row)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(COL_SCAN, QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(True)
        self.table.setColumnWidth(COL_SCAN, 190)
        self.setMinimumWidth(460)
        self.table.itemSelectionChanged.connect(self._on_selection)
        layout.addWidget(self.table, 1)

        row = QHBoxLayout()
        self.prev_button = QPushButton(f"◀ Previous ({PREVIOUS_KEY})")
        self.prev_button.clicked.connect(self.previous_scan)
        self.next_button = QPushButton(f"Next ({NEXT_KEY}) ▶")
        self.next_button.clicked.connect(self.next_scan)
        row.addWidget(self.prev_button)
        row.addWidget(self.next_button)
        layout.addLayout(row)

        row = QHBoxLayout()
        self.reviewed_button = QPushButton("Mark reviewed")
        self.reviewed_button.clicked.connect(self.mark_reviewed)
        row.addWidget(self.reviewed_button)
        self.save_button = QPushButton("Save labels now")
        self.save_button.clicked.connect(lambda: self.autosave())
        row.addWidget(self.save_button)
        layout.addLayout(row)

        self.predict_check = QCheckBox("Predict on open (weights of Segment volume)")
        self.predict_check.toggled.connect(lambda _: self._save_settings())
        layout.addWidget(self.predict_check)

        row = QHBoxLayout()
        row.addWidget(QLabel("Autosave while editing every"))
        self.autosave_spin = QSpinBox(minimum=1, maximum=120, value=2, suffix=" min")
        self.autosave_spin.valueChanged.connect(lambda _: self._save_settings())
        row.addWidget(self.autosave_spin)
        layout.addLayout(row)

        self.finetune_button = QPushButton("Fine-tune on corrected scans")
        self.finetune_button.clicked.connect(self.finetune_on_corrected)
        layout.addWidget(self.finetune_button)

        self.info_label = QLabel("Choose a scans folder.")
        self.info_label.setWordWrap(True)
        layout.addWidget(self.info_label)

        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(lambda: self._autosave_quietly("timer"))

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
        }
        path = self._settings_path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
            tmp.replace(path)
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
        scans, work = data.get("scans_folder"), data.get("work_folder")
        if scans and Path(scans).is_dir():
            if work:
                self.set_work_folder(work, save=False)
            self.set_scans_folder(scans)

    def default_work_folder(self, scans_folder: str | Path) -> Path:
        """Where a scans folder's project lives unless the user picks another folder."""
        scans = Path(scans_folder).expanduser().resolve()
        digest = hashlib.sha1(str(scans).encode("utf-8")).hexdigest()[:8]
        return _config_dir() / "projects" / f"{scans.name or 'scans'}-{digest}"

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
        self.work_folder = Path(folder).expanduser().resolve()
        self.work_folder.mkdir(parents=True, exist_ok=True)
        self.work_edit.setText(str(self.work_folder))
        self.project = ScanProject(self.work_folder, self.scans_folder)
        for row in range(self.table.rowCount()):
            self._refresh_row(row)
        self._apply_filter()
        if save:
            self._save_settings()

    def set_scans_folder(self, folder: str | Path, *, scan: bool = True):
        """List ``folder``; returns the discovery worker (None when ``scan`` is False)."""
        self._close_current()
        self.scans_folder = Path(folder).expanduser().resolve()
        self.scans_edit.setText(str(self.scans_folder))
        if self.work_folder is None:
            self.set_work_folder(self.default_work_folder(self.scans_folder), save=False)
        elif self.project is not None and self.project.scans_root is None:
            self.project.scans_root = str(self.scans_folder)
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
        self.entries.clear()
        self._row_of.clear()
        self.table.setRowCount(0)
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
        self.table.setUpdatesEnabled(False)
        for entry in batch:
            row = self.table.rowCount()
            self.table.insertRow(row)
            self.entries.append(entry)
            self._row_of[entry.key] = row
            self._fill_row(row, entry)
        self.table.setUpdatesEnabled(True)
        self._apply_filter()
        self._update_summary(scanning=True)

    def _on_discovery_finished(self, worker) -> None:
        if worker is not self._discovery:
            return
        self._discovery = None
        self._update_summary()
        self.discovery_finished.emit(len(self.entries))

    # ---------------------------------------------------------------- table
    def _fill_row(self, row: int, entry: ScanEntry) -> None:
        shape = " × ".join(str(s) for s in entry.shape) if entry.shape else "—"
        spacing = ", ".join(f"{s:.3g}" for s in entry.spacing) if entry.spacing else "—"
        size = _human_size(entry.size_bytes)
        if entry.n_files > 1:
            size += f" ({entry.n_files} files)"
        texts = (entry.name, "", shape, spacing, size)
        for col, text in enumerate(texts):
            item = QTableWidgetItem(text)
            tip = entry.error or f"{entry.path}\n{entry.pixel_type} {entry.modality}".strip()
            item.setToolTip(tip)
            if col == COL_SCAN:
                item.setData(Qt.ItemDataRole.UserRole, entry.key)
            self.table.setItem(row, col, item)
        self._refresh_row(row)

    def status_of(self, entry: ScanEntry) -> str:
        if entry.broken:
            return BROKEN
        return self.project.status(entry.key) if self.project else "not opened"

    def _refresh_row(self, row: int) -> None:
        if not 0 <= row < len(self.entries):
            return
        entry = self.entries[row]
        status = self.status_of(entry)
        item = self.table.item(row, COL_STATUS)
        if item is None:
            return
        item.setText(status)
        color = STATUS_COLORS.get(status)
        for col in range(len(COLUMNS)):
            cell = self.table.item(row, col)
            if cell is None:
                continue
            if color and (col == COL_STATUS or status == BROKEN):
                cell.setForeground(QColor(color))
            else:  # the theme's text colour
                cell.setData(Qt.ItemDataRole.ForegroundRole, None)
            font = cell.font()
            font.setBold(self.current is not None and entry.key == self.current.key)
            cell.setFont(font)

    def _refresh_key(self, key: str) -> None:
        row = self._row_of.get(key)
        if row is not None:
            self._refresh_row(row)
        self._apply_filter()
        self._update_summary(scanning=self._discovery is not None)

    def _matches(self, entry: ScanEntry) -> bool:
        wanted = self.filter_combo.currentText()
        status = self.status_of(entry)
        if wanted == "all":
            return True
        if wanted.startswith("to do"):
            return status not in ("reviewed", BROKEN)
        return status == wanted

    def set_filter(self, status: str) -> None:
        """Show only scans with this status ("all", "to do (not reviewed)", a status, "broken")."""
        index = self.filter_combo.findText(status)
        if index < 0:
            raise ValueError(f"unknown filter {status!r}")
        self.filter_combo.setCurrentIndex(index)

    def _apply_filter(self) -> None:
        for row, entry in enumerate(self.entries):
            self.table.setRowHidden(row, not self._matches(entry))

    def visible_entries(self) -> list[ScanEntry]:
        return [e for r, e in enumerate(self.entries) if not self.table.isRowHidden(r)]

    def _update_summary(self, scanning: bool = False) -> None:
        counts: dict[str, int] = {}
        for entry in self.entries:
            status = self.status_of(entry)
            counts[status] = counts.get(status, 0) + 1
        parts = [f"{len(self.entries)} scans"]
        parts += [f"{counts[s]} {s}" for s in (*STATUSES[1:], BROKEN) if counts.get(s)]
        text = ", ".join(parts)
        if scanning:
            text += " — scanning…"
        if self.current is not None:
            text += f"\nCurrent: {self.current.name}"
        self.info_label.setText(text)

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
            self.table.scrollToItem(self.table.item(row, COL_SCAN))
        finally:
            self._syncing = False

    def load_scan(self, which):
        """Load a scan (entry, row, key or name); returns the loading worker or None.

        The current scan's Labels layers are autosaved and its layers closed first.
        """
        from napari.qt.threading import create_worker

        entry = self._entry(which)
        if entry.broken:
            self._notify("warning", f"Cannot open {entry.name}: {entry.error}")
            return None
        if self.project is None:
            self.set_work_folder(self.default_work_folder(self.scans_folder or Path.cwd()))
        if self._requested is not None and entry.key == self._requested.key:
            return self._loader  # already on its way
        if (
            self.current is not None
            and entry.key == self.current.key
            and any(lay in self.viewer.layers for lay in self._scan_layers)
        ):
            return None
        self._close_current()
        self._select_row(entry.key)
        self._requested = entry
        saved = self.project.saved_labels(entry.key)
        worker = create_worker(_load_scan, entry, saved, _start_thread=False)
        worker.returned.connect(self._on_loaded)
        worker.errored.connect(lambda exc, e=entry: self._on_load_error(e, exc))
        self._loader = worker
        self.info_label.setText(f"Loading {entry.name} …")
        worker.start()
        return worker

    def _on_load_error(self, entry: ScanEntry, exc: Exception) -> None:
        if self._requested is entry:
            self._requested = None
        self._notify("error", f"Cannot open {entry.name}: {exc}")

    def _on_loaded(self, result) -> None:
        from napari.layers import Image, Labels

        from napari_vnet.io import display_range, volume_to_layer_kwargs

        entry, volume, labels, problems = result
        if self._requested is None or entry.key != self._requested.key:
            return  # the user moved on while this scan was loading
        self._hook_window()  # docked by now: autosave when its main window closes
        self._requested = None
        self.current = entry
        self._geometry = volume.with_array(np.empty((0,) * volume.ndim, np.uint8))
        self._scan_shape = tuple(volume.array.shape[: volume.ndim])
        kw = volume_to_layer_kwargs(volume)
        if volume.array.ndim > volume.ndim:  # vector pixels: colour or channels
            kw["rgb"] = volume.array.shape[-1] in (3, 4)
        image = Image(volume.array, name=entry.name, contrast_limits=display_range(volume), **kw)
        self._restoring = True
        try:
            self.viewer.add_layer(image)
            self._image_layer = image
            for info, vol in labels:
                lkw = volume_to_layer_kwargs(vol, is_label=True)
                if info.get("annotated_slices"):
                    lkw["metadata"]["annotated_slices"] = info["annotated_slices"]
                self.viewer.add_layer(Labels(vol.array, name=info["name"], **lkw))
        finally:
            self._restoring = False
        self.project.mark(entry.key, "opened", entry=entry)
        self._refresh_key(entry.key)
        for msg in problems:
            self._notify("warning", f"Autosaved labels not restored: {msg}")
        self.scan_loaded.emit(entry)
        if self.predict_check.isChecked() and not labels:
            self._predict_on_open(entry)

    def _predict_on_open(self, entry: ScanEntry) -> None:
        if STATUSES.index(self.project.status(entry.key)) >= STATUSES.index("predicted"):
            return
        seg = self._segment_widget()
        if seg is None:
            self._notify("warning", "Predict on open: open the 'Segment volume' dock first.")
            return
        try:
            if seg.current_weights is None:
                self._notify("warning", "Predict on open: choose weights in 'Segment volume'.")
                return
            seg.set_image_layer(self._image_layer)
            seg.run()
        except AttributeError as exc:  # an older Segment widget without the contract
            self._notify("warning", f"Predict on open is not available: {exc}")

    def _close_current(self) -> None:
        """Autosave the current scan's Labels layers, then remove its layers."""
        self._requested = None
        if self.current is None and not self._scan_layers:
            return
        self._cancel_prediction()
        self.autosave()
        self._closing = True
        try:
            for layer in list(self._scan_layers):
                if layer in self.viewer.layers:
                    self.viewer.layers.remove(layer)
        finally:
            self._closing = False
        for layer in list(self._scan_layers):
            self._untrack(layer)
        self._scan_layers.clear()
        self._image_layer = None
        self._dirty.clear()
        self._timer.stop()
        key = self.current.key if self.current else None
        self.current = None
        self._geometry = None
        if key:
            self._refresh_key(key)

    def _segment_widget(self):
        from napari_vnet._widgets._session import find_dock_widget
        from napari_vnet._widgets.segment import SegmentWidget

        return find_dock_widget(self.viewer, SegmentWidget)

    def _cancel_prediction(self) -> None:
        """A prediction still running on this scan's image would land on the next scan."""
        seg = self._segment_widget()
        try:
            if seg is not None and seg.is_running and seg.image_layer in self._scan_layers:
                seg.cancel()
        except (AttributeError, RuntimeError):  # placeholder or closing widget
            pass

    def next_scan(self):
        """Load the next listed (visible, not broken) scan; returns the worker or None."""
        return self._step(+1)

    def previous_scan(self):
        return self._step(-1)

    def _step(self, direction: int):
        rows = [
            r for r, e in enumerate(self.entries) if not self.table.isRowHidden(r) and not e.broken
        ]
        if not rows:
            return None
        ref = self._requested or self.current
        here = self._row_of.get(ref.key) if ref is not None else None
        if here is None:
            target = rows[0] if direction > 0 else rows[-1]
        else:
            after = [r for r in rows if (r - here) * direction > 0]
            if not after:
                self._notify("info", "Last scan of the list." if direction > 0 else "First scan.")
                return None
            target = after[0] if direction > 0 else after[-1]
        return self.load_scan(target)

    # ----------------------------------------------------- layer tracking
    def _on_inserted(self, event) -> None:
        from napari.layers import Labels

        layer = event.value
        if self.current is None and not self._restoring:
            return
        if self._requested is not None and not self._restoring:
            return
        self._scan_layers.append(layer)
        if not isinstance(layer, Labels):
            return
        self._track(layer)
        if self._restoring:
            return
        self._dirty.add(id(layer))  # a new layer (e.g. a prediction) is not saved yet
        record = layer.metadata.get("napari_vnet") or {}
        weights = record.get("weights")
        source = record.get("source_layer")
        image = self._image_layer
        if source and image is not None and source != image.name:
            weights = None  # a prediction of some other image: not this scan's
        if weights and self.current is not None and self.project is not None:
            if self.project.mark(
                self.current.key, "predicted", entry=self.current, weights=weights
            ):
                self.status_changed.emit(self.current.key, "predicted")
            self._refresh_key(self.current.key)

    def _track(self, layer) -> None:
        layer.events.paint.connect(self._on_paint)
        layer.events.data.connect(self._on_data)
        try:
            from napari_vnet._widgets._edits import EditTracker
        except ImportError:  # pragma: no cover - edit tracker not installed
            return
        self._trackers[id(layer)] = EditTracker(layer, parent=self)

    def _untrack(self, layer) -> None:
        if not hasattr(layer.events, "paint"):
            return
        for emitter, slot in (
            (layer.events.paint, self._on_paint),
            (layer.events.data, self._on_data),
        ):
            try:
                emitter.disconnect(slot)
            except (TypeError, ValueError, RuntimeError):
                pass
        tracker = self._trackers.pop(id(layer), None)
        if tracker is not None:
            tracker.disconnect_layer()
            tracker.deleteLater()

    def _on_data(self, event) -> None:
        self._dirty.add(id(event.source))

    def _on_paint(self, event) -> None:
        layer = event.source
        self._dirty.add(id(layer))
        if not self._timer.isActive():
            self._timer.start(self.autosave_spin.value() * 60_000)
        cur = self.current
        if cur is None or self.project is None:
            return
        if STATUSES.index(self.project.status(cur.key)) < STATUSES.index("corrected"):
            self.project.mark(cur.key, "corrected", entry=cur)
            self.status_changed.emit(cur.key, "corrected")
            self._refresh_key(cur.key)

    def _on_removing(self, event) -> None:
        if self._closing:
            return
        try:
            layer = self.viewer.layers[event.index]
        except (IndexError, TypeError):
            return
        if layer not in self._scan_layers:
            return
        if id(layer) in self._dirty:
            self._save_layers([layer])  # e.g. viewer.close() clears the layer list
        self._untrack(layer)
        self._scan_layers.remove(layer)
        if layer is self._image_layer:
            self._image_layer = None

    # -------------------------------------------------------------- saving
    def _layer_volume(self, layer):
        from napari_vnet.io import layer_to_volume

        data = np.asarray(layer.data)
        if self._geometry is not None and data.shape == self._scan_shape:
            return self._geometry.with_array(data)
        return layer_to_volume(
            data,
            scale=layer.scale,
            translate=layer.translate,
            affine=layer.affine.affine_matrix,
            metadata=layer.metadata,
        )

    def _save_layers(self, layers) -> list[Path]:
        cur, project = self.current, self.project
        if cur is None or project is None:
            return []
        written = []
        saved_names = set(project.record(cur.key)["labels"])
        for layer in layers:
            if id(layer) not in self._dirty:
                continue
            if layer.name not in saved_names and not np.any(layer.data):
                self._dirty.discard(id(layer))  # an empty new layer: nothing to keep
                continue
            weights = (layer.metadata.get("napari_vnet") or {}).get("weights")
            path = project.save_labels(
                cur.key,
                layer.name,
                self._layer_volume(layer),
                annotated_slices=layer.metadata.get("annotated_slices"),
                weights=str(weights) if weights else None,
                entry=cur,
            )
            self._dirty.discard(id(layer))
            written.append(path)
        if written:
            self.info_label.setText(
                f"Saved {len(written)} labels layer(s) of {cur.name} at {time.strftime('%H:%M:%S')}"
            )
            self.autosaved.emit(written)
        return written

    def autosave(self) -> list[Path]:
        """Save every edited Labels layer of the current scan now; returns the paths."""
        from napari.layers import Labels

        self._timer.stop()
        labels = [
            lay
            for lay in self._scan_layers
            if isinstance(lay, Labels) and lay in self.viewer.layers
        ]
        return self._save_layers(labels)

    def _autosave_quietly(self, why: str) -> None:
        try:
            self.autosave()
        except Exception as exc:  # noqa: BLE001 - never crash napari on close
            log.exception("autosave (%s) failed", why)
            self._notify("error", f"Autosave failed: {exc}")

    # -------------------------------------------------------------- status
    def mark_reviewed(self) -> None:
        """Mark the current scan reviewed (after saving its labels)."""
        if self.current is None or self.project is None:
            self._notify("info", "Open a scan first.")
            return
        self.autosave()
        self.project.mark(self.current.key, "reviewed", entry=self.current)
        self.status_changed.emit(self.current.key, "reviewed")
        self._refresh_key(self.current.key)

    def finetune_on_corrected(self) -> int:
        """Hand every corrected/reviewed scan with its saved labels to the fine-tune dock."""
        if self.project is None:
            self._notify("info", "Choose a scans folder first.")
            return 0
        self.autosave()
        pairs = self.project.training_pairs()
        if not pairs:
            self._notify("info", "No corrected or reviewed scan with saved labels yet.")
            return 0
        from napari_vnet._widgets._session import find_dock_widget
        from napari_vnet._widgets.finetune import FinetuneWidget

        widget = find_dock_widget(self.viewer, FinetuneWidget)
        if widget is None:
            _dock, widget = self.viewer.window.add_plugin_dock_widget(
                "napari-vnet", "Fine-tune model"
            )
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
