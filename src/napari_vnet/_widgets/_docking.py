"""The docks as napari adds them: each dock's content in a vertical scroll area.

The Segment, Fine-tune and Scans docks together are taller than a 1080-pixel screen
(Fine-tune alone asks for about 930 px). napari stacks plugin docks in one column and
sizes the window to fit all their minimum heights, so the window grew off-screen. Wrapped
in a :class:`ScrollDock` each dock asks for a small minimum height and scrolls its
content instead; napari's own splitters share the column between the docks.

The npe2 widget commands point at the dock classes below. A ScrollDock passes attribute
access through to its content, so ``_, seg = viewer.window.add_plugin_dock_widget(
"napari-vnet", "Segment volume")`` followed by ``seg.select_weights(...)`` works as
before, and :func:`napari_vnet._widgets._session.find_dock_widget` finds the content.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFrame, QScrollArea, QWidget

if TYPE_CHECKING:
    import napari

#: the smallest height a dock asks napari for (its content scrolls below that)
DOCK_MIN_HEIGHT = 180


class ScrollDock(QScrollArea):
    """A dock widget's content in a vertical scroll area (see the module docstring)."""

    def __init__(self, content: QWidget, min_height: int = DOCK_MIN_HEIGHT):
        super().__init__()
        self._content = content
        self.setObjectName(f"{type(content).__name__}Scroll")
        self.setWidget(content)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        bar = self.verticalScrollBar().sizeHint().width()
        self.setMinimumWidth(content.minimumSizeHint().width() + bar)
        self.setMinimumHeight(min_height)

    @property
    def content(self) -> QWidget:
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
