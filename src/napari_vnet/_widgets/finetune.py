"""The "Fine-tune model" dock: correct by hand, train on the corrections, use the result.

The dock collects (image, labels) pairs, tracks which slices the user painted or marked
reviewed (:mod:`._edits`), and runs :func:`napari_vnet.training.finetune` in a child
process (:mod:`napari_vnet.workflows.child_process`, so no training work can hold the viewer's
GIL) whose events a napari generator thread worker relays. Each training event updates
the live loss / val-Dice curve, the progress bar and the time-left estimate on the GUI
thread. When training
ends the new weights are added to the recent-weights list and selected in the
"Segment volume" dock, so one click re-runs inference.

The user's labels layers are never modified: training gets copies taken on the GUI
thread when Train is pressed.

This module keeps the dock's layout and wiring; the pair list and the training data
taken from it are in :mod:`._finetune_pairs`, the training run and its progress in
:mod:`._finetune_run`, dataset export in :mod:`._finetune_export`, and what runs off the
GUI thread in :mod:`napari_vnet.workflows.finetune` (the use case the command line's
``train`` runs too).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

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
from napari_vnet._widgets._compact import Collapsible, elide_middle
from napari_vnet._widgets._finetune_export import FinetuneExportMixin
from napari_vnet._widgets._finetune_pairs import (
    CORRECTED,
    EDITED,
    WHOLE,
    FinetunePairsMixin,
    _Pair,
)
from napari_vnet._widgets._finetune_pairs import notify as _notify
from napari_vnet._widgets._finetune_run import PROGRESS_REFRESH_MS, FinetuneRunMixin
from napari_vnet._widgets._losscurve import LossCurve
from napari_vnet._widgets._session import join_session
from napari_vnet.models.names import DISPLAY_NAMES
from napari_vnet.weights import resolve_weights
from napari_vnet.workflows.finetune import default_output_path
from napari_vnet.workflows.options import train_defaults

if TYPE_CHECKING:
    import napari

logger = logging.getLogger(__name__)

#: height of the loss curve pinned at the bottom of the dock
CURVE_HEIGHT = 120

__all__ = ["CORRECTED", "EDITED", "PROGRESS_REFRESH_MS", "WHOLE", "FinetuneWidget"]


# ------------------------------------------------------------------------------ widget


class FinetuneWidget(FinetunePairsMixin, FinetuneRunMixin, FinetuneExportMixin, QWidget):
    """Dock widget: fine-tune a segmentation network on the user's corrections."""

    weights_saved = Signal(str)
    dataset_exported = Signal(str)

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = join_session(napari_viewer, "finetune", self)
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
        self._config_defaults = train_defaults()
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
        root.addWidget(self._data_group())
        root.addWidget(self._model_group())
        root.addWidget(self._training_group())
        root.addLayout(self._actions_row())
        root.addStretch(1)
        self._build_footer(root)

    def _data_group(self) -> QGroupBox:
        """Image / labels pickers, the pair list, which voxels count, reviewed slices."""
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
        self.voxels_combo.addItems([CORRECTED, EDITED, WHOLE])
        self.voxels_combo.setToolTip(
            "What I corrected (default): on a slice you edited, the labels you painted or "
            "erased (with the voxels around them) count fully; the labels you left as "
            "predicted are kept at the small 'Untouched labels weight' (Advanced), so the "
            "model keeps them without taking them for corrections. Slices marked reviewed "
            "count whole. Whole edited / reviewed slices: every voxel of those slices counts "
            "as corrected. Whole volume: every voxel."
        )
        self.voxels_combo.currentTextChanged.connect(self._on_train_on)
        form.addRow("Train on", self.voxels_combo)
        row = QHBoxLayout()
        self.mark_btn = QPushButton("Mark slice reviewed")
        self.mark_btn.setToolTip(
            "Every label on the slice shown is correct as it is: train on all of it"
        )
        # (clicked passes checked=False: it would unmark)
        self.mark_btn.clicked.connect(lambda: self.mark_current_slice(reviewed=True))
        self.unmark_btn = QPushButton("Unmark")
        self.unmark_btn.clicked.connect(lambda: self.mark_current_slice(reviewed=False))
        row.addWidget(self.mark_btn)
        row.addWidget(self.unmark_btn)
        form.addRow(row)
        self.count_label = QLabel("")
        form.addRow(self.count_label)
        return data

    def _model_group(self) -> QGroupBox:
        """Start from weights (and which) or a new model (architecture, width); class names."""
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
        self.choose_base_folder = QPushButton("Folder…")
        self.choose_base_folder.setToolTip(
            "Start from an nnU-Net v2 trained-model folder or a MONAI bundle folder"
        )
        self.choose_base_folder.clicked.connect(self._on_choose_base_folder)
        row.addWidget(self.base_label, 1)
        row.addWidget(choose)
        row.addWidget(self.choose_base_folder)
        form.addRow(self.from_base_radio, row)
        self.arch_combo = QComboBox()
        for arch, shown in DISPLAY_NAMES.items():  # "V-Net" shown, "vnet" meant
            self.arch_combo.addItem(shown, arch)
        self.width_spin = QSpinBox()
        self.width_spin.setRange(0, 64)
        self.width_spin.setPrefix("width ")
        # 0: the training plan's width (U-Net 16-128, V-Net 8-64: measured best on a CPU
        # with the context-first patch, docs/readme/generalisation.md)
        self.width_spin.setSpecialValueText("width: planned")
        self.width_spin.setValue(0)
        self.width_spin.setToolTip(
            "Channels of the first level (then 2x per level). 'planned': the width the "
            "training plan chooses for a CPU (U-Net 16, V-Net 8)"
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
        return model

    def _training_group(self) -> QGroupBox:
        """Stop after N iterations / M minutes, where to save, and the Advanced settings."""
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
        advanced = self._advanced_settings()
        row = QHBoxLayout()
        self.out_edit = QLineEdit()
        self.out_edit.textEdited.connect(self._on_out_edited)
        out_btn = QPushButton("...")
        out_btn.setMaximumWidth(30)
        out_btn.clicked.connect(self._on_choose_out)
        row.addWidget(self.out_edit, 1)
        row.addWidget(out_btn)
        form.addRow("Save to", row)
        # learning rate, batch, patch, validation, device: closed by default
        self.advanced_group = Collapsible("Advanced", advanced)
        form.addRow(self.advanced_group)
        return settings

    def _advanced_settings(self) -> QWidget:
        """Learning rate, batch, patch, validation, device (in the closed "Advanced" box)."""
        d = self._config_defaults
        advanced = QWidget()
        adv = QFormLayout(advanced)
        adv.setContentsMargins(0, 0, 0, 0)
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
        adv.addRow("Learning rate", row)
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
        adv.addRow("Patch size", row)
        self.uncorrected_spin = QDoubleSpinBox()
        self.uncorrected_spin.setRange(0.0, 1.0)
        self.uncorrected_spin.setDecimals(2)
        self.uncorrected_spin.setSingleStep(0.05)
        self.uncorrected_spin.setValue(float(d.get("uncorrected_weight", 0.25)))
        self.uncorrected_spin.setToolTip(
            "With 'what I corrected': the loss weight of the labels you left as predicted "
            "on the slices you edited (what you corrected or reviewed weighs 1). 0: your "
            "corrections only (classes shown nowhere else are forgotten); 1: the edited "
            "slices whole"
        )
        adv.addRow("Untouched labels weight", self.uncorrected_spin)
        self.device_combo = QComboBox()
        from napari_vnet._widgets.segment import available_devices

        for label, value in available_devices():  # the same list as Segment volume
            self.device_combo.addItem(label, value)
        adv.addRow("Device", self.device_combo)
        return advanced

    def _actions_row(self) -> QHBoxLayout:
        """Segment with the new weights; export the pairs as a dataset."""
        row = QHBoxLayout()
        self.segment_btn = QPushButton("Segment with new weights")
        self.segment_btn.setEnabled(False)
        self.segment_btn.clicked.connect(self.segment_with_new_weights)
        self.export_btn = QPushButton("Export dataset...")
        self.export_btn.setToolTip("Save the training pairs as an nnU-Net/MSD style folder")
        self.export_btn.clicked.connect(self._on_export_clicked)
        row.addWidget(self.segment_btn)
        row.addWidget(self.export_btn)
        return row

    def _build_footer(self, root: QVBoxLayout) -> None:
        """Train / Cancel, progress, status and the loss curve: pinned below the scroll
        area when docked (:class:`~._docking.ScrollDock`)."""
        self.footer = QWidget()
        foot = QVBoxLayout(self.footer)
        row = QHBoxLayout()
        self.train_btn = QPushButton("Train")
        self.train_btn.clicked.connect(self._on_train_clicked)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.setToolTip("Stop now; the best checkpoint so far is kept")
        self.cancel_btn.clicked.connect(self.cancel)
        row.addWidget(self.train_btn)
        row.addWidget(self.cancel_btn)
        foot.addLayout(row)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setValue(0)  # (not shown yet)
        foot.addWidget(self.progress)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        # a fixed box: a new progress text repaints the label, not the window's layout
        self.status_label.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Fixed)
        self.status_label.setFixedHeight(3 * self.status_label.fontMetrics().lineSpacing() + 4)
        self.status_label.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        foot.addWidget(self.status_label)
        self.curve = LossCurve(self, redraw_ms=0)  # redrawn with the progress (below)
        self.curve.setMinimumHeight(CURVE_HEIGHT)
        self.curve.hide()  # shown from the first training run on
        self._pending_event = None
        self._progress_timer = QTimer(self)
        self._progress_timer.setInterval(PROGRESS_REFRESH_MS)
        self._progress_timer.timeout.connect(self._show_pending_progress)
        foot.addWidget(self.curve, 1)
        root.addWidget(self.footer)

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

    # ------------------------------------------------------------- base weights
    def set_base_weights(self, path) -> None:
        """Fine-tune these weights (a path or a shipped name)."""
        self._base_weights = Path(resolve_weights(path))
        self.from_base_radio.setChecked(True)
        self.refresh_base_weights()

    def base_weights(self) -> Path | None:
        """Explicitly set weights, else those selected in the Segment volume dock."""
        if self._base_weights is not None:
            return self._base_weights
        return self.session.segment_weights()

    def refresh_base_weights(self) -> None:
        base = self.base_weights()
        text = elide_middle(base.name) if base else "(none: choose weights or a new model)"
        self.base_label.setText(text)
        self.base_label.setToolTip(str(base) if base else "")
        self._update_default_output()

    def _on_choose_base(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Base weights", "", "Weights (*.pt *.pth)")
        if path:
            self.set_base_weights(path)

    def _on_choose_base_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Base model folder", "")
        if folder:
            self.set_base_weights(folder)

    # ------------------------------------------------------------------ output
    def _update_default_output(self, *_) -> None:
        if self._out_user_set:
            return
        from_base = self.from_base_radio.isChecked()
        base = self.base_weights() if from_base else None
        if from_base and base is None:  # nothing to name the result after yet
            self.out_edit.setText("")
            self.out_edit.setPlaceholderText("choose start weights, or New model")
            return
        self.out_edit.setPlaceholderText("")
        self.out_edit.setText(str(default_output_path(base, self.current_arch())))

    def current_arch(self) -> str:
        """The registry name of the New model architecture chosen ("vnet")."""
        return str(self.arch_combo.currentData() or self.arch_combo.currentText())

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

    def _on_train_on(self, mode: str) -> None:
        self.uncorrected_spin.setEnabled(mode == CORRECTED)

    def _on_stop_mode(self, mode: str) -> None:
        self.iterations_spin.setVisible(mode == "iterations")
        self.minutes_spin.setVisible(mode == "minutes")

    # ------------------------------------------------------------ hand-over
    def segment_with_new_weights(self):
        """Select the new weights in the Segment dock (opening it) and run it."""
        if self._last_weights is None:
            return None
        seg = self.session.open_dock("segment")
        seg.refresh_weights()
        seg.select_weights(self._last_weights)
        image = self._pairs[0].image_layer if self._pairs else self.image_combo.currentData()
        if image is not None:
            seg.set_image_layer(image)
        return seg.run()

