"""The table of the "Scans" dock: one row per scan, its status colour and uncertainty, the
filter and the order.

Ordering moves rows only in the view (the vertical header's sections): a row's index, the
``entries`` list and ``row_of`` keep the listing order; :meth:`ScanTable.visual_rows` gives
the rows top to bottom.
"""

from __future__ import annotations

from collections.abc import Callable

from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem

from napari_vnet.io.label_names import pairing_rule
from napari_vnet.workflows.worklist import BROKEN, STATUSES
from napari_vnet.workflows.worklist_scan import ScanEntry, order_scans

COLUMNS = ("Scan", "Status", "Shape (z, y, x)", "Spacing (mm)", "Size", "Uncertainty")
COL_SCAN, COL_STATUS, COL_UNCERTAINTY = 0, 1, 5
#: columns hidden first when the dock is narrow (size, spacing, shape, uncertainty): what
#: remains fits
OPTIONAL_COLUMNS = (4, 3, 2, 5)
#: the narrowest the scan-name column gets before an optional column is hidden
MIN_SCAN_WIDTH = 130
STATUS_COLORS = {
    "not opened": None,
    "opened": "#8fb3ff",
    "predicted": "#e0c060",
    "corrected": "#f08a4b",
    "reviewed": "#5cc46b",
    BROKEN: "#e05050",
}
_RIGHT = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
#: the choices of the "Show" filter
FILTERS = ("all", "to do (not reviewed)", *STATUSES, BROKEN)


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def matches(status: str, wanted: str) -> bool:
    """Whether a scan with ``status`` is shown under the filter ``wanted``."""
    if wanted == "all":
        return True
    if wanted.startswith("to do"):
        return status not in ("reviewed", BROKEN)
    return status == wanted


