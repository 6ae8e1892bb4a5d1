"""The "Segment volume" dock: pick an image and a model, run inference, get a Labels layer.

Layout (top to bottom): image layer picker; the model section (architecture, weights
chooser with a file dialog, the model card; :mod:`._weights_panel`); run settings
(device, overlap, batch size, mixed precision, test-time augmentation, post-processing);
Run/Cancel; progress with elapsed and remaining time.

Run starts a napari generator ``thread_worker`` over :class:`._segment_job.SegmentJob`
(which runs :func:`napari_vnet.workflows.segment.segment_request` off the GUI thread with
fewer torch threads than cores). Only the GUI thread touches the viewer: the result is added as a new
Labels layer (:mod:`._result_layer`) by the ``returned`` handler, so a cancelled or failed
run leaves every layer as it was.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import ComboBox, Container, ProgressBar
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QGroupBox,
    QLabel,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from napari_vnet._widgets import _result_layer
from napari_vnet._widgets._compact import Collapsible
from napari_vnet._widgets._segment_inputs import (
    is_image,
    is_volume,
    layer_issues,
    layer_spacing,
    looks_like_ct,
    refusal,
)
from napari_vnet._widgets._segment_job import SegmentJob
from napari_vnet._widgets._segment_settings import RunSettings, available_devices
from napari_vnet._widgets._session import join_session
from napari_vnet._widgets._weights_panel import WeightsPanel, arch_name
from napari_vnet.workflows.input_check import demo_note
from napari_vnet.workflows.options import format_seconds
from napari_vnet.workflows.segment import (
    JobCancelled,
    JobDone,
    JobFailed,
    Message,
    Progress,
    RunRequest,
    recommended_settings,
    result_info,
)

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)


class SegmentWidget(QWidget):
    """Dock widget "Segment volume" (see the module docstring).

    Public API (used by the other docks and the tests): :meth:`select_weights`,
    :meth:`refresh_weights`, :attr:`current_weights`, :meth:`set_image_layer`,
    :meth:`run`, :meth:`cancel`, and the Qt signal ``prediction_added(layer)``.
    """

    prediction_added = Signal(object)

    #: also report progress in napari's activity dock (``napari.utils.progress``). Off by
    #: default: its status-bar indicator animates all the time, and each frame
    #: re-composites the whole window with the GL canvas, which with software OpenGL
    #: (Xvfb, remote desktops) costs ~20-70 ms per frame and made the GUI stutter
    #: (benchmarks/gui_responsiveness.py: p50 tick gap 32 ms with it, 10 ms without).
    show_in_activity_dock = False

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = join_session(napari_viewer, "segment", self)
        self.worker = None
        self._job: SegmentJob | None = None
        self._run_ctx: dict[str, Any] = {}
        self._pbar = None  # napari.utils.progress while running
        self._progress = (0, 0)
        self._t0 = 0.0
        self._last_status = ""
        #: which image (layer, data, name) the status line speaks of; None: no image
        self._status_for: tuple | None = None
        self._pending_run = False
        self._defaults_from: Path | None = None
        # the running job, reachable without ``self`` so that it can be stopped when the
        # dock (or the whole window) is destroyed mid-run
        self._jobs: list[SegmentJob] = []
        self.destroyed.connect(functools.partial(_stop_jobs, self._jobs))

        self._build_inputs()
        self._build_settings()
        self._build_run()
        self._lay_out()
        self._connect()
        self._on_model_changed()
        self._on_layers_changed()

    # ================================================================ UI
    def _build_inputs(self) -> None:
        """The image picker and the model section, each with its note."""
        self.image = ComboBox(
            label="Image",
            choices=self._image_choices,
            nullable=True,
            tooltip="3D image layer to segment",
        )
        self.image_note = QLabel()
        self.image_note.setWordWrap(True)
        self.image_note.setStyleSheet("color: #e0a03d")
        self.image_note.hide()

        self.model = WeightsPanel(self)
        # model/image mismatch warnings and the demo-model note, shown before Run
        self.check_note = QLabel()
        self.check_note.setObjectName("napari_vnet_check_note")
        self.check_note.setWordWrap(True)
        self.check_note.setStyleSheet("color: #e0a03d")
        self.check_note.hide()
        self._check_key: tuple = ()
        self._issues: list = []

    def _build_settings(self) -> None:
        """Device, overlap, batch, precision, TTA, uncertainty, post-processing."""
        st = self._settings = RunSettings(available_devices())
        self.device, self.overlap, self.batch_size, self.amp = (
            st.device, st.overlap, st.batch_size, st.amp
        )  # fmt: skip
        self.tta, self.uncertainty, self.post = st.tta, st.uncertainty, st.post

    def _build_run(self) -> None:
        """Run, "replace the previous result", progress and status."""
        self.run_button = QPushButton("Run")
        self.run_button.setObjectName("napari_vnet_run")
        self.run_button.clicked.connect(self._on_run_clicked)
        self.replace_check = QCheckBox("Replace this model's unedited previous result")
        self.replace_check.setChecked(True)
        self.replace_check.setToolTip(
            "Put a new result of the same model and image into its previous, unedited "
            "result layer instead of adding another layer (a corrected layer is kept)"
        )
        # always shown (toggling it re-lays out the dock: a costly repaint at run start)
        self.progress_bar = ProgressBar(value=0, min=0, max=1)
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self._clock = QTimer(self)
        self._clock.setInterval(1000)
        self._clock.timeout.connect(self._update_times)

    def _lay_out(self) -> None:
        layout = QVBoxLayout(self)
        top = Container(widgets=[self.image])
        top.margins = (0, 0, 0, 0)
        layout.addWidget(top.native)
        layout.addWidget(self.image_note)
        layout.addWidget(self._group("Model", self.model))
        layout.addWidget(self.check_note)
        # device, overlap, batch, precision, TTA, post-processing: closed by default
        self.settings_group = Collapsible("Settings", self._settings.native)
        layout.addWidget(self.settings_group)
        layout.addWidget(self.replace_check)
        layout.addStretch(1)
        # Run, progress and status: pinned below the scroll area when docked
        self.footer = QWidget()
        pinned = QVBoxLayout(self.footer)
        for w in (self.run_button, self.progress_bar.native, self.status):
            pinned.addWidget(w)
        layout.addWidget(self.footer)

    def _connect(self) -> None:
        """Follow the image choice, the model choice and the viewer's layers."""
        self.image.changed.connect(self._follow_image)
        self.image.changed.connect(self._update_state)
        self.model.changed.connect(self._on_model_changed)
        events = self.viewer.layers.events
        events.inserted.connect(self._on_layers_changed)
        events.removed.connect(self._on_layers_changed)
        events.reordered.connect(self._on_layers_changed)
        for layer in self.viewer.layers:
            layer.events.name.connect(self._on_layers_changed)

    @staticmethod
    def _group(title: str, widget: QWidget) -> QGroupBox:
        box = QGroupBox(title)
        inner = QVBoxLayout(box)
        inner.setContentsMargins(4, 4, 4, 4)
        inner.addWidget(widget)
        return box

    # ================================================================ public API
    @property
    def current_weights(self) -> Path | None:
        return self.model.current_weights

    @property
    def image_layer(self):
        return self.image.value

    @property
    def is_running(self) -> bool:
        return self._job is not None

    def select_weights(self, path_or_name: str | os.PathLike) -> bool:
        """Choose weights (shipped name or file) and show their card; False if refused
        (an error notification says why)."""
        return self.model.try_select(path_or_name)

    def refresh_weights(self) -> None:
        """Re-list the shipped and recently used weights."""
        self.model.refresh()

    def set_image_layer(self, layer) -> bool:
        """Choose the image to segment; a non-3D layer is refused with a warning."""
        from napari.utils.notifications import show_warning

        if not is_volume(layer):
            show_warning(self._refusal(layer))
            return False
        self.image.reset_choices()
        self.image.value = layer
        return True

    def run(self):
        """Start segmenting in a generator thread worker and return it.

        Returns None when refused (an error notification says why), or when a cancelled
        run is still stopping (this run then starts as soon as it has stopped). While a
        run is going on, returns that run's worker.

        While running, the Run button is Cancel. The new Labels layer is added (and
        ``prediction_added`` emitted) when the worker returns.
        """
        from napari.qt.threading import thread_worker
        from napari.utils.notifications import show_error

        if self.worker is not None:
            if self._job is not None and self._job.should_stop():
                # the previous run is cancelling: start this one as soon as it has ended
                self._pending_run = True
                self.status.setText("Will run again when the cancelled run has stopped…")
                return None
            return self.worker
        problem = self._problem()
        if problem is not None:
            show_error(problem)
            return None
        layer = self.image.value
        settings = self.settings()
        request = RunRequest(
            image=layer.data[0] if layer.multiscale else layer.data,
            image_name=layer.name,
            spacing=layer_spacing(layer),
            weights=self.model.current_weights,
            arch=self.model.current_arch,
            settings=self._job_settings(layer, settings),
            **self.model.fold_choice(),
        )
        self._job = job = SegmentJob(request)
        self._jobs.append(job)
        self._run_ctx = {
            "layer": layer,
            "geometry": _result_layer.geometry_kwargs(layer),
            "data": layer.data,
            "weights": request.weights,
            "arch": request.arch,
            "settings": dict(settings),  # the user's: the uncertainty layer only if asked
            "spacing": request.spacing,
        }
        worker = thread_worker(job.events, start_thread=False)()
        job.also_stop_when(lambda: worker.abort_requested)
        worker.yielded.connect(self._on_event)
        worker.returned.connect(self._on_outcome)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._set_running(True)
        worker.start()
        return worker

    def _job_settings(self, layer, settings: dict[str, Any]) -> dict[str, Any]:
        """``settings``, with the uncertainty map when the Scans dock scores this image
        (its "Uncertainty" column; the layer is shown only when the user asked for it)."""
        scans = self.session.scans
        if scans is not None and scans.scores_image(layer):
            return {**settings, "return_uncertainty": True}
        return settings

    def cancel(self) -> None:
        """Stop the running segmentation at its next batch; no layer is added."""
        if self._job is None:
            return
        self._job.stop()
        self.run_button.setText("Cancelling…")
        self.run_button.setEnabled(False)
        self.status.setText("Cancelling after the current batch…")

    def settings(self) -> dict[str, Any]:
        """The run settings as :func:`napari_vnet.inference.predict` keyword arguments."""
        return self._settings.values()

    # ================================================================ state
    def _image_choices(self, _widget=None) -> list[tuple[str, Any]]:
        return [(layer.name, layer) for layer in self.viewer.layers if is_volume(layer)]

    def _on_layers_changed(self, event=None) -> None:
        if event is not None and getattr(event, "type", "") == "inserted":
            event.value.events.name.connect(self._on_layers_changed)
        self.image.reset_choices()
        if self.image.value is None:
            volumes = self._image_choices()
            if volumes:  # the top-most volume
                self.image.value = volumes[-1][1]
        self._update_state()

    def _refusal(self, layer) -> str:
        return refusal(layer)

    def _on_model_changed(self) -> None:
        card = self.model.card
        weights = self.model.current_weights
        if card is not None and weights != self._defaults_from:
            self._apply_card_defaults(card)  # only when other weights are chosen
        self._defaults_from = weights
        self._update_state()

    def _apply_card_defaults(self, card) -> None:
        """Settings a card may recommend under ``history["inference"]``; else the defaults."""
        self._settings.apply(recommended_settings(card, self._settings.device.value))

    def _problem(self) -> str | None:
        if self.image.value is None:
            others = [lyr for lyr in self.viewer.layers if is_image(lyr)]
            if others:
                return self._refusal(others[0])
            return "Open a 3D image first (File ▸ Open, or File ▸ Open Sample ▸ napari-vnet)."
        if self.image.value not in self.viewer.layers:
            return f"The image layer '{self.image.value.name}' was removed; choose another."
        if self.model.problem:
            return self.model.problem
        refusals = [i.text for i in self._input_issues() if i.refuses]
        return refusals[0] if refusals else None

    def _input_issues(self) -> list:
        """Mismatches between the chosen image and the model card (cached per pair)."""
        layer, card = self.image.value, self.model.card
        if layer is None or card is None:
            return []
        key = (id(layer), id(layer.data), self.model.current_weights)
        if key != self._check_key:
            self._issues = layer_issues(layer, card)
            self._check_key = key
        return self._issues

    def _show_checks(self) -> None:
        card = self.model.card
        lines = [f"⚠ {i.text}" for i in self._input_issues() if not i.refuses]
        note = demo_note(card) if card is not None else None
        if note:
            lines.append(f"Note: {note}")
        self.check_note.setText("\n".join(lines))
        self.check_note.setVisible(bool(lines))

    def _follow_image(self, _=None) -> None:
        """While the weights are the dock's own default, a CT in Hounsfield units gets
        the real-CT starter and the synthetic phantom (the demo, the sample) its model."""
        layer = self.image.value
        if layer is None or self.is_running:
            return
        ct = looks_like_ct(layer)
        if ct is None:  # an unreadable layer keeps the current choice
            return
        self.model.prefer_for_image(ct, phantom=bool(layer.metadata.get("synthetic_phantom")))

    def _image_key(self) -> tuple | None:
        layer = self.image.value
        return None if layer is None else (id(layer), id(layer.data), layer.name)

    def _status_follows_image(self) -> None:
        """The status line speaks of the image now chosen: after the Scans dock moved to
        the next scan (same layer, new data and name) the last run's line would name the
        previous scan."""
        layer = self.image.value
        if layer is None or self._status_for in (None, self._image_key()):
            return
        self.status.setText(f"Image '{layer.name}': not segmented in this dock yet; press Run.")
        self._status_for = self._image_key()

    def _update_state(self, _=None) -> None:
        if self.is_running:
            return
        self._status_follows_image()
        problem = self._problem()
        self._show_checks()
        self.run_button.setEnabled(problem is None)
        self.run_button.setToolTip(problem or "Segment the chosen image with these weights")
        if self.image.value is None and problem is not None:
            self.image_note.setText(problem)
            self.image_note.show()
        else:
            self.image_note.hide()

    # ================================================================ running
    def _on_run_clicked(self) -> None:
        if self.is_running:
            self.cancel()
        else:
            self.run()

    def _set_running(self, running: bool) -> None:
        self.image.enabled = not running
        self.model.setEnabled(not running)
        self._settings.enabled = not running
        if running:
            self._t0 = time.perf_counter()
            self._progress = (0, 0)
            self.run_button.setText("Cancel")
            self.run_button.setEnabled(True)
            self.run_button.setToolTip("Stop after the current batch; no layer is added")
            # no busy (animated) mode: every repaint re-composites the GL canvas window
            self.progress_bar.max = 1
            self.progress_bar.value = 0
            self.status.setText("Starting…")
            self._clock.start()
        else:
            self._clock.stop()
            self.run_button.setText("Run")
            if self._pbar is not None:
                self._pbar.close()
                self._pbar = None
            self._update_state()

    def _on_event(self, item) -> None:
        if isinstance(item, Progress):
            self._progress = (item.done, item.total)
            self.progress_bar.max = max(1, item.total)
            self.progress_bar.value = min(item.done, item.total)
            if self.show_in_activity_dock:
                self._update_napari_progress(item)
            self._update_times()
        elif isinstance(item, Message):
            if item.level == "warning":
                from napari.utils.notifications import show_warning

                show_warning(item.text)
            else:
                self.status.setText(item.text)

    def _update_napari_progress(self, item: Progress) -> None:
        try:
            from napari.utils import progress

            if self._pbar is None:
                name = self._run_ctx["layer"].name
                self._pbar = progress(total=item.total, desc=f"Segmenting {name}")
            self._pbar.update(item.done - self._pbar.n)
        except Exception as exc:  # the activity dock is a nicety, never a failure
            log.debug("napari progress unavailable: %s", exc)

    def _update_times(self) -> None:
        if not self.is_running or self._job is None or self._job.should_stop():
            return
        elapsed = time.perf_counter() - self._t0
        done, total = self._progress
        text = f"Elapsed {format_seconds(elapsed)}"
        if total:
            text += f" · window {done}/{total}"
            if done:
                text += f" · ≈ {format_seconds(elapsed * (total - done) / done)} left"
        self.status.setText(text)

    def _on_outcome(self, outcome) -> None:
        from napari.utils.notifications import show_error, show_info

        if isinstance(outcome, JobDone):
            layer = self._add_result(outcome)
            if layer is None:
                show_info("The image changed while it was segmented; the result was dropped.")
                self._last_status = "Result dropped: the image changed during the run."
                return
            how = "updated layer" if self._last_status.startswith("Updated") else "new layer"
            # the dock's status line and the viewer's status bar, no notification toast
            # (building one costs ~50-100 ms of GUI time with software OpenGL, at the
            # moment the big result layer is being shown)
            text = (
                f"Segmented '{self._run_ctx['layer'].name}' in {outcome.seconds:.1f} s "
                f"on {outcome.device}: {how} '{layer.name}'."
            )
            self._last_status = text
            self.viewer.status = text
            log.info("%s", text)
        elif isinstance(outcome, JobCancelled):
            show_info("Segmentation cancelled; no layer was added or changed.")
            self._last_status = "Cancelled."
        elif isinstance(outcome, JobFailed):
            show_error(outcome.message)
            self._last_status = "Failed: see the notification."

    def _add_result(self, outcome: JobDone):
        """Add (or, when chosen, update) the result layer; None when the image layer now
        shows other data (e.g. the Scans dock moved to another scan during the run)."""
        ctx = self._run_ctx
        image_layer = ctx["layer"]
        card = outcome.card
        if image_layer.data is not ctx.get("data", image_layer.data):
            return None
        info = result_info(card, arch_name(card.arch), ctx["weights"], ctx["settings"],
                           ctx["spacing"], outcome)  # fmt: skip
        layer, updated = _result_layer.place_result(
            self.viewer, image_layer, outcome.labels, card, info, ctx["geometry"],
            model_name=arch_name(card.arch), replace=self.replace_check.isChecked(),
        )  # fmt: skip
        if updated:
            self._last_status = f"Updated '{layer.name}' in {outcome.seconds:.1f} s."
        else:
            self._last_status = f"Done in {outcome.seconds:.1f} s: '{layer.name}'."
        self._show_uncertainty(layer, outcome)
        self.prediction_added.emit(layer)
        return layer

    def _show_uncertainty(self, layer, outcome: JobDone) -> None:
        if not self._run_ctx["settings"].get("return_uncertainty"):
            return
        from napari_vnet._widgets._uncertainty_layer import show_uncertainty

        if outcome.uncertainty is None:
            from napari.utils.notifications import show_info

            show_info("These weights' own post-processing gives no uncertainty map.")
            return
        show_uncertainty(self.viewer, layer, outcome.uncertainty, self._run_ctx["geometry"])

    def _on_finished(self) -> None:
        job = self._job
        if job is not None and job.alive:
            # aborted via worker.quit(): wait for predict's thread to see the flag
            QTimer.singleShot(100, self._on_finished)
            return
        self._job = None
        self._jobs.clear()
        self.worker = None
        self._set_running(False)
        self.status.setText(self._last_status)
        self._status_for = self._image_key()
        self._last_status = ""
        if self._pending_run:
            self._pending_run = False
            self.run()


def _stop_jobs(jobs: list[SegmentJob], *_args) -> None:
    for job in jobs:
        job.stop()
