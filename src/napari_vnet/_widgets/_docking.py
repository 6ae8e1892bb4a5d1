"""The docks as napari adds them: each dock's content in a vertical scroll area.

The Segment, Fine-tune and Scans docks together are taller than a 1080-pixel screen
(Fine-tune alone asks for about 930 px). napari stacks plugin docks in one column and
sizes the window to fit all their minimum heights, so the window grew off-screen. Wrapped
in a :class:`ScrollDock` each dock asks for a small minimum height and scrolls its
content instead; napari's own splitters share the column between the docks.

The primary action of each dock (Run, Train / Cancel, Next and Save labels now), its
progress bar and status line stay in view: a content widget with a ``footer`` widget
(built at the end of its own layout) has it moved below the scroll area, pinned at the
bottom of the dock. Advanced settings sit in collapsed groups (:mod:`._compact`).

The npe2 widget commands point at the dock classes below. A ScrollDock passes attribute
access through to its content, so ``_, seg = viewer.window.add_plugin_dock_widget(
"napari-vnet", "Segment volume")`` followed by ``seg.select_weights(...)`` works as
before. The content registers itself with the viewer's
:class:`~napari_vnet._widgets._session.Session`, where the other docks find it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QSize, Qt, QTimer
from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget

if TYPE_CHECKING:
    import napari

#: the smallest height a dock's scrolled part asks napari for (its content scrolls)
DOCK_MIN_HEIGHT = 72
#: the most height of its scrolled content a dock asks for (it gets more when there is room)
DOCK_SHARE_HEIGHT = 300
#: the widest a dock asks to be (long paths are elided, tables drop columns to fit)
DOCK_MAX_MIN_WIDTH = 460


class ScrollDock(QWidget):
    """A dock widget's content in a vertical scroll area, its ``footer`` pinned below
    it (see the module docstring)."""

    def __init__(self, content: QWidget, min_height: int = DOCK_MIN_HEIGHT):
        super().__init__()
        self._content = content
        self.setObjectName(f"{type(content).__name__}Scroll")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        self.scroll = QScrollArea(self)
        self.scroll.setWidget(content)
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.scroll.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.scroll.setMinimumHeight(min_height)
        layout.addWidget(self.scroll, 1)
        footer = getattr(content, "footer", None)
        if isinstance(footer, QWidget):
            own = content.layout()
            if own is not None:
                own.removeWidget(footer)
            footer.setParent(self)
            margins = own.contentsMargins() if own is not None else None
            if margins is not None:  # line up with the content above it
                footer.layout().setContentsMargins(margins.left(), 2, margins.right(), 4)
            layout.addWidget(footer, 0)
        self._fit_width()

    def _fit_width(self) -> None:
        """As wide as the content needs beside the scroll bar (up to the cap)."""
        bar = self.scroll.verticalScrollBar().sizeHint().width()
        need = self._content.minimumSizeHint().width() + bar + 2
        self.setMinimumWidth(min(need, DOCK_MAX_MIN_WIDTH))

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        """Ask for a share of the column, not the whole content: the docks stacked in
        it then split the height (the content scrolls; the footer is always shown)."""
        hint = super().sizeHint()
        footer = getattr(self._content, "footer", None)
        pinned = footer.sizeHint().height() if isinstance(footer, QWidget) else 0
        body = min(self._content.sizeHint().height(), DOCK_SHARE_HEIGHT)
        return QSize(hint.width(), body + pinned)

    def showEvent(self, event) -> None:  # noqa: N802 - Qt's name
        super().showEvent(event)
        if not getattr(self, "_balanced", False):
            self._balanced = True  # once per dock: the user's own sizes stay after
            self._fit_width()  # the content is filled in now (weights, card)
            QTimer.singleShot(0, self._share_column)

    def _share_column(self) -> None:
        """A dock added below others got only its minimum height (the first one took
        the column): share the column among the napari-vnet docks by their hints."""
        from qtpy.QtWidgets import QDockWidget, QMainWindow

        dock = self.parentWidget()
        window = dock.parentWidget() if dock is not None else None
        if not isinstance(dock, QDockWidget) or not isinstance(window, QMainWindow):
            return
        area = window.dockWidgetArea(dock)
        ours = [
            d
            for d in window.findChildren(QDockWidget)
            if isinstance(d.widget(), ScrollDock)
            and d.isVisible()
            and not d.isFloating()
            and window.dockWidgetArea(d) == area
        ]
        if len(ours) > 1:
            heights = [d.widget().sizeHint().height() for d in ours]
            window.resizeDocks(ours, heights, Qt.Orientation.Vertical)

    @property
    def content(self) -> QWidget:
        return self._content

    def widget(self) -> QWidget:
        """The scrolled content (as QScrollArea.widget() gave it)."""
        return self._content

    def __getattr__(self, name: str) -> Any:
        # only reached when normal lookup fails: the content's methods, signals, fields
        try:
            content = object.__getattribute__(self, "_content")
        except AttributeError:
            raise AttributeError(name) from None
        return getattr(content, name)


class SegmentDock(ScrollDock):
    """Segment volume dock (napari instantiates dock classes with ``napari_viewer``)."""

    def __init__(self, napari_viewer: napari.Viewer):
        from napari_vnet._widgets.segment import SegmentWidget

        super().__init__(SegmentWidget(napari_viewer))


class FinetuneDock(ScrollDock):
    """Fine-tune model dock."""

    def __init__(self, napari_viewer: napari.Viewer):
        from napari_vnet._widgets.finetune import FinetuneWidget

        super().__init__(FinetuneWidget(napari_viewer))


class ScansDock(ScrollDock):
    """Scans dock."""

    def __init__(self, napari_viewer: napari.Viewer):
        from napari_vnet._widgets.scans import ScansWidget

        super().__init__(ScansWidget(napari_viewer))


class CorrectDock(ScrollDock):
    """Correct dock."""

    def __init__(self, napari_viewer: napari.Viewer):
        from napari_vnet._widgets.correct import CorrectWidget

        super().__init__(CorrectWidget(napari_viewer))
