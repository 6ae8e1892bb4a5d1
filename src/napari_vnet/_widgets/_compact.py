"""Pieces that keep the docks small at 1920 x 1080 and 1366 x 768: a collapsible group
for advanced settings, elided paths with the full path as tool-tip, and combo boxes
whose width does not follow their longest item."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QSizePolicy, QToolButton, QVBoxLayout, QWidget

__all__ = ["Collapsible", "compact_combo", "elide_middle", "path_label"]

#: the most characters a path shown in a combo item or a label takes
PATH_CHARS = 44


def elide_middle(text: str, limit: int = PATH_CHARS) -> str:
    """``text`` cut in the middle to ``limit`` characters (with "…"), else as it is."""
    text = str(text)
    if len(text) <= limit:
        return text
    keep = max(limit - 1, 2)
    head = keep // 2
    return text[:head] + "…" + text[len(text) - (keep - head) :]


def path_label(path: str | Path, limit: int = PATH_CHARS) -> str:
    """A recent file as one short item: its name, then its folder elided in the middle
    (the full path goes into the item's tool-tip)."""
    p = Path(path)
    name = elide_middle(p.name, limit // 2 + 4)
    return f"{name} — {elide_middle(str(p.parent), max(limit - len(name) - 3, 12))}"


def compact_combo(combo: QComboBox, chars: int = 12) -> None:
    """The combo's width no longer grows with its longest item (a recent-weights entry
    with a long path widened its dock by ~320 px); the popup still shows whole items."""
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(chars)
    combo.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
    combo.view().setTextElideMode(Qt.TextElideMode.ElideMiddle)


class Collapsible(QWidget):
    """A titled group whose body shows only when opened (closed by default)."""

    def __init__(self, title: str, body: QWidget, *, expanded: bool = False, parent=None):
        super().__init__(parent)
        self.toggle = QToolButton(self)
        self.toggle.setText(title)
        self.toggle.setCheckable(True)
        self.toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.toggle.setStyleSheet("QToolButton { border: none; font-weight: bold; }")
        self.toggle.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.body = body
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.toggle)
        layout.addWidget(body)
        self.toggle.toggled.connect(self.set_expanded)
        self.set_expanded(expanded)

    @property
    def expanded(self) -> bool:
        return self.toggle.isChecked()

    def set_expanded(self, expanded: bool) -> None:
        if self.toggle.isChecked() != expanded:
            self.toggle.setChecked(expanded)  # comes back here through toggled
            return
        arrow = Qt.ArrowType.DownArrow if expanded else Qt.ArrowType.RightArrow
        self.toggle.setArrowType(arrow)
        self.body.setVisible(expanded)
