"""The "Correct" dock: where to look next, and tools that do the tedious part of correcting.

Top: the Labels layer to correct, the image (for intensity-limited tools), the label value
and the scope (the current slice, a range of slices, or the whole volume, along the axis
the viewer slices through).

*Where to look*: "Previous" / "Next uncertain" (keys Shift-B / Shift-N) jump the viewer to
the most uncertain slice not yet visited, using the uncertainty layer the Segment dock adds
("Uncertainty layer" ticked); slices the user has edited count as reviewed and drop out.

*Tools* (each one napari undo step, Ctrl-Z): fill between slices, remove islands, keep the
largest piece, fill holes, smooth, clip to an intensity range, grow from seeds; and "Brush
paints only within range", which takes back what a brush stroke painted outside lo..hi.
*Propagate corrections* fine-tunes the model on the corrected slices and re-predicts the
voxels not touched (:mod:`._propagate`). The tools' core is :mod:`napari_vnet.correct.tools`
(no Qt). Every change goes through
``Labels.data_setitem`` (napari's undo history) and its slices are added to the layer's
edit record (:mod:`napari_vnet.training.annotations`), so autosave and fine-tuning see them.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, SpinBox
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QGridLayout, QGroupBox, QLabel, QPushButton, QVBoxLayout, QWidget

from napari_vnet._widgets import _edits
from napari_vnet._widgets._propagate import PropagatePanel
from napari_vnet._widgets._session import join_session
from napari_vnet._widgets._uncertainty_layer import find_uncertainty, is_uncertainty
from napari_vnet.correct import tools
from napari_vnet.correct.uncertainty import SliceQueue, slice_scores
from napari_vnet.training import annotations

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

SCOPES = [("Current slice", "slice"), ("Slice range", "range"), ("Whole volume", "volume")]
KEY_NEXT, KEY_PREVIOUS = "Shift-N", "Shift-B"
TOOLS = {  # name -> (button text, tooltip)
    "fill_between": ("Fill between slices", "Interpolate the label on the slices between "
                     "the slices you corrected (or, if fewer than two, the slices holding it)"),
    "remove_islands": ("Remove islands", "Remove pieces smaller than the size given"),
    "keep_largest": ("Keep largest", "Keep only the largest connected piece"),
    "fill_holes": ("Fill holes", "Fill what the label encloses, slice by slice"),
    "smooth": ("Smooth", "Binary median filter, slice by slice"),
    "restrict": ("Clip to range", "Remove label voxels outside the intensity range"),
    "grow": ("Grow from seeds", "Grow the label (your scribble) through connected voxels "
             "within the intensity range"),
}  # fmt: skip


def _is_labels(layer) -> bool:
    from napari.layers import Labels

    return isinstance(layer, Labels) and layer.ndim == 3


def _is_image(layer) -> bool:
    from napari.layers import Image

    return (
        isinstance(layer, Image) and layer.ndim == 3 and not layer.rgb and not is_uncertainty(layer)
    )


class CorrectWidget(QWidget):
    """Dock widget "Correct" (see the module docstring). Public API for tests and other
    docks: :attr:`labels_layer`, :meth:`apply_tool`, :meth:`next_uncertain`,
    :meth:`previous_uncertain`, :meth:`current_scope`."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = join_session(napari_viewer, "correct", self)
        self._queue: SliceQueue | None = None
        self._queue_key: tuple | None = None
        self._hooked = None  # the Labels layer whose brush is range-limited
        self._in_hook = False
        self.labels = ComboBox(label="Labels", choices=self._labels_choices, nullable=True)
        self.image = ComboBox(label="Image", choices=self._image_choices, nullable=True)
        self.label = SpinBox(label="Label", value=1, min=1, max=65535)
        self.scope = ComboBox(label="Scope", choices=SCOPES)
        self.first = SpinBox(label="From slice", value=0, min=0, max=100000)
        self.last = SpinBox(label="To slice", value=0, min=0, max=100000)
        self.overwrite = CheckBox(text="Overwrite other labels", value=False)
        top = Container(widgets=[self.labels, self.image, self.label, self.scope, self.first,
                                 self.last, self.overwrite])  # fmt: skip
        self.min_mm3 = FloatSpinBox(label="Islands below (mm³)", value=100.0, min=0, max=1e7)
        self.radius = SpinBox(label="Smooth radius (voxels)", value=1, min=1, max=20)
        self.lo = FloatSpinBox(label="Intensity from", value=-100.0, min=-1e5, max=1e5)
        self.hi = FloatSpinBox(label="Intensity to", value=200.0, min=-1e5, max=1e5)
        self.opening = SpinBox(label="Grow: leak barrier (voxels)", value=1, min=0, max=10)
        self.brush_in_range = CheckBox(text="Brush paints only within range", value=False)
        params = Container(widgets=[self.min_mm3, self.radius, self.lo, self.hi, self.opening,
                                    self.brush_in_range])  # fmt: skip
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.buttons: dict[str, QPushButton] = {}
        layout = QVBoxLayout(self)
        top.margins = (0, 0, 0, 0)
        layout.addWidget(top.native)
        layout.addWidget(self._look_group())
        layout.addWidget(self._tools_group(params))
        self.propagate = PropagatePanel(self)  # fine-tune on the edits, re-predict the rest
        layout.addWidget(self.propagate)
        layout.addWidget(self.status)
        layout.addStretch(1)
        self._connect()

    # ------------------------------------------------------------------ layout
    def _look_group(self) -> QGroupBox:
        box = QGroupBox("Where to look")
        grid = QGridLayout(box)
        self.previous_button = QPushButton(f"◀ Previous ({KEY_PREVIOUS})")
        self.next_button = QPushButton(f"Next uncertain ({KEY_NEXT}) ▶")
        self.previous_button.clicked.connect(self.previous_uncertain)
        self.next_button.clicked.connect(self.next_uncertain)
        self.look_note = QLabel("Tick 'Uncertainty layer' in Segment volume, then Run.")
        self.look_note.setWordWrap(True)
        grid.addWidget(self.previous_button, 0, 0)
        grid.addWidget(self.next_button, 0, 1)
        grid.addWidget(self.look_note, 1, 0, 1, 2)
        return box

    def _tools_group(self, params: Container) -> QGroupBox:
        box = QGroupBox("Tools (Ctrl-Z undoes each)")
        inner = QVBoxLayout(box)
        params.margins = (0, 0, 0, 0)
        inner.addWidget(params.native)
        grid = QGridLayout()
        for i, (name, (text, tip)) in enumerate(TOOLS.items()):
            button = QPushButton(text)
            button.setToolTip(tip)
            button.clicked.connect(functools.partial(self._on_tool, name))
            self.buttons[name] = button
            grid.addWidget(button, i // 2, i % 2)
        inner.addLayout(grid)
        return box

    def _connect(self) -> None:
        events = self.viewer.layers.events
        for ev in (events.inserted, events.removed, events.reordered):
            ev.connect(self._on_layers_changed)
        self.labels.changed.connect(self._on_labels_changed)
        self.brush_in_range.changed.connect(self._update_hook)
        self.labels.changed.connect(self._update_hook)
        for key, step in ((KEY_NEXT, 1), (KEY_PREVIOUS, -1)):
            self.viewer.bind_key(key, functools.partial(_jump_key, self, step), overwrite=True)
        self._on_layers_changed()

    # ------------------------------------------------------------------ choices
    def _labels_choices(self, _w=None):
        return [(lyr.name, lyr) for lyr in self.viewer.layers if _is_labels(lyr)]

    def _image_choices(self, _w=None):
        return [(lyr.name, lyr) for lyr in self.viewer.layers if _is_image(lyr)]

    def _on_layers_changed(self, _event=None) -> None:
        self.labels.reset_choices()
        self.image.reset_choices()
        if self.labels.value is None and self._labels_choices():
            self.labels.value = self._labels_choices()[-1][1]
        if self.image.value is None and self._image_choices():
            self.image.value = self._image_choices()[0][1]

    def _on_labels_changed(self, _=None) -> None:
        layer = self.labels.value
        self._queue, self._queue_key = None, None
        if layer is None:
            return
        if int(layer.selected_label) > 0:
            self.label.value = int(layer.selected_label)
        n = int(layer.data.shape[self.axis]) - 1
        self.first.max = self.last.max = max(n, 0)

    @property
    def labels_layer(self):
        return self.labels.value

    @property
    def axis(self) -> int:
        layer = self.labels.value
        return 0 if layer is None else _edits.viewing_axis(layer)

    def current_slice(self) -> int:
        return _edits.current_slice(self.labels.value, self.viewer, self.axis)

    def current_scope(self) -> tools.Scope:
        layer, axis = self.labels.value, self.axis
        if self.scope.value == "volume":
            return tools.Scope.whole(layer.data.shape, axis)
        if self.scope.value == "range":
            lo, hi = sorted((int(self.first.value), int(self.last.value)))
            return tools.Scope(axis, lo, hi + 1)
        return tools.Scope.slice_(self.current_slice(), axis)

    # ------------------------------------------------------------------ tools
    def _on_tool(self, name: str, _checked=False) -> None:
        from napari.utils.notifications import show_error

        try:
            self.apply_tool(name)
        except ValueError as exc:
            show_error(f"{TOOLS[name][0]}: {exc}")

    def _spacing(self) -> tuple[float, float, float]:
        return tuple(float(abs(s)) for s in self.labels.value.scale)  # type: ignore[return-value]

    def _image_array(self) -> np.ndarray:
        image = self.image.value
        if image is None:
            raise ValueError("choose the image whose intensities the tool uses")
        data = image.data[0] if image.multiscale else image.data
        if tuple(data.shape) != tuple(self.labels.value.data.shape):
            raise ValueError(f"image '{image.name}' has another grid than the labels")
        return np.asarray(data)

    def _keys(self, scope: tools.Scope) -> list[int] | None:
        """The corrected slices in the scope when there are two or more, else None."""
        for axis, slices in annotations.records(self.labels.value.metadata):
            inside = [s for s in slices if scope.lo <= s < scope.hi]
            if axis == scope.axis and len(inside) >= 2:
                return inside
        return None

    def make_change(self, name: str) -> tools.Change:
        """The change the tool ``name`` would make now (nothing applied)."""
        layer = self.labels.value
        if layer is None:
            raise ValueError("choose a Labels layer to correct")
        lab, value, scope = np.asarray(layer.data), int(self.label.value), self.current_scope()
        over = bool(self.overwrite.value)
        rng = {"lo": float(self.lo.value), "hi": float(self.hi.value)}
        if name == "fill_between":
            return tools.fill_between(lab, value, scope, keys=self._keys(scope),
                                      spacing=self._spacing(), overwrite=over)  # fmt: skip
        if name == "remove_islands":
            return tools.remove_islands(lab, value, scope, min_mm3=float(self.min_mm3.value),
                                        spacing=self._spacing())  # fmt: skip
        if name == "keep_largest":
            return tools.keep_largest(lab, value, scope)
        if name == "fill_holes":
            return tools.fill_holes(lab, value, scope, overwrite=over)
        if name == "smooth":
            return tools.smooth(lab, value, scope, radius=int(self.radius.value), overwrite=over)
        if name == "restrict":
            return tools.restrict_to_range(lab, self._image_array(), value, scope, **rng)
        if name == "grow":
            return tools.grow_from_seeds(lab, self._image_array(), value, scope, **rng,
                                         opening=int(self.opening.value), overwrite=over)  # fmt: skip
        raise ValueError(f"unknown tool {name!r}")

    def apply_tool(self, name: str) -> int:
        """Run tool ``name`` with the dock's settings; returns the voxels changed."""
        t0 = time.perf_counter()
        change = self.make_change(name)
        n = self.apply_change(change)
        text = TOOLS[name][0]
        self.status.setText(
            f"{text}: {n} voxels changed on {len(change.slices(self.axis))} slice(s) "
            f"in {time.perf_counter() - t0:.2f} s."
            if n
            else f"{text}: nothing to change."
        )
        return n

    def apply_change(self, change: tools.Change) -> int:
        """Write ``change`` into the Labels layer as one undo step; record its slices."""
        layer = self.labels.value
        if change.size == 0:
            return 0
        with layer.block_history():
            layer.data_setitem(change.indices, change.values)
        annotations.add_slices(layer, self.axis, change.slices(self.axis))
        return change.size

    # ------------------------------------------------------------------ brush in range
    def _update_hook(self, _=None) -> None:
        if self._hooked is not None:
            try:
                self._hooked.events.paint.disconnect(self._on_paint)
            except (TypeError, ValueError, RuntimeError):
                pass
            self._hooked = None
        layer = self.labels.value
        if self.brush_in_range.value and layer is not None:
            layer.events.paint.connect(self._on_paint)
            self._hooked = layer

    def _on_paint(self, event) -> None:
        """After a stroke, take back what it painted outside lo..hi (in the same undo
        step). Deferred: napari reports a brush dab before it writes the voxels."""
        if self._in_hook or self._hooked is None or not self.brush_in_range.value:
            return
        if not _edits.is_user_edit(self._hooked):  # e.g. Propagate's new prediction
            return
        item = event.value
        QTimer.singleShot(0, functools.partial(self._take_back, self._hooked, item))

    def _take_back(self, layer, item) -> None:
        if layer is not self._hooked or self.image.value is None:
            return
        try:
            data = self._image_array()
        except ValueError:
            return
        idx, old = _painted_outside(item or [], data, self.lo.value, self.hi.value)
        if idx is None:
            return
        history = getattr(layer, "_undo_history", None)
        before = len(history) if history is not None else 0
        self._in_hook = True
        try:
            layer.data_setitem(idx, old)
        finally:
            self._in_hook = False
        if history is not None and len(history) == before + 1 and history[-2] is item:
            item.extend(history.pop())  # one Ctrl-Z undoes the stroke and the take-back

    # ------------------------------------------------------------------ where to look
    def _scores(self):
        layer = self.labels.value
        if layer is None:
            return None
        unc = find_uncertainty(self.viewer, layer)
        if unc is None:
            self.look_note.setText(
                f"No uncertainty layer for '{layer.name}': tick 'Uncertainty layer' in "
                "Segment volume and run it."
            )
            return None
        key = (id(layer), id(unc.data), self.axis)
        if key != self._queue_key:
            saved = unc.metadata["napari_vnet"].get("slice_scores")
            scores = saved if self.axis == 0 and saved else slice_scores(unc.data, self.axis)
            self._queue, self._queue_key = SliceQueue(scores), key
        return self._queue

    def _reviewed(self) -> set[int]:
        axis = self.axis
        return {s for a, sl in annotations.records(self.labels.value.metadata) if a == axis
                for s in sl}  # fmt: skip

    def next_uncertain(self, _checked=False) -> int | None:
        """Go to the next most uncertain unreviewed slice; returns it (None: none left)."""
        return self._jump(1)

    def previous_uncertain(self, _checked=False) -> int | None:
        """Go back to the uncertain slice visited before; returns it (None: none)."""
        return self._jump(-1)

    def _jump(self, step: int) -> int | None:
        queue = self._scores()
        if queue is None:
            return None
        reviewed = self._reviewed()
        target = queue.next(reviewed) if step > 0 else queue.previous(reviewed)
        if target is None:
            self.look_note.setText("No unreviewed uncertain slice left." if step > 0
                                   else "This is the first slice visited.")  # fmt: skip
            return None
        self._go_to(target)
        score = float(queue.scores[target])
        left = queue.remaining(reviewed)
        self.look_note.setText(f"Slice {target}: uncertainty {score:.3f} ({left} unreviewed left)")
        return target

    def _go_to(self, index: int) -> None:
        layer, axis = self.labels.value, self.axis
        point = np.asarray(layer.world_to_data(self.viewer.dims.point[-layer.ndim :]), float)
        point[axis] = index
        world = np.asarray(layer.data_to_world(point), float)
        offset = self.viewer.dims.ndim - layer.ndim
        self.viewer.dims.set_point(offset + axis, float(world[axis]))


def _jump_key(widget: CorrectWidget, step: int, _viewer=None) -> None:
    try:
        widget._jump(step)
    except RuntimeError:  # the dock was closed
        log.debug("Correct dock gone; key ignored")


def _painted_outside(items, image: np.ndarray, lo: float, hi: float):
    """Indices (and values before the stroke) of voxels a stroke set to a label > 0
    where the image lies outside lo..hi; (None, None) when there are none."""
    idx_parts: list[tuple[np.ndarray, ...]] = []
    old_parts: list[np.ndarray] = []
    for atom in items:
        key = getattr(atom, "slice_key", None)
        if key is not None:  # napari's masked paint atom
            if not np.any(atom.new_value):
                continue
            changed = atom.mask if atom.mask is not None else np.ones(image[key].shape, bool)
            local = np.nonzero(changed)  # C order: the order of old_values
            starts = [0 if s.start is None else int(s.start) for s in key]
            glob = tuple(c + s for c, s in zip(local, starts, strict=True))
            old = np.asarray(atom.old_values).ravel()
        else:
            glob, old, new = atom
            if not np.any(new):
                continue
            old = np.broadcast_to(np.asarray(old), (np.asarray(glob[0]).size,))
        vals = image[glob]
        out = (vals < lo) | (vals > hi)
        if out.any():
            idx_parts.append(tuple(np.asarray(g)[out] for g in glob))
            old_parts.append(np.asarray(old)[out])
    if not idx_parts:
        return None, None
    idx = tuple(np.concatenate([p[a] for p in idx_parts]) for a in range(image.ndim))
    return idx, np.concatenate(old_parts)
