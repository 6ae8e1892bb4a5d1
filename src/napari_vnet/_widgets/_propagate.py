"""The "Propagate corrections" panel of the Correct dock: adapt the model, re-predict the rest.

The panel (:class:`PropagatePanel`) fine-tunes the weights that made the Labels layer
(``metadata["napari_vnet"]["weights"]``, written by the Segment dock) on the voxels the
user corrected, in the training child process as the Fine-tune dock does, then writes the
adapted model's prediction into the voxels the user has not touched: one napari undo
step. The core is :mod:`napari_vnet.workflows.propagate` (no Qt). Voxels edited while the
job runs are kept too. The re-predicted voxels are not the user's edits: the edit
trackers leave them out of the record (:func:`~napari_vnet._widgets._edits.not_user_edits`).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import (
    QGridLayout,
    QGroupBox,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
)

from napari_vnet._widgets import _edits
from napari_vnet.training import annotations
from napari_vnet.workflows import propagate as core

if TYPE_CHECKING:
    from napari_vnet._widgets.correct import CorrectWidget

log = logging.getLogger(__name__)

#: share of the progress bar the fine-tune takes (the prediction the rest)
ADAPT_SHARE = 80


def propagate_worker_job(*args: Any, stop: threading.Event):
    """Generator for a napari thread worker: :func:`~napari_vnet.workflows.propagate.child_job`
    in a child process (in this thread when none can be started, or with
    ``NAPARI_VNET_TRAIN_IN_THREAD=1``); yields its progress, returns its result."""
    gen = None
    if os.environ.get("NAPARI_VNET_TRAIN_IN_THREAD", "") in ("", "0"):
        from napari_vnet.workflows.child_process import run_in_child

        try:
            gen = run_in_child(f"{core.__name__}:child_job", *args, stop=stop)
        except OSError as exc:  # e.g. a frozen app without a Python to start
            log.warning("cannot start a training process (%s); propagating in a thread", exc)
    if gen is None:
        gen = core.propagate_job(*args, should_stop=stop.is_set)
    return (yield from gen)


def run_record(layer) -> dict[str, Any]:
    """The Segment dock's record of the run that made ``layer`` (empty when none)."""
    return dict((layer.metadata or {}).get("napari_vnet") or {})


