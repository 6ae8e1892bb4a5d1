"""A small live plot of the training loss (left axis) and validation Dice (right axis).

matplotlib's Qt canvas, themed to sit in a dark napari dock. Points arrive at the
training rate; drawing is coalesced by a timer so a fast trainer cannot flood the GUI
thread with redraws.
"""

from __future__ import annotations

import math

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget

LOSS_COLOR = "#4fc3f7"
SMOOTH_COLOR = "#ffb74d"
DICE_COLOR = "#81c784"
FG = "#d0d0d0"
BG = "#262930"  # napari dark theme background


class LossCurve(QWidget):
    """Loss per iteration (raw and smoothed) and validation Dice per evaluation."""

    def __init__(self, parent: QWidget | None = None, *, redraw_ms: int = 250):
        super().__init__(parent)
        self.iterations: list[int] = []
        self.losses: list[float] = []
        self.val_iterations: list[int] = []
        self.val_dice: list[float] = []
        self._smooth: list[float] = []

        self.figure = Figure(figsize=(3.2, 2.2), dpi=100, facecolor=BG, layout="tight")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)
        self.canvas.setMinimumHeight(210)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)

        ax = self.figure.add_subplot(111)
        self.ax_loss = ax
        self.ax_dice = ax.twinx()
        for a in (ax, self.ax_dice):
            a.set_facecolor(BG)
            a.tick_params(colors=FG, labelsize=7)
            for spine in a.spines.values():
                spine.set_color("#5a5f6a")
        ax.set_xlabel("iteration", color=FG, fontsize=8)
        ax.set_ylabel("loss", color=LOSS_COLOR, fontsize=8)
        self.ax_dice.set_ylabel("val Dice", color=DICE_COLOR, fontsize=8)
        self.ax_dice.set_ylim(0, 1)
        (self._raw_line,) = ax.plot([], [], color=LOSS_COLOR, lw=0.8, alpha=0.45, label="loss")
        (self._smooth_line,) = ax.plot([], [], color=SMOOTH_COLOR, lw=1.6, label="loss (smoothed)")
        (self._dice_line,) = self.ax_dice.plot(
            [], [], color=DICE_COLOR, lw=1.4, marker="o", ms=3, label="val Dice"
        )
        handles = [self._raw_line, self._smooth_line, self._dice_line]
        leg = ax.legend(
            handles=handles,
            loc="lower center",
            bbox_to_anchor=(0.5, 1.0),
            fontsize=7,
            frameon=False,
            ncol=3,
            borderaxespad=0.2,
        )
        for text in leg.get_texts():
            text.set_color(FG)

        self._dirty = False
        self._timer = QTimer(self)
        self._timer.setInterval(redraw_ms)
        self._timer.timeout.connect(self._redraw_if_dirty)
        self._timer.start()

    # -------------------------------------------------------------- data in
    def clear(self) -> None:
        for lst in (self.iterations, self.losses, self.val_iterations, self.val_dice):
            lst.clear()
        self._smooth.clear()
        self._dirty = True
        self.redraw()

    def add_point(self, iteration: int, loss: float | None, val_dice: float | None = None) -> None:
        """Add one training step; ``val_dice`` when a validation ran at this step."""
        if loss is not None and math.isfinite(float(loss)):
            self.iterations.append(int(iteration))
            self.losses.append(float(loss))
            prev = self._smooth[-1] if self._smooth else float(loss)
            self._smooth.append(0.9 * prev + 0.1 * float(loss) if self._smooth else prev)
        if val_dice is not None and math.isfinite(float(val_dice)):
            self.val_iterations.append(int(iteration))
            self.val_dice.append(float(val_dice))
        self._dirty = True

    # -------------------------------------------------------------- drawing
    def _redraw_if_dirty(self) -> None:
        if self._dirty:
            self.redraw()

    def redraw(self) -> None:
        self._dirty = False
        self._raw_line.set_data(self.iterations, self.losses)
        self._smooth_line.set_data(self.iterations, self._smooth)
        self._dice_line.set_data(self.val_iterations, self.val_dice)
        xs = self.iterations + self.val_iterations
        if xs:
            lo, hi = min(xs), max(xs)
            self.ax_loss.set_xlim(lo, hi if hi > lo else lo + 1)
        if self.losses:  # the data's range, so a slow decline is still visible
            lo, hi = min(self.losses), max(self.losses)
            pad = 0.08 * (hi - lo) if hi > lo else 0.1 * max(abs(hi), 1e-3)
            self.ax_loss.set_ylim(max(0.0, lo - pad) if lo >= 0 else lo - pad, hi + pad)
        self.canvas.draw_idle()
