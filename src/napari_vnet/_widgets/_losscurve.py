"""A small live plot of the training loss (left axis) and validation Dice (right axis).

Drawn with QPainter, themed to sit in a dark napari dock. A full matplotlib redraw of
the same plot (tight layout, tick labels as text artists) cost 110-180 ms of the GUI
thread's CPU per training iteration on a 2-core machine, which froze the viewer once
per iteration; painting these few polylines and labels with QPainter takes a few ms.
Points arrive at the training rate; repaints are coalesced by a timer (or by the owner,
with ``redraw_ms=0``) so a fast trainer cannot flood the GUI thread.
"""

from __future__ import annotations

import math
import time

from qtpy.QtCore import QPointF, QRectF, Qt, QTimer
from qtpy.QtGui import QColor, QFont, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

LOSS_COLOR = "#4fc3f7"
SMOOTH_COLOR = "#ffb74d"
DICE_COLOR = "#81c784"
FG = "#d0d0d0"
BG = "#262930"  # napari dark theme background
FRAME = "#5a5f6a"


def nice_ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    """About ``n`` round tick values covering [lo, hi] (1, 2, 2.5, 5 x 10^k steps)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, n)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), 10 * mag)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    v = first
    while v <= hi + 1e-9 * step and len(ticks) < 50:
        ticks.append(0.0 if abs(v) < 1e-12 * step else v)
        v += step
    return ticks


def _fmt(v: float) -> str:
    if v == int(v) and abs(v) < 1e6:
        return str(int(v))
    return f"{v:.3g}"


class LossCurve(QWidget):
    """Loss per iteration (raw and smoothed) and validation Dice per evaluation.

    ``xlim``/``ylim`` (loss axis) and ``plotted`` (the data series as last laid out by
    :meth:`redraw`: ``{"loss": [(x, y)], "smooth": [...], "dice": [...]}``) describe
    what the widget paints; ``paint_ms`` / ``paint_ms_max`` / ``paints``: the last and
    the longest paint's duration and the number of paints (for benchmarks).
    """

    def __init__(self, parent: QWidget | None = None, *, redraw_ms: int = 250):
        super().__init__(parent)
        self.iterations: list[int] = []
        self.losses: list[float] = []
        self.val_iterations: list[int] = []
        self.val_dice: list[float] = []
        self._smooth: list[float] = []
        self.xlim: tuple[float, float] = (0.0, 1.0)
        self.ylim: tuple[float, float] = (0.0, 1.0)
        self.plotted: dict[str, list[tuple[float, float]]] = {"loss": [], "smooth": [], "dice": []}
        self.paint_ms = self.paint_ms_max = 0.0
        self.paints = 0
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)
        self.setMinimumHeight(210)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)

        self._dirty = False
        self._timer = QTimer(self)
        self._timer.setInterval(redraw_ms)
        self._timer.timeout.connect(self._redraw_if_dirty)
        if redraw_ms > 0:  # 0: the owner calls redraw() itself
            self._timer.start()

    # -------------------------------------------------------------- data in
    def clear(self) -> None:
        for lst in (self.iterations, self.losses, self.val_iterations, self.val_dice):
            lst.clear()
        self._smooth.clear()
        self.redraw()

    def add_point(self, iteration: int, loss: float | None, val_dice: float | None = None) -> None:
        """Add one training step; ``val_dice`` when a validation ran at this step."""
        if loss is not None and math.isfinite(float(loss)):
            value = float(loss)
            self.iterations.append(int(iteration))
            self.losses.append(value)
            self._smooth.append(0.9 * self._smooth[-1] + 0.1 * value if self._smooth else value)
        if val_dice is not None and math.isfinite(float(val_dice)):
            self.val_iterations.append(int(iteration))
            self.val_dice.append(float(val_dice))
        self._dirty = True

    # -------------------------------------------------------------- layout
    def _redraw_if_dirty(self) -> None:
        if self._dirty:
            self.redraw()

    def redraw(self) -> None:
        """Lay out the data (limits, series) and schedule a repaint."""
        self._dirty = False
        xs = self.iterations + self.val_iterations
        if xs:
            lo, hi = min(xs), max(xs)
            self.xlim = (float(lo), float(hi if hi > lo else lo + 1))
        else:
            self.xlim = (0.0, 1.0)
        if self.losses:  # the data's range, so a slow decline is still visible
            lo, hi = min(self.losses), max(self.losses)
            pad = 0.08 * (hi - lo) if hi > lo else 0.1 * max(abs(hi), 1e-3)
            self.ylim = (max(0.0, lo - pad) if lo >= 0 else lo - pad, hi + pad)
        else:
            self.ylim = (0.0, 1.0)
        self.plotted = {
            "loss": list(zip(self.iterations, self.losses, strict=True)),
            "smooth": list(zip(self.iterations, self._smooth, strict=True)),
            "dice": list(zip(self.val_iterations, self.val_dice, strict=True)),
        }
        self.update()

    # -------------------------------------------------------------- painting
    def paintEvent(self, event) -> None:  # noqa: N802 - Qt API
        t0 = time.perf_counter()
        p = QPainter(self)
        try:
            self._paint(p)
        finally:
            p.end()
        self.paint_ms = 1000.0 * (time.perf_counter() - t0)
        self.paint_ms_max = max(self.paint_ms_max, self.paint_ms)
        self.paints += 1

    def _paint(self, p: QPainter) -> None:
        w, h = self.width(), self.height()
        p.fillRect(0, 0, w, h, QColor(BG))
        font = QFont(self.font())
        font.setPointSizeF(7.0)
        p.setFont(font)
        fm = p.fontMetrics()
        th = fm.height()
        left, right, top, bottom = 6 + fm.horizontalAdvance("0.000") + th, 40, th + 8, 2 * th + 8
        plot = QRectF(left, top, max(10, w - left - right), max(10, h - top - bottom))
        (x0, x1), (y0, y1) = self.xlim, self.ylim

        def px(x: float) -> float:
            return plot.left() + (x - x0) / (x1 - x0) * plot.width()

        def py(y: float, lo: float = y0, hi: float = y1) -> float:
            return plot.bottom() - (y - lo) / (hi - lo) * plot.height()

        fg = QColor(FG)
        grid = QPen(QColor(FRAME))
        grid.setStyle(Qt.PenStyle.DotLine)
        right_align = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
        left_align = Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter
        center = Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop
        for t in nice_ticks(y0, y1):  # loss axis, left
            y = py(t)
            p.setPen(grid)
            p.drawLine(QPointF(plot.left(), y), QPointF(plot.right(), y))
            p.setPen(QColor(LOSS_COLOR))
            p.drawText(QRectF(0, y - th / 2, plot.left() - 4, th), right_align, _fmt(t))
        for t in (0.0, 0.5, 1.0):  # Dice axis, right
            p.setPen(QColor(DICE_COLOR))
            p.drawText(
                QRectF(plot.right() + 4, py(t, 0, 1) - th / 2, right, th), left_align, _fmt(t)
            )
        for t in nice_ticks(x0, x1, 5):  # iterations
            if t != int(t):
                continue
            x = px(t)
            p.setPen(fg)
            p.drawLine(QPointF(x, plot.bottom()), QPointF(x, plot.bottom() + 3))
            p.drawText(QRectF(x - 30, plot.bottom() + 3, 60, th), center, _fmt(t))
        p.setPen(fg)
        p.drawText(
            QRectF(plot.left(), plot.bottom() + th + 4, plot.width(), th), center, "iteration"
        )
        p.setPen(QPen(QColor(FRAME)))
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawRect(plot)

        p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        p.setClipRect(plot.adjusted(-4, -4, 4, 4))
        loss = QColor(LOSS_COLOR)
        loss.setAlphaF(0.45)
        stride = max(1, len(self.plotted["loss"]) // max(1, int(plot.width()) // 2))
        for key, color, width in (("loss", loss, 0.8), ("smooth", QColor(SMOOTH_COLOR), 1.6)):
            pts = self.plotted[key][::stride]
            if len(pts) > 1:
                p.setPen(QPen(color, width))
                p.drawPolyline(QPolygonF([QPointF(px(x), py(y)) for x, y in pts]))
        dice = [QPointF(px(x), py(y, 0, 1)) for x, y in self.plotted["dice"]]
        if dice:
            p.setPen(QPen(QColor(DICE_COLOR), 1.4))
            if len(dice) > 1:
                p.drawPolyline(QPolygonF(dice))
            p.setBrush(QColor(DICE_COLOR))
            for pt in dice:
                p.drawEllipse(pt, 2.5, 2.5)
        p.setClipping(False)

        x = plot.left()  # legend above the plot
        for label, color in (("loss", LOSS_COLOR), ("loss (smoothed)", SMOOTH_COLOR),
                             ("val Dice", DICE_COLOR)):  # fmt: skip
            p.setPen(QPen(QColor(color), 2))
            p.drawLine(QPointF(x, top / 2), QPointF(x + 14, top / 2))
            p.setPen(fg)
            p.drawText(QRectF(x + 18, top / 2 - th / 2, 200, th), left_align, label)
            x += 18 + fm.horizontalAdvance(label) + 12