class PropagatePanel(QGroupBox):
    """Propagate / Cancel, the fine-tune iterations, a progress bar and a note saying
    why the button is disabled (no Labels layer, no corrected slice, no weights...)."""

    def __init__(self, dock: CorrectWidget):
        super().__init__("Propagate corrections")
        self.dock = dock
        self.button = QPushButton("Propagate corrections")
        self.button.setToolTip(
            "Fine-tune the model on the slices you corrected, then re-predict every voxel "
            "you have not touched (one undo step)"
        )
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.iterations = QSpinBox()
        self.iterations.setRange(1, 10000)
        self.iterations.setValue(core.ITERATIONS)
        self.iterations.setPrefix("Fine-tune iterations: ")
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.hint = QLabel()  # why the button is disabled, or what it will learn from
        self.hint.setWordWrap(True)
        self.note = QLabel()  # the run's progress and outcome
        self.note.setWordWrap(True)
        grid = QGridLayout(self)
        grid.addWidget(self.button, 0, 0)
        grid.addWidget(self.cancel_button, 0, 1)
        grid.addWidget(self.iterations, 1, 0, 1, 2)
        grid.addWidget(self.progress, 2, 0, 1, 2)
        grid.addWidget(self.hint, 3, 0, 1, 2)
        grid.addWidget(self.note, 4, 0, 1, 2)
        self._worker = None
        self._stop = threading.Event()
        self._ctx: dict[str, Any] | None = None
        self._tracker: _edits.EditTracker | None = None
        self._layer = None
        self.button.clicked.connect(self._on_click)
        self.cancel_button.clicked.connect(self.cancel)
        dock.labels.changed.connect(self._on_labels_changed)
        dock.image.changed.connect(self.refresh)
        self._on_labels_changed()

    # ------------------------------------------------------------------ state
    def _on_labels_changed(self, _=None) -> None:
        if self._tracker is not None:
            self._tracker.disconnect_layer()
            self._tracker = None
        if self._layer is not None:
            self._layer.events.metadata.disconnect(self.refresh)
        layer = self._layer = self.dock.labels.value
        if layer is not None:  # the record follows the brush also with no other dock open
            self._tracker = _edits.EditTracker(layer, self)
            layer.events.metadata.connect(self.refresh)
        self.refresh()

    def reason(self) -> str | None:
        """Why Propagate cannot run now (None: it can)."""
        layer = self.dock.labels.value
        if self._worker is not None:
            return "Propagating..."
        if layer is None:
            return "Choose a Labels layer to correct."
        if not annotations.records(layer.metadata):
            return "Correct a slice first (brush or a tool): Propagate learns from your edits."
        if not run_record(layer).get("weights"):
            return f"'{layer.name}' was not made by Segment volume: no weights to adapt."
        if self.dock.image.value is None:
            return "Choose the image the labels belong to."
        return None

    def refresh(self, _=None) -> None:
        why = self.reason()
        self.button.setEnabled(why is None)
        self.button.setToolTip(why or "Fine-tune on your corrections, re-predict the rest")
        layer = self.dock.labels.value
        n = 0 if layer is None else annotations.count_annotated(layer.metadata)
        self.hint.setText(why or f"{n} corrected slice(s) to learn from.")

    # ------------------------------------------------------------------ run
    def _on_click(self, _checked=False) -> None:
        from napari.utils.notifications import show_error

        try:
            self.start()
        except ValueError as exc:
            show_error(f"Propagate: {exc}")

    def start(self):
        """Start the fine-tune + prediction in a thread worker; returns it."""
        from napari.qt.threading import thread_worker

        why = self.reason()
        if why is not None:
            raise ValueError(why)
        layer = self.dock.labels.value
        image = self.dock._image_array()
        record = run_record(layer)
        settings = dict(record.get("settings") or {})
        spacing = settings.get("spacing") or self.dock._spacing()
        snapshot = np.array(layer.data, copy=True)
        kept = core.kept_mask(snapshot, layer.metadata.get(annotations.KEY))
        weights = str(record["weights"])
        if not Path(weights).exists():
            from napari_vnet.weights import resolve_weights

            weights = str(resolve_weights(weights))  # a shipped name, or an error
        config = core.propagate_config(
            int(self.iterations.value()), device=settings.get("device") or "auto"
        )
        self._ctx = {"layer": layer, "snapshot": snapshot}
        self._stop.clear()
        worker = thread_worker(propagate_worker_job, start_thread=False, ignore_errors=True)(
            image, snapshot, kept, tuple(float(s) for s in spacing), weights, config,
            settings, stop=self._stop,
        )  # fmt: skip
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(self._on_done)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.progress.setValue(0)
        self.note.setText(f"Adapting {Path(weights).name} to this scan...")
        self.cancel_button.setEnabled(True)
        self.refresh()
        worker.start()
        return worker

    def cancel(self, _checked=False) -> None:
        """Stop at the next step; the labels stay as they are."""
        if self._worker is not None:
            self._stop.set()
            self.note.setText("Cancelling...")

    def _on_progress(self, ev: core.PropagateProgress) -> None:
        frac = ev.done / max(ev.total, 1)
        if ev.stage == "adapt":
            value, text = int(ADAPT_SHARE * frac), f"fine-tune {ev.done}/{ev.total}"
            if ev.loss is not None:
                text += f" · loss {ev.loss:.3f}"
        else:
            value = ADAPT_SHARE + int((100 - ADAPT_SHARE) * frac)
            text = f"re-predicting {ev.done}/{ev.total} windows"
        self.progress.setValue(value)
        if not self._stop.is_set():
            self.note.setText(f"{text} · {ev.seconds:.0f} s")

    def _on_done(self, result: core.PropagateResult) -> None:
        if result.cancelled or result.prediction is None:
            self.note.setText("Cancelled: the labels are unchanged.")
            return
        n = self.apply(result.prediction)
        if n is not None:
            self.progress.setValue(100)
            self.note.setText(
                f"Propagated: {n} voxels re-predicted after {result.iterations} fine-tune "
                f"iterations ({result.seconds:.0f} s); your edits are kept. Ctrl-Z undoes it."
            )

    def apply(self, prediction: np.ndarray) -> int | None:
        """Write ``prediction`` into the voxels the user has not touched (also not while
        the job ran) as one undo step; the number of voxels changed, None if refused."""
        ctx, self._ctx = self._ctx or {}, None
        layer, snapshot = ctx.get("layer"), ctx.get("snapshot")
        if layer is None or tuple(layer.data.shape) != tuple(prediction.shape):
            self.note.setText("The labels changed shape while propagating: nothing written.")
            return None
        data = np.asarray(layer.data)
        kept = core.kept_mask(data, layer.metadata.get(annotations.KEY)) | (data != snapshot)
        change = core.merge(data, prediction, kept)
        if change.size:
            with _edits.not_user_edits(layer), layer.block_history():
                layer.data_setitem(change.indices, change.values)
        return change.size

    def _on_error(self, exc: Exception) -> None:
        from napari.utils.notifications import show_error

        log.error("propagate failed", exc_info=exc)
        self.note.setText(f"Propagate failed: {exc}")
        show_error(f"Propagate failed: {exc}")

    def _on_finished(self) -> None:
        self._worker = None
        self._ctx = None
        self.cancel_button.setEnabled(False)
        self.refresh()
