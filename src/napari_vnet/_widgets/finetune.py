"""The "Fine-tune model" dock: correct by hand, train on the corrections, use the result.

The dock collects (image, labels) pairs, tracks which slices the user painted or marked
reviewed (:mod:`._edits`), and runs :func:`napari_vnet.training.finetune` in a child
process (:mod:`napari_vnet.child_process`, so no training work can hold the viewer's
GIL) whose events a napari generator thread worker relays. Each training event updates
the live loss / val-Dice curve, the progress bar and the time-left estimate on the GUI
thread. When training
ends the new weights are added to the recent-weights list and selected in the
"Segment volume" dock, so one click re-runs inference.

The user's labels layers are never modified: training gets copies taken on the GUI
thread when Train is pressed.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_vnet._widgets import _edits
from napari_vnet._widgets._finetune_job import (
    GeometryMismatch,
    check_same_geometry,
    check_same_grid,
    default_output_path,
    export_job,
    format_seconds,
    layer_volume,
    parse_class_names,
    parse_patch,
    training_job,
)
from napari_vnet._widgets._losscurve import LossCurve
from napari_vnet._widgets._session import first_use_in_napari as _session_first_use

if TYPE_CHECKING:
    import napari

logger = logging.getLogger(__name__)

WHOLE, EDITED = "whole volume", "edited / reviewed slices only"
# Progress (text, bar, curve) is shown at most this often, all in one repaint: under a
# software OpenGL stack every repaint of the window costs tens of ms of the GUI thread
PROGRESS_REFRESH_MS = 1000
ARCH_FALLBACK = ("vnet", "unet3d", "vox2vox")

__all__ = ["FinetuneWidget", "GeometryMismatch", "check_same_geometry"]


# ------------------------------------------------------------------------------ pairs


@dataclass
class _Pair:
    image_layer: Any = None
    labels_layer: Any = None
    image_path: Path | None = None
    labels_path: Path | None = None
    annotated: Any = None  # for file pairs: mask, slice list or {"axis", "slices"} record

    @property
    def is_file(self) -> bool:
        return self.image_path is not None

    def describe(self) -> str:
        if self.is_file:
            n = _count_file_annotated(self.annotated)
            extra = f" ({n} annotated slices)" if n else ""
            return f"{self.image_path.name}  +  {self.labels_path.name}{extra}"
        n = _edits.count_annotated(self.labels_layer.metadata)
        return f"{self.image_layer.name}  +  {self.labels_layer.name}  ({n} annotated slices)"


def _count_file_annotated(annotated) -> int:
    if annotated is None:
        return 0
    if isinstance(annotated, dict):
        return _edits.count_annotated({_edits.KEY: annotated})
    arr = np.asarray(annotated)
    if arr.dtype == bool and arr.ndim == 3:
        return int(arr.any(axis=(1, 2)).sum())
    return len(arr.ravel())


def _file_item(p: _Pair, only_edited: bool) -> dict:
    """The worker/export record for a file-backed pair (paths only; read off the GUI thread)."""
    return {
        "image_path": p.image_path,
        "labels_path": p.labels_path,
        "annotated": p.annotated if only_edited else None,
        "only_edited": only_edited,
    }


# ------------------------------------------------------------------------------ widget


class FinetuneWidget(QWidget):
    """Dock widget: fine-tune a segmentation network on the user's corrections."""

    weights_saved = Signal(str)
    dataset_exported = Signal(str)

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        _session_first_use()
        self._pairs: list[_Pair] = []
        self._trackers: dict[int, _edits.EditTracker] = {}
        self._named: set[int] = set()
        self._worker = None
        self._stop = threading.Event()
        self._base_weights: Path | None = None  # set explicitly; else follow Segment dock
        self._out_user_set = False
        self._last_weights: Path | None = None
        self._t0 = 0.0
        self._budget: float | None = None
        self._config_defaults = _train_config_defaults()
        self._build_ui()
        self.destroyed.connect(self._stop.set)  # dock closed: stop training (checkpoint kept)

        layers = self.viewer.layers
        layers.events.inserted.connect(self._on_layers_changed)
        layers.events.removed.connect(self._on_layers_changed)
        layers.events.moved.connect(self._on_layers_changed)
        self._on_layers_changed()
        self.refresh_base_weights()

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        root = QVBoxLayout(self)

        data = QGroupBox("Training data")
        form = QFormLayout(data)
        self.image_combo, self.labels_combo = QComboBox(), QComboBox()
        self.labels_combo.currentIndexChanged.connect(self._update_count)
        form.addRow("Image", self.image_combo)
        form.addRow("Labels", self.labels_combo)
        row = QHBoxLayout()
        self.add_pair_btn = QPushButton("Add pair")
        self.add_pair_btn.clicked.connect(self._on_add_pair_clicked)
        self.remove_pair_btn = QPushButton("Remove")
        self.remove_pair_btn.clicked.connect(self._on_remove_pair)
        row.addWidget(self.add_pair_btn)
        row.addWidget(self.remove_pair_btn)
        form.addRow(row)
        self.pair_list = QListWidget()
        self.pair_list.setMaximumHeight(48)
        self.pair_list.setToolTip("Pairs to train on (empty: the pair selected above)")
        form.addRow(self.pair_list)
        self.voxels_combo = QComboBox()
        self.voxels_combo.addItems([EDITED, WHOLE])
        self.voxels_combo.setToolTip(
            "Edited / reviewed: only slices you painted, filled or marked reviewed count "
            "(the rest of the labels is ignored). Whole volume: every voxel counts."
        )
        form.addRow("Voxels that count", self.voxels_combo)
        row = QHBoxLayout()
        self.mark_btn = QPushButton("Mark slice reviewed")
        self.mark_btn.setToolTip("The slice shown is correct as it is: train on it too")
        self.mark_btn.clicked.connect(self.mark_current_slice)
        self.unmark_btn = QPushButton("Unmark")
        self.unmark_btn.clicked.connect(lambda: self.mark_current_slice(reviewed=False))
        row.addWidget(self.mark_btn)
        row.addWidget(self.unmark_btn)
        form.addRow(row)
        self.count_label = QLabel("")
        form.addRow(self.count_label)
        root.addWidget(data)

        model = QGroupBox("Model")
        form = QFormLayout(model)
        self.from_base_radio = QRadioButton("Start from weights")
        self.new_model_radio = QRadioButton("New model")
        group = QButtonGroup(self)
        group.addButton(self.from_base_radio)
        group.addButton(self.new_model_radio)
        self.from_base_radio.setChecked(True)
        row = QHBoxLayout()
        self.base_label = QLabel("(none)")
        self.base_label.setWordWrap(True)
        choose = QPushButton("...")
        choose.setMaximumWidth(30)
        choose.clicked.connect(self._on_choose_base)
        row.addWidget(self.base_label, 1)
        row.addWidget(choose)
        form.addRow(self.from_base_radio, row)
        self.arch_combo = QComboBox()
        self.arch_combo.addItems(_architectures())
        self.width_spin = QSpinBox()
        self.width_spin.setRange(2, 64)
        self.width_spin.setValue(8)
        self.width_spin.setPrefix("width ")
        self.width_spin.setToolTip(
            "Channels of the first level (then 2x per level); 8 trains in CPU minutes"
        )
        row = QHBoxLayout()
        row.addWidget(self.arch_combo, 1)
        row.addWidget(self.width_spin)
        form.addRow(self.new_model_radio, row)
        self.class_names_edit = QLineEdit()
        self.class_names_edit.setPlaceholderText("new classes, e.g. 3=kidney, 4=spleen")
        self.class_names_edit.setToolTip(
            "Classes come from the weights' card. Label values in your labels that the card "
            "lacks become new classes; name them here."
        )
        form.addRow("Class names", self.class_names_edit)
        self.from_base_radio.toggled.connect(self._update_default_output)
        self.arch_combo.currentIndexChanged.connect(self._update_default_output)
        root.addWidget(model)

        settings = QGroupBox("Training")
        form = QFormLayout(settings)
        d = self._config_defaults
        row = QHBoxLayout()
        self.iterations_spin = QSpinBox()
        self.iterations_spin.setRange(1, 1_000_000)
        self.iterations_spin.setValue(int(d.get("iterations") or 200))
        self.minutes_spin = QDoubleSpinBox()
        self.minutes_spin.setRange(0.1, 24 * 60)
        self.minutes_spin.setDecimals(1)
        self.minutes_spin.setValue(float(d.get("minutes") or 3.0))
        self.stop_combo = QComboBox()
        self.stop_combo.addItems(["iterations", "minutes"])
        self.stop_combo.currentTextChanged.connect(self._on_stop_mode)
        row.addWidget(self.iterations_spin)
        row.addWidget(self.minutes_spin)
        row.addWidget(self.stop_combo)
        self.minutes_spin.hide()
        form.addRow("Stop after", row)
        self.lr_spin = QDoubleSpinBox()
        self.lr_spin.setDecimals(5)
        self.lr_spin.setRange(0.0, 1.0)
        self.lr_spin.setSingleStep(1e-4)
        self.lr_spin.setSpecialValueText("auto")
        self.lr_spin.setToolTip("auto: 3e-4 when fine-tuning, 1e-3 for a new model")
        self.lr_spin.setValue(float(d.get("lr") or 0.0))
        patch = d.get("patch_size")
        self.patch_edit = QLineEdit("" if patch is None else ",".join(str(p) for p in patch))
        self.patch_edit.setPlaceholderText("auto")
        self.patch_edit.setToolTip(
            "z, y, x voxels, or one number for a cube; empty: the patch the weights were "
            "trained with, else 48"
        )
        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(1, 64)
        self.batch_spin.setValue(int(d.get("batch_size", 2)))
        self.batch_spin.setPrefix("batch ")
        row = QHBoxLayout()
        row.addWidget(self.lr_spin, 1)
        row.addWidget(self.batch_spin)
        form.addRow("Learning rate", row)
        self.val_spin = QSpinBox()
        self.val_spin.setRange(0, 50)
        self.val_spin.setSuffix(" %")
        self.val_spin.setSpecialValueText("off")
        self.val_spin.setValue(20)
        self.val_spin.setToolTip(
            "Annotated slices held out to measure validation Dice (the last slab of them "
            "with one pair; whole pairs with several). Off when fewer than 5 slices count."
        )
        self.val_spin.setPrefix("validation ")
        row = QHBoxLayout()
        row.addWidget(self.patch_edit, 1)
        row.addWidget(self.val_spin)
        form.addRow("Patch size", row)
        self.device_combo = QComboBox()
        from napari_vnet._widgets.segment import available_devices

        for label, value in available_devices():  # the same list as Segment volume
            self.device_combo.addItem(label, value)
        form.addRow("Device", self.device_combo)
        row = QHBoxLayout()
        self.out_edit = QLineEdit()
        self.out_edit.textEdited.connect(self._on_out_edited)
        out_btn = QPushButton("...")
        out_btn.setMaximumWidth(30)
        out_btn.clicked.connect(self._on_choose_out)
        row.addWidget(self.out_edit, 1)
        row.addWidget(out_btn)
        form.addRow("Save to", row)
        root.addWidget(settings)

        row = QHBoxLayout()
        self.train_btn = QPushButton("Train")
        self.train_btn.clicked.connect(self._on_train_clicked)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.setToolTip("Stop now; the best checkpoint so far is kept")
        self.cancel_btn.clicked.connect(self.cancel)
        row.addWidget(self.train_btn)
        row.addWidget(self.cancel_btn)
        root.addLayout(row)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setValue(0)  # (not shown yet)
        root.addWidget(self.progress)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        # a fixed box: a new progress text repaints the label, not the window's layout
        self.status_label.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Fixed)
        self.status_label.setFixedHeight(3 * self.status_label.fontMetrics().lineSpacing() + 4)
        self.status_label.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        root.addWidget(self.status_label)
        self.curve = LossCurve(self, redraw_ms=0)  # redrawn with the progress (below)
        self._pending_event: dict | None = None
        self._progress_timer = QTimer(self)
        self._progress_timer.setInterval(PROGRESS_REFRESH_MS)
        self._progress_timer.timeout.connect(self._show_pending_progress)
        root.addWidget(self.curve, 1)
        row = QHBoxLayout()
        self.segment_btn = QPushButton("Segment with new weights")
        self.segment_btn.setEnabled(False)
        self.segment_btn.clicked.connect(self.segment_with_new_weights)
        self.export_btn = QPushButton("Export dataset...")
        self.export_btn.setToolTip("Save the training pairs as an nnU-Net/MSD style folder")
        self.export_btn.clicked.connect(self._on_export_clicked)
        row.addWidget(self.segment_btn)
        row.addWidget(self.export_btn)
        root.addLayout(row)

    # ------------------------------------------------------------ layers, edits
    def _on_layers_changed(self, event=None) -> None:
        from napari.layers import Image, Labels

        for combo, kind in ((self.image_combo, Image), (self.labels_combo, Labels)):
            current = combo.currentData()
            combo.blockSignals(True)
            combo.clear()
            for layer in self.viewer.layers:
                if isinstance(layer, kind):
                    combo.addItem(layer.name, layer)
            idx = combo.findData(current) if current is not None else -1
            combo.setCurrentIndex(idx if idx >= 0 else combo.count() - 1)
            combo.blockSignals(False)
        present = {id(layer) for layer in self.viewer.layers}
        for layer in self.viewer.layers:
            if id(layer) not in self._named:  # keep the combos' names current
                layer.events.name.connect(self._on_layers_changed)
                self._named.add(id(layer))
            if isinstance(layer, Labels) and id(layer) not in self._trackers:
                tracker = _edits.EditTracker(layer, self)
                tracker.changed.connect(self._on_labels_edited)
                self._trackers[id(layer)] = tracker
        for key in [k for k in self._trackers if k not in present]:
            self._trackers.pop(key).disconnect_layer()
        self._pairs = [
            p
            for p in self._pairs
            if p.is_file or id(p.labels_layer) in present and id(p.image_layer) in present
        ]
        self._named &= present
        self._refresh_pair_list()
        self._update_count()
        self.refresh_base_weights()  # e.g. a new prediction: the Segment dock's weights

    def _on_labels_edited(self, layer) -> None:
        self._refresh_pair_list()
        self._update_count()

    def _update_count(self, *_) -> None:
        layer = self.labels_combo.currentData()
        if layer is None:
            self.count_label.setText("No labels layer: add one (or run Segment volume).")
            return
        recs = _edits.records(layer.metadata)
        n = sum(len(s) for _, s in recs)
        axes = ", ".join(str(a) for a, _ in recs) or "-"
        self.count_label.setText(f"Annotated slices in '{layer.name}': {n} (axis {axes})")

    def mark_current_slice(self, reviewed: bool = True) -> int | None:
        """Mark (or unmark) the slice shown for the selected labels layer; returns it."""
        layer = self.labels_combo.currentData()
        if layer is None:
            _notify("warning", "Choose a labels layer first.")
            return None
        axis = _edits.viewing_axis(layer)
        index = _edits.current_slice(layer, self.viewer, axis)
        if reviewed:
            _edits.add_slices(layer, axis, [index])
        else:
            _edits.remove_slices(layer, axis, [index])
        self._on_labels_edited(layer)
        return index

    # ------------------------------------------------------------------ pairs
    def add_pair(self, image_layer, labels_layer) -> None:
        """Add an (image layer, labels layer) training pair; raises GeometryMismatch."""
        check_same_geometry(image_layer, labels_layer)
        for p in self._pairs:
            if p.image_layer is image_layer and p.labels_layer is labels_layer:
                return
        self._pairs.append(_Pair(image_layer=image_layer, labels_layer=labels_layer))
        self._refresh_pair_list()

    def add_file_pair(self, image_path, labels_path, annotated=None) -> None:
        """Add a pair of files (e.g. from the Scans dock); read when training starts.

        ``annotated``: None (whole volume), a boolean mask, a list of slice indices along
        axis 0, or an ``{"axis": a, "slices": [...]}`` record.
        """
        image_path, labels_path = Path(image_path), Path(labels_path)
        for p in (image_path, labels_path):
            if not p.exists():
                raise FileNotFoundError(f"training file not found: {p}")
        from napari_vnet.io import read_header

        check_same_grid(read_header(image_path), read_header(labels_path), image_path, labels_path)
        # the same labels file again (e.g. handed over twice): update its record
        self._pairs = [p for p in self._pairs if p.labels_path != labels_path]
        self._pairs.append(
            _Pair(image_path=image_path, labels_path=labels_path, annotated=annotated)
        )
        self._refresh_pair_list()

    @property
    def pairs(self) -> list[_Pair]:
        return list(self._pairs)

    def _on_add_pair_clicked(self) -> None:
        img, lab = self.image_combo.currentData(), self.labels_combo.currentData()
        if img is None or lab is None:
            _notify("warning", "Choose an image layer and a labels layer first.")
            return
        try:
            self.add_pair(img, lab)
        except ValueError as exc:  # GeometryMismatch and other refusals
            _notify("error", str(exc))

    def _on_remove_pair(self) -> None:
        row = self.pair_list.currentRow()
        if 0 <= row < len(self._pairs):
            del self._pairs[row]
            self._refresh_pair_list()

    def _refresh_pair_list(self) -> None:
        self.pair_list.clear()
        for p in self._pairs:
            self.pair_list.addItem(p.describe())

    # ------------------------------------------------------------- base weights
    def set_base_weights(self, path) -> None:
        """Fine-tune these weights (a path or a shipped name)."""
        try:
            from napari_vnet.weights import resolve_weights

            path = resolve_weights(path)
        except (ImportError, AttributeError):  # pragma: no cover - weights not there yet
            path = Path(path)
        self._base_weights = Path(path)
        self.from_base_radio.setChecked(True)
        self.refresh_base_weights()

    def base_weights(self) -> Path | None:
        """Explicitly set weights, else those selected in the Segment volume dock."""
        if self._base_weights is not None:
            return self._base_weights
        seg = self._segment_widget()
        current = getattr(seg, "current_weights", None) if seg is not None else None
        return Path(current) if current else None

    def refresh_base_weights(self) -> None:
        base = self.base_weights()
        self.base_label.setText(base.name if base else "(none: choose weights or a new model)")
        self.base_label.setToolTip(str(base) if base else "")
        self._update_default_output()

    def _on_choose_base(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Base weights", "", "Weights (*.pt *.pth)")
        if path:
            self.set_base_weights(path)

    # ------------------------------------------------------------------ output
    def _update_default_output(self, *_) -> None:
        if self._out_user_set:
            return
        base = self.base_weights() if self.from_base_radio.isChecked() else None
        self.out_edit.setText(str(default_output_path(base, self.arch_combo.currentText())))

    def _on_out_edited(self, text: str) -> None:
        self._out_user_set = bool(text.strip())

    def _on_choose_out(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Save fine-tuned weights", self.out_edit.text(), "Weights (*.pt)"
        )
        if path:
            self.set_output_path(path)

    def set_output_path(self, path) -> None:
        self.out_edit.setText(str(path))
        self._out_user_set = True

    def _on_stop_mode(self, mode: str) -> None:
        self.iterations_spin.setVisible(mode == "iterations")
        self.minutes_spin.setVisible(mode == "minutes")

    # ---------------------------------------------------------------- training
    def _training_specs(self, only_edited: bool) -> list[dict]:
        """Copies of the pairs' data for the worker (GUI thread; labels never shared)."""
        pairs = self._pairs
        if not pairs:
            img, lab = self.image_combo.currentData(), self.labels_combo.currentData()
            if img is None or lab is None:
                raise ValueError("No training data: choose an image and a labels layer.")
            check_same_geometry(img, lab)
            pairs = [_Pair(image_layer=img, labels_layer=lab)]
        specs = []
        for p in pairs:
            if p.is_file:
                specs.append(_file_item(p, only_edited))
                continue
            check_same_geometry(p.image_layer, p.labels_layer)
            labels = np.array(p.labels_layer.data, copy=True)
            mask = None
            if only_edited:
                mask = _edits.annotated_mask(labels.shape, p.labels_layer.metadata)
                if mask is None:
                    raise ValueError(
                        f"Labels layer '{p.labels_layer.name}' has no edited or reviewed "
                        "slices. Paint corrections or press 'Mark slice reviewed', or set "
                        f"'Voxels that count' to '{WHOLE}'."
                    )
            vol = layer_volume(p.image_layer, np.asarray(p.image_layer.data))
            specs.append(
                {
                    "image": vol.array,
                    "labels": labels,
                    "spacing": tuple(float(s) for s in vol.spacing),
                    "annotated": mask,
                    "name": p.labels_layer.name,
                }
            )
        return specs

    def training_config(self, n_annotated: int | None = None):
        """A TrainConfig from the dock's settings (classes are settled in the worker)."""
        from napari_vnet.training import TrainConfig, width_kwargs

        by_minutes = self.stop_combo.currentText() == "minutes"
        val = self.val_spin.value() / 100.0
        if n_annotated is not None and n_annotated < 5:
            val = 0.0  # too few slices to hold any out
        text = self.patch_edit.text().strip()
        new = not self.from_base_radio.isChecked()
        arch = self.arch_combo.currentText()
        eval_pace = {}
        if by_minutes:  # about 8 validation points on the curve, 15-60 s apart
            eval_pace["eval_seconds"] = min(60.0, max(15.0, 60.0 * self.minutes_spin.value() / 8))
        return TrainConfig(
            arch=arch if new else None,
            arch_kwargs=width_kwargs(arch, self.width_spin.value()) if new else {},
            iterations=None if by_minutes else self.iterations_spin.value(),
            minutes=self.minutes_spin.value() if by_minutes else None,
            lr=self.lr_spin.value() or None,
            patch_size=parse_patch(text) if text else None,
            batch_size=self.batch_spin.value(),
            device=self.device_combo.currentData() or "auto",
            val_fraction=val,
            **eval_pace,
        )

    def train(self):
        """Start fine-tuning in a thread worker and return it (None if refused)."""
        from napari.qt.threading import thread_worker

        if self._worker is not None:
            _notify("warning", "Training is already running.")
            return None
        try:
            specs = self._training_specs(self.voxels_combo.currentText() == EDITED)
            counts = [
                _count_file_annotated(s["annotated"]) for s in specs if s["annotated"] is not None
            ]
            config = self.training_config(min(counts) if counts else None)
            names = parse_class_names(self.class_names_edit.text())
            base = self.base_weights() if self.from_base_radio.isChecked() else None
            if self.from_base_radio.isChecked() and base is None:
                raise ValueError("No base weights: choose weights, or pick 'New model'.")
            out = Path(self.out_edit.text().strip()).expanduser()
            if not self.out_edit.text().strip():
                raise ValueError("Choose where to save the fine-tuned weights.")
            if base is not None and out.resolve() == Path(base).resolve():
                raise ValueError(f"{out} is the base weights file; it is never overwritten.")
            out.parent.mkdir(parents=True, exist_ok=True)
        except (ValueError, OSError) as exc:
            _notify("error", str(exc))
            return None

        self._stop.clear()
        self.curve.clear()
        self._set_progress(0)
        self.status_label.setText("Starting the training process, preparing the data...")
        self.train_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self._t0 = time.perf_counter()
        self._budget = 60.0 * config.minutes if config.minutes else None
        worker = thread_worker(training_job, start_thread=False, ignore_errors=True)(
            specs, config, base, out, self._stop, names
        )
        worker.yielded.connect(self._on_event)
        worker.returned.connect(self._on_done)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        worker.start()
        return worker

    def _on_train_clicked(self) -> None:
        self.train()

    def cancel(self) -> None:
        """Stop training at the next step; the best checkpoint so far is kept."""
        if self._worker is not None:
            self._stop.set()
            self.status_label.setText("Cancelling (keeping the best checkpoint)...")

    def _on_event(self, ev: dict) -> None:
        """A training event: stored now, shown at most every PROGRESS_REFRESH_MS."""
        self.curve.add_point(int(ev.get("iteration", 0)), ev.get("loss"), ev.get("val_dice"))
        self._pending_event = ev
        if not self._progress_timer.isActive():  # the first event at once, then paced
            self._show_pending_progress()
            self._progress_timer.start()

    def _set_progress(self, value: int) -> None:
        """Set the bar without QProgressBar's immediate repaint().

        setValue() paints and flushes the window at once; under a software OpenGL stack
        that is a whole-window composition of its own. With updates off it is a plain
        update(), painted in the same pass as the status text and the curve.
        """
        if value == self.progress.value():
            return
        self.progress.setUpdatesEnabled(False)
        try:
            self.progress.setValue(value)
        finally:
            self.progress.setUpdatesEnabled(True)

    def _show_pending_progress(self) -> None:
        ev, self._pending_event = self._pending_event, None
        if ev is None:
            self._progress_timer.stop()
            return
        self.curve.redraw()
        it, total = int(ev.get("iteration", 0)), ev.get("total")
        elapsed = float(ev.get("seconds", time.perf_counter() - self._t0))
        left = None
        if total and 0 < it <= int(total):
            self._set_progress(int(100 * it / int(total)))
            left = elapsed / it * (int(total) - it)
        budget = self._budget
        if budget:
            left = min(left, budget - elapsed) if left is not None else budget - elapsed
            self._set_progress(int(100 * min(1.0, elapsed / budget)))
        text = f"iteration {it}" + (f"/{total}" if total and not budget else "")
        if ev.get("loss") is not None:
            text += f" · loss {float(ev['loss']):.4f}"
        if self.curve.val_dice:
            text += f" · val Dice {self.curve.val_dice[-1]:.3f}"
        if left is not None:
            text += f" · {format_seconds(left)} left"
        if not self._stop.is_set():  # else keep "Cancelling..."
            self.status_label.setText(text)

    def _on_done(self, summary: dict) -> None:
        self._show_pending_progress()
        out = summary.get("out")
        cancelled = bool(summary.get("cancelled"))
        if out is None or not Path(out).exists():
            self.status_label.setText("Cancelled before a checkpoint was saved.")
            return
        out = Path(out)
        self._last_weights = out
        if not cancelled:
            self._set_progress(100)
        best = summary.get("val_dice")
        extra = f" (best val Dice {best:.3f})" if isinstance(best, float) else ""
        verb = "Cancelled; kept best checkpoint" if cancelled else "Saved"
        self.status_label.setText(f"{verb} {out.name}{extra}.")
        self._publish_weights(out)

    def _publish_weights(self, out: Path) -> None:
        """Recent list + select in the Segment dock, then tell listeners."""
        try:
            from napari_vnet._widgets._session import add_recent_weights

            add_recent_weights(out)
        except ImportError:  # pragma: no cover - session helpers not there yet
            logger.warning("recent-weights list unavailable")
        seg = self._segment_widget()
        if seg is not None:
            seg.refresh_weights()
            seg.select_weights(out)
        self.segment_btn.setEnabled(True)
        self.refresh_base_weights()  # next default output: the next -ftN
        self.weights_saved.emit(str(out))
        # the dock's status line says "Saved ..."; the viewer's status bar and the log
        # too. No notification toast: creating and animating it cost 114-134 ms of
        # stalled viewer at the end of each run (software OpenGL, load ~4)
        self.viewer.status = f"Fine-tuned weights saved: {out}"
        logger.info("fine-tuned weights saved: %s", out)

    def _on_error(self, exc: Exception) -> None:
        self._show_pending_progress()
        logger.error("fine-tuning failed", exc_info=exc)
        self.status_label.setText(f"Training failed: {exc}")
        self.status_label.setToolTip(str(exc))
        _notify("error", f"Training failed: {exc}")

    def _on_finished(self) -> None:
        self._progress_timer.stop()
        self._pending_event = None
        self._worker = None
        self.train_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)
        self.curve.redraw()

    # ------------------------------------------------------------ hand-over
    def _segment_widget(self):
        try:
            from napari_vnet._widgets._session import find_dock_widget
            from napari_vnet._widgets.segment import SegmentWidget
        except ImportError:  # pragma: no cover
            return None
        return find_dock_widget(self.viewer, SegmentWidget)

    def segment_with_new_weights(self):
        """Select the new weights in the Segment dock (opening it) and run it."""
        if self._last_weights is None:
            return None
        seg = self._segment_widget()
        if seg is None:
            _, seg = self.viewer.window.add_plugin_dock_widget("napari-vnet", "Segment volume")
        seg.refresh_weights()
        seg.select_weights(self._last_weights)
        image = self._pairs[0].image_layer if self._pairs else self.image_combo.currentData()
        if image is not None:
            seg.set_image_layer(image)
        return seg.run()

    # ------------------------------------------------------------------ export
    def _on_export_clicked(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export training pairs to folder")
        if folder:
            self.export_dataset(folder)

    def export_dataset(self, folder):
        """Write the session's pairs as an nnU-Net/MSD style folder in a thread worker.

        ``imagesTr/case_NNN_0000.nii.gz``, ``labelsTr/case_NNN.nii.gz`` and a
        ``dataset.json``. With "edited / reviewed slices only", voxels outside the
        annotated slices get nnU-Net's "ignore" label. Returns the worker, or None when
        refused; ``dataset_exported(folder)`` is emitted when it is written.
        """
        from napari.qt.threading import thread_worker

        only = self.voxels_combo.currentText() == EDITED
        try:
            items = self._export_items(only)
            names = parse_class_names(self.class_names_edit.text())
        except (ValueError, OSError) as exc:
            _notify("error", f"Export refused: {exc}")
            return None
        worker = thread_worker(export_job, start_thread=False, ignore_errors=True)(
            items, Path(folder), names
        )
        worker.returned.connect(self._on_exported)
        worker.errored.connect(lambda exc: _notify("error", f"Export failed: {exc}"))
        worker.start()
        return worker

    def _on_exported(self, folder) -> None:
        _notify("info", f"Training pairs exported to {folder}")
        self.dataset_exported.emit(str(folder))

    def _export_items(self, only_edited: bool) -> list[dict]:
        pairs = self._pairs
        if not pairs:
            img, lab = self.image_combo.currentData(), self.labels_combo.currentData()
            if img is None or lab is None:
                raise ValueError("No training pairs to export.")
            pairs = [_Pair(image_layer=img, labels_layer=lab)]
        items = []
        for p in pairs:
            if p.is_file:
                items.append(_file_item(p, only_edited))
                continue
            check_same_geometry(p.image_layer, p.labels_layer)
            labels = np.array(p.labels_layer.data, copy=True)
            record = p.labels_layer.metadata.get(_edits.KEY) if only_edited else None
            items.append(
                {
                    "image": layer_volume(p.image_layer, np.asarray(p.image_layer.data)),
                    "labels": layer_volume(p.labels_layer, labels),
                    "annotated": record,
                    "only_edited": only_edited,
                }
            )
        return items


def _train_config_defaults() -> dict[str, Any]:
    try:
        from napari_vnet.training import TrainConfig
    except ImportError:  # pragma: no cover - engine not there yet
        return {}
    out = {}
    for f in dataclasses.fields(TrainConfig):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[f.name] = f.default_factory()  # type: ignore[misc]
    return out


def _architectures() -> list[str]:
    try:
        from napari_vnet.models import ARCHITECTURES

        return list(ARCHITECTURES)
    except ImportError:  # pragma: no cover - models not there yet
        return list(ARCH_FALLBACK)


def _notify(kind: str, message: str) -> None:
    from napari.utils import notifications

    {"info": notifications.show_info, "warning": notifications.show_warning}.get(
        kind, notifications.show_error
    )(message)