class ScanTable(QTableWidget):
    """The scans of a worklist; ``status_of(entry)`` gives each status and
    ``uncertainty_of(entry)`` its uncertainty score (None: not predicted)."""

    def __init__(
        self,
        status_of: Callable[[ScanEntry], str],
        uncertainty_of: Callable[[ScanEntry], float | None] = lambda _e: None,
        parent=None,
    ):
        super().__init__(0, len(COLUMNS), parent)
        self.status_of = status_of
        self.uncertainty_of = uncertainty_of
        self.entries: list[ScanEntry] = []
        self.row_of: dict[str, int] = {}
        self.current_key: str | None = None
        self.order = "folder"
        self.setHorizontalHeaderLabels(COLUMNS)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.verticalHeader().setVisible(False)
        header = self.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        # the name takes what the other columns leave (elided in the middle when short)
        header.setSectionResizeMode(COL_SCAN, QHeaderView.ResizeMode.Stretch)
        header.setStretchLastSection(False)
        self.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        header.moveSection(COL_UNCERTAINTY, COL_STATUS + 1)  # shown beside the status

    def _column_width(self, col: int) -> int:
        """The width the column's texts need (also while it is hidden; the first 200
        rows measured)."""
        fm = self.fontMetrics()
        texts = [self.horizontalHeaderItem(col).text()] + [
            self.item(r, col).text() for r in range(min(self.rowCount(), 200)) if self.item(r, col)
        ]
        bold = 1.1 if self.current_key is not None else 1.0  # the current row is bold
        return int(max(fm.horizontalAdvance(t) for t in texts) * bold) + 16

    def fit_columns(self) -> None:
        """Show the optional columns that fit beside a readable scan name; hide the rest
        (their values stay in each row's tool-tip)."""
        room = self.viewport().width() - MIN_SCAN_WIDTH
        shown = [c for c in range(len(COLUMNS)) if c != COL_SCAN]
        for col in OPTIONAL_COLUMNS:  # least useful first
            if sum(self._column_width(c) for c in shown) <= room:
                break
            shown.remove(col)
        for col in range(len(COLUMNS)):
            hide = col != COL_SCAN and col not in shown
            if self.isColumnHidden(col) != hide:
                self.setColumnHidden(col, hide)

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        super().resizeEvent(event)
        self.fit_columns()

    # ---------------------------------------------------------------- rows
    def clear_entries(self) -> None:
        self.entries.clear()
        self.row_of.clear()
        self.setRowCount(0)

    def add_entries(self, batch: list[ScanEntry]) -> None:
        self.setUpdatesEnabled(False)
        try:
            for entry in batch:
                row = self.rowCount()
                self.insertRow(row)
                self.entries.append(entry)
                self.row_of[entry.key] = row
                self._fill_row(row, entry)
        finally:
            self.setUpdatesEnabled(True)
        if self.order != "folder":
            self.apply_order()
        self.fit_columns()

    def _fill_row(self, row: int, entry: ScanEntry) -> None:
        shape = " × ".join(str(s) for s in entry.shape) if entry.shape else "—"
        spacing = ", ".join(f"{s:.3g}" for s in entry.spacing) if entry.spacing else "—"
        size = human_size(entry.size_bytes)
        if entry.n_files > 1:
            size += f" ({entry.n_files} files)"
        tip = entry.error or f"{entry.path}\n{entry.pixel_type} {entry.modality}".strip()
        tip += f"\n{shape} voxels, {spacing} mm, {size}"
        for lab in getattr(entry, "labels", ()) or ():  # where its labels come from
            tip += f"\nlabels: {pairing_rule(lab, entry.path)}"
        for col, text in enumerate((entry.name, "", shape, spacing, size, "")):
            item = QTableWidgetItem(text)
            item.setToolTip(tip)
            if col == COL_SCAN:
                item.setData(Qt.ItemDataRole.UserRole, entry.key)
            self.setItem(row, col, item)
        self.refresh_row(row)

    def refresh_row(self, row: int) -> None:
        if not 0 <= row < len(self.entries):
            return
        entry = self.entries[row]
        status = self.status_of(entry)
        item = self.item(row, COL_STATUS)
        if item is None:
            return
        item.setText(status)
        score = None if entry.broken else self.uncertainty_of(entry)
        score_item = self.item(row, COL_UNCERTAINTY)
        if score_item is not None:
            score_item.setText("—" if score is None else f"{score:.3f}")
            score_item.setTextAlignment(_RIGHT)
        color = STATUS_COLORS.get(status)
        bold = self.current_key is not None and entry.key == self.current_key
        for col in range(len(COLUMNS)):
            cell = self.item(row, col)
            if cell is None:
                continue
            if color and (col == COL_STATUS or status == BROKEN):
                cell.setForeground(QColor(color))
            else:  # the theme's text colour
                cell.setData(Qt.ItemDataRole.ForegroundRole, None)
            font = cell.font()
            if font.bold() != bold:
                font.setBold(bold)
                cell.setFont(font)

    def refresh_all(self) -> None:
        for row in range(self.rowCount()):
            self.refresh_row(row)

    def refresh_key(self, key: str | None) -> None:
        row = self.row_of.get(key) if key is not None else None
        if row is not None:
            self.refresh_row(row)

    # ---------------------------------------------------------------- filter
    def apply_filter(self, wanted: str) -> None:
        for row, entry in enumerate(self.entries):
            hide = not matches(self.status_of(entry), wanted)
            if self.isRowHidden(row) != hide:
                self.setRowHidden(row, hide)

    def visible_entries(self) -> list[ScanEntry]:
        """The shown scans, top to bottom."""
        return [self.entries[r] for r in self.visual_rows() if not self.isRowHidden(r)]

    # ---------------------------------------------------------------- order
    def visual_rows(self) -> list[int]:
        """Every row, in the order shown (top to bottom)."""
        header = self.verticalHeader()
        return [header.logicalIndex(v) for v in range(self.rowCount())]

    def set_order(self, order: str) -> None:
        """Show the rows in ``order`` (one of
        :data:`~napari_vnet.workflows.worklist_scan.ORDERS`)."""
        order_scans((), self.uncertainty_of, order)  # refuses an unknown order
        self.order = order
        self.apply_order()

    def apply_order(self) -> None:
        """Move the rows (in the view only) to the current order, e.g. after a new score."""
        by_key = {e.key: e for e in self.entries}
        keys = order_scans(
            by_key, lambda k: None if by_key[k].broken else self.uncertainty_of(by_key[k]),
            self.order,
        )  # fmt: skip
        header = self.verticalHeader()
        for visual, key in enumerate(keys):
            row = self.row_of[key]
            if header.visualIndex(row) != visual:
                header.moveSection(header.visualIndex(row), visual)

    def step_target(self, from_key: str | None, direction: int) -> ScanEntry | None:
        """The next shown, readable scan after ``from_key`` in the order shown
        (``direction`` +1 or -1)."""
        order = self.visual_rows()
        rows = [r for r in order if not self.isRowHidden(r) and not self.entries[r].broken]
        if not rows:
            return None
        here = self.row_of.get(from_key) if from_key is not None else None
        if here is None:
            return self.entries[rows[0] if direction > 0 else rows[-1]]
        header = self.verticalHeader()
        at = header.visualIndex(here)
        after = [r for r in rows if (header.visualIndex(r) - at) * direction > 0]
        if not after:
            return None
        return self.entries[after[0] if direction > 0 else after[-1]]

    def summary(self, *, scanning: bool = False, current: ScanEntry | None = None) -> str:
        counts: dict[str, int] = {}
        for entry in self.entries:
            status = self.status_of(entry)
            counts[status] = counts.get(status, 0) + 1
        parts = [f"{len(self.entries)} scans"]
        parts += [f"{counts[s]} {s}" for s in (*STATUSES[1:], BROKEN) if counts.get(s)]
        text = ", ".join(parts)
        if scanning:
            text += " — scanning…"
        if current is not None:
            text += f"\nCurrent: {current.name}"
        return text
