"""The training run of the "Fine-tune model" dock (:class:`FinetuneRunMixin`, mixed into
:class:`~napari_vnet._widgets.finetune.FinetuneWidget`).

Train starts :func:`~napari_vnet.workflows.finetune.training_job` (the training
child process) in a napari thread worker; its events update the loss / val-Dice curve,
the progress bar and the time-left estimate on the GUI thread, at most every
:data:`PROGRESS_REFRESH_MS`. The saved weights go to the recent-weights list and are
selected in the "Segment volume" dock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_vnet._widgets._finetune_pairs import (
    CORRECTED,
    EDITED,
    WHOLE,
    _count_file_annotated,
    notify,
)
from napari_vnet.training.events import TrainingStep, TrainingSummary
from napari_vnet.workflows.finetune import is_base_weights, training_job
from napari_vnet.workflows.options import format_seconds, parse_class_names, parse_patch

if TYPE_CHECKING:
    import napari
    from qtpy.QtCore import QTimer, Signal
    from qtpy.QtWidgets import (
        QComboBox,
        QDoubleSpinBox,
        QLabel,
        QLineEdit,
        QProgressBar,
        QPushButton,
        QRadioButton,
        QSpinBox,
    )

    from napari_vnet._widgets._losscurve import LossCurve
    from napari_vnet._widgets._session import Session

logger = logging.getLogger("napari_vnet._widgets.finetune")

# Progress (text, bar, curve) is shown at most this often, all in one repaint: under a
# software OpenGL stack every repaint of the window costs tens of ms of the GUI thread
PROGRESS_REFRESH_MS = 1000


def kept_weights_text(summary: TrainingSummary) -> str:
    """Which weights a run kept and why, in words ("kept the final weights: validation
    held only 312 voxels of spleen ...", "kept iteration 60: smoothed validation Dice
    0.712 (final 0.650)")."""
    selection = summary.selection or {}
    if selection.get("message"):
        return str(selection["message"])
    best, it = summary.val_dice, summary.best_iteration
    return f"kept iteration {it}" + (f" (val Dice {best:.3f})" if isinstance(best, float) else "")


#: what a run learnt from, by the dock's "Train on" (when the run says nothing finer)
TRAINED_ON = {
    CORRECTED: "trained on what you corrected or reviewed",
    EDITED: "trained on the edited / reviewed slices whole",
    WHOLE: "trained on every voxel",
}


class FinetuneRunMixin:
    """Train / Cancel and the progress of a running training."""

    # what FinetuneWidget owns and this half uses (set in its __init__ and _build_ui)
    # --- the viewer, the session and the run's state
    viewer: napari.Viewer
    session: Session  # publishes the new weights to the Segment dock
    _worker: Any  # the running training's thread worker, None when idle
    _stop: threading.Event  # set: stop at the next step (Cancel, dock closed)
    _t0: float  # perf_counter() when Train was pressed
    _budget: float | None  # the time budget in seconds ("Stop after" minutes)
    _last_weights: Path | None  # the weights the last run saved
    _pending_event: TrainingStep | None  # the newest event not shown yet
    _progress_timer: QTimer  # paces the progress display (PROGRESS_REFRESH_MS)
    # --- model and training settings
    from_base_radio: QRadioButton  # "Start from weights" (else "New model")
    width_spin: QSpinBox  # New model's base width (0: planned)
    class_names_edit: QLineEdit  # "3=kidney, 4=spleen"
    voxels_combo: QComboBox  # which voxels count: EDITED, CORRECTED or WHOLE
    stop_combo: QComboBox  # "iterations" or "minutes"
    iterations_spin: QSpinBox
    minutes_spin: QDoubleSpinBox
    lr_spin: QDoubleSpinBox  # 0: auto
    uncorrected_spin: QDoubleSpinBox  # weight of the labels left as predicted on edited slices
    patch_edit: QLineEdit  # "z,y,x" or one number; empty: auto
    batch_spin: QSpinBox
    val_spin: QSpinBox  # validation percent (0: off)
    device_combo: QComboBox  # its data: "auto", "cpu", "cuda:0", ...
    out_edit: QLineEdit  # where the new weights go
    # --- actions and progress
    train_btn: QPushButton
    cancel_btn: QPushButton
    segment_btn: QPushButton  # "Segment with new weights"
    progress: QProgressBar
    status_label: QLabel
    curve: LossCurve  # loss / val Dice per iteration
    weights_saved: Signal  # emitted with the path of the saved weights
    # --- methods of the widget and its other halves
    base_weights: Callable[[], Path | None]
    current_arch: Callable[[], str]
    refresh_base_weights: Callable[[], None]
    _training_specs: Callable[..., list[dict]]  # FinetunePairsMixin
    _train_on: str | None = None  # the "Train on" choice of the last run started

    def training_config(self, n_annotated: int | None = None):
        """A TrainConfig from the dock's settings, its "Class names" included (the classes
        themselves are settled by the training plan, in the worker)."""
        from napari_vnet.training import TrainConfig, width_kwargs

        by_minutes = self.stop_combo.currentText() == "minutes"
        val = self.val_spin.value() / 100.0
        if n_annotated is not None and n_annotated < 5:
            val = 0.0  # too few slices to hold any out
        text = self.patch_edit.text().strip()
        new = not self.from_base_radio.isChecked()
        arch = self.current_arch()
        eval_pace = {}
        if by_minutes:  # about 8 validation points on the curve, 15-60 s apart
            eval_pace["eval_seconds"] = min(60.0, max(15.0, 60.0 * self.minutes_spin.value() / 8))
        return TrainConfig(
            arch=arch if new else None,
            arch_kwargs=(
                width_kwargs(arch, self.width_spin.value())
                if new and self.width_spin.value()
                else {}
            ),
            iterations=None if by_minutes else self.iterations_spin.value(),
            minutes=self.minutes_spin.value() if by_minutes else None,
            lr=self.lr_spin.value() or None,
            patch_size=parse_patch(text) if text else None,
            batch_size=self.batch_spin.value(),
            device=self.device_combo.currentData() or "auto",
            val_fraction=val,
            class_names=parse_class_names(self.class_names_edit.text()) or None,
            uncorrected_weight=self.uncorrected_weight(),
            **eval_pace,
        )

    def uncorrected_weight(self) -> float:
        """The loss weight of labels left as predicted on edited slices: the dock's
        setting with "what I corrected", 1 with the edited slices whole."""
        if self.voxels_combo.currentText() == CORRECTED:
            return float(self.uncorrected_spin.value())
        return 1.0

    def train(self):
        """Start fine-tuning in a thread worker and return it (None if refused)."""
        from napari.qt.threading import thread_worker

        if self._worker is not None:
            notify("warning", "Training is already running.")
            return None
        try:
            mode = self.voxels_combo.currentText()
            specs = self._training_specs(mode in (EDITED, CORRECTED), regions=mode == CORRECTED)
            self._train_on = mode
            counts = [
                _count_file_annotated(s["annotated"]) for s in specs if s["annotated"] is not None
            ]
            config = self.training_config(min(counts) if counts else None)
            base = self.base_weights() if self.from_base_radio.isChecked() else None
            if self.from_base_radio.isChecked() and base is None:
                raise ValueError("No base weights: choose weights, or pick 'New model'.")
            out = Path(self.out_edit.text().strip()).expanduser()
            if not self.out_edit.text().strip():
                raise ValueError("Choose where to save the fine-tuned weights.")
            if is_base_weights(out, base):
                raise ValueError(f"{out} is the base weights file; it is never overwritten.")
            out.parent.mkdir(parents=True, exist_ok=True)
        except (ValueError, OSError) as exc:
            notify("error", str(exc))
            return None

        self._stop.clear()
        self.curve.clear()
        self.curve.show()
        self._set_progress(0)
        self.status_label.setText("Starting the training process, preparing the data...")
        self.train_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self._t0 = time.perf_counter()
        self._budget = 60.0 * config.minutes if config.minutes else None
        worker = thread_worker(training_job, start_thread=False, ignore_errors=True)(
            specs, config, base, out, self._stop
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

    def _on_event(self, ev: TrainingStep) -> None:
        """A training event: stored now, shown at most every PROGRESS_REFRESH_MS."""
        self.curve.add_point(ev.iteration, ev.loss, ev.val_dice)
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
        it, total = ev.iteration, ev.total
        elapsed = float(ev.seconds)
        left = None
        if total and 0 < it <= int(total):
            self._set_progress(int(100 * it / int(total)))
            left = elapsed / it * (int(total) - it)
        budget = self._budget
        if budget:
            left = min(left, budget - elapsed) if left is not None else budget - elapsed
            self._set_progress(int(100 * min(1.0, elapsed / budget)))
        text = f"iteration {it}" + (f"/{total}" if total and not budget else "")
        if ev.loss is not None:
            text += f" · loss {float(ev.loss):.4f}"
        if self.curve.val_dice:
            text += f" · val Dice {self.curve.val_dice[-1]:.3f}"
        if left is not None:
            text += f" · {format_seconds(left)} left"
        if not self._stop.is_set():  # else keep "Cancelling..."
            self.status_label.setText(text)

    def _on_done(self, summary: TrainingSummary) -> None:
        self._show_pending_progress()
        out, cancelled = summary.out, summary.cancelled
        if out is None or not Path(out).exists():
            self.status_label.setText("Cancelled before a checkpoint was saved.")
            return
        out = Path(out)
        self._last_weights = out
        if not cancelled:
            self._set_progress(100)
        verb = "Cancelled; saved" if cancelled else "Saved"
        text = f"{verb} {out.name}: {kept_weights_text(summary)}."
        note = summary.voxels["message"] if summary.voxels else TRAINED_ON.get(self._train_on)
        if note:  # which voxels it learnt from, at which weight
            text += f" {note[0].upper()}{note[1:]}."
        self.status_label.setText(text)
        self.status_label.setToolTip(text)
        self._publish_weights(out)

    def _publish_weights(self, out: Path) -> None:
        """Recent list + select in the Segment dock, then tell listeners."""
        self.session.publish_weights(out)
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
        notify("error", f"Training failed: {exc}")

    def _on_finished(self) -> None:
        self._progress_timer.stop()
        self._pending_event = None
        self._worker = None
        self.train_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)
        self.curve.redraw()
