"""The edits half of the "Scans" dock: which layers belong to the scan, which were
edited, and saving them (:class:`ScanEditsMixin`, mixed into
:class:`~napari_vnet._widgets.scans.ScansWidget`).

A Labels layer is *dirty* once painted (or its data replaced, e.g. by a new prediction).
Saving hands the layer's array to the
:class:`~napari_vnet._widgets._autosave.BackgroundSaver`: as it is when the layer is about
to get another scan's data or leave the viewer (``handoff``), else to be copied first in
the writer thread (numpy copies without the GIL). A stroke painted while that copy is
taken may be partly in that file; the layer is marked edited again by the stroke, so
the next save has all of it. When napari closes,
:meth:`ScanEditsMixin.save_now` writes synchronously.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
from qtpy.QtCore import QEventLoop
from qtpy.QtWidgets import QApplication

from napari_vnet._widgets._autosave import SaveJob
from napari_vnet._widgets._edits import EditTracker
from napari_vnet._widgets._scans_state import ScansDockFields
from napari_vnet._writer import layer_classes, layer_state
from napari_vnet.workflows.worklist import STATUSES

log = logging.getLogger(__name__)


class ScanEditsMixin(ScansDockFields):
    """Layer tracking and autosaving for the Scans dock (the widget's fields it uses:
    :class:`~._scans_state.ScansDockFields`)."""

    def _on_inserted(self, event) -> None:
        from napari.layers import Labels

        layer = event.value
        if self._restoring or self.current is None:
            return  # the layers of a scan being shown are registered by _show
        self._scan_layers.append(layer)
        if not isinstance(layer, Labels):
            return
        self._track(layer)
        self._dirty.add(id(layer))  # a new layer (e.g. a prediction) is not saved yet
        self._note_prediction(layer)

    def _note_prediction(self, layer) -> None:
        """A Labels layer holding a prediction of this scan's image moves it to 'predicted'."""
        record = layer.metadata.get("napari_vnet") or {}
        weights = record.get("weights")
        source = record.get("source_layer")
        image = self._image_layer
        if source and image is not None and source != image.name:
            weights = None  # a prediction of some other image: not this scan's
        if weights and self.current is not None and self.project is not None:
            score = record.get("uncertainty_score")
            self._mark(
                self.current.key, "predicted", entry=self.current, weights=weights,
                uncertainty=score if isinstance(score, int | float) else None,
            )  # fmt: skip

    def _status(self, key: str) -> str:
        """A scan's status, including changes still being written to the project."""
        ahead = self._status_ahead.get(key)
        return ahead if ahead is not None else self.project.status(key)

    def _mark(self, key: str, status: str, *, entry=None, weights=None, uncertainty=None) -> bool:
        """Move a scan's status (and its uncertainty score, when given) now (table,
        signal) and in its project file in the writer thread (the file is written with
        fsync: never on the GUI thread)."""
        project = self.project
        changed = STATUSES.index(status) > STATUSES.index(self._status(key))
        if changed:
            self._status_ahead[key] = status
        if uncertainty is not None:
            self._score_ahead[key] = float(uncertainty)

        def written(_result, key=key, project=project):
            ahead = self._status_ahead.get(key)
            if ahead is not None and project is self.project:
                if STATUSES.index(project.status(key)) >= STATUSES.index(ahead):
                    del self._status_ahead[key]
            if uncertainty is not None and project is self.project:
                if self._score_ahead.get(key) == uncertainty:  # on disk now (a newer
                    del self._score_ahead[key]  # score stays ahead)
            self._refresh_key(key)

        def write():
            return project.mark(
                key, status, entry=entry, weights=weights, uncertainty=uncertainty
            )

        self.saver.run(write, then=written)
        if changed:
            self.status_changed.emit(key, status)
        self._refresh_key(key)
        return changed

    def _track(self, layer) -> None:
        layer.events.paint.connect(self._on_paint)
        layer.events.data.connect(self._on_data)
        self._trackers[id(layer)] = EditTracker(layer, parent=self)

    def _untrack(self, layer) -> None:
        if not hasattr(layer.events, "paint"):
            return
        for emitter, slot in (
            (layer.events.paint, self._on_paint),
            (layer.events.data, self._on_data),
        ):
            try:
                emitter.disconnect(slot)
            except (TypeError, ValueError, RuntimeError):
                pass
        tracker = self._trackers.pop(id(layer), None)
        if tracker is not None:
            tracker.disconnect_layer()
            tracker.setParent(None)
            tracker.deleteLater()

    def _on_data(self, event) -> None:
        if self._restoring:
            return
        self._dirty.add(id(event.source))
        self._note_prediction(event.source)  # e.g. Segment replaced its previous result

    def _on_paint(self, event) -> None:
        self._dirty.add(id(event.source))
        if not self._timer.isActive():
            self._timer.start(self.autosave_spin.value() * 60_000)
        cur = self.current
        if cur is None or self.project is None:
            return
        if STATUSES.index(self._status(cur.key)) < STATUSES.index("corrected"):
            self._mark(cur.key, "corrected", entry=cur)

    def _on_removing(self, event) -> None:
        if self._closing:
            return
        try:
            layer = self.viewer.layers[event.index]
        except (IndexError, TypeError):
            return
        if not any(layer is lay for lay in self._scan_layers):
            return
        self._save_layers([layer], handoff=True)  # e.g. viewer.close() clears the layers
        self._untrack(layer)
        self._scan_layers.remove(layer)
        if layer is self._image_layer:
            self._image_layer = None

    def _snapshot(self, layer):
        """The layer's labels as a Volume on the scan's grid (the layer's own array)."""
        from napari_vnet.io import layer_to_volume

        data = np.asarray(layer.data)
        if self._geometry is not None and data.shape == self._scan_shape:
            return self._geometry.with_array(data)
        return layer_to_volume(
            data,
            scale=layer.scale,
            translate=layer.translate,
            affine=layer.affine.affine_matrix,
            metadata=layer.metadata,
        )

    def _save_jobs(self, layers, *, handoff: bool) -> list[SaveJob]:
        """Snapshots of the edited layers among ``layers`` (marked clean)."""
        cur, project = self.current, self.project
        if cur is None or project is None:
            return []
        jobs = []
        saved_names = set(project.record(cur.key)["labels"]) | set(self.saver.pending(cur.key))
        for layer in layers:
            if id(layer) not in self._dirty:
                continue
            self._dirty.discard(id(layer))
            weights = (layer.metadata.get("napari_vnet") or {}).get("weights")
            annotated = layer.metadata.get("annotated_slices")
            jobs.append(
                SaveJob(
                    project=project,
                    key=cur.key,
                    name=layer.name,
                    path=project.labels_path(cur.key, layer.name),
                    volume=self._snapshot(layer),
                    copy=not handoff,  # the layer keeps its array: the writer copies it
                    skip_if_empty=layer.name not in saved_names,  # a new, unpainted layer
                    annotated_slices=json.loads(json.dumps(annotated)) if annotated else None,
                    weights=str(weights) if weights else None,
                    entry=cur,
                    classes=layer_classes(layer_state(layer)),
                )
            )
        return jobs

    def _save_layers(self, layers, *, handoff: bool = False, wait: bool = False) -> list[Path]:
        jobs = self._save_jobs(layers, handoff=handoff)
        for job in jobs:
            self.saver.submit(job)
        if jobs:
            self.info_label.setText(f"Saving {len(jobs)} labels layer(s) of {jobs[0].name} …")
        if wait:
            self.saver.flush()
        return [job.path for job in jobs]

    def _scan_labels(self) -> list:
        from napari.layers import Labels

        return [
            lay
            for lay in self._scan_layers
            if isinstance(lay, Labels) and lay in self.viewer.layers
        ]

    def autosave(self, *, wait: bool = False) -> list[Path]:
        """Save every edited Labels layer of the current scan; returns the paths.

        The arrays are copied here and written in the background (``wait``: until written
        and recorded in the project).
        """
        self._timer.stop()
        return self._save_layers(self._scan_labels(), wait=wait)

    def save_now(self) -> list[Path]:
        """Save synchronously, with a progress message (napari is closing)."""
        self._timer.stop()
        if self.saver.busy() or self._dirty:
            self.info_label.setText("Saving labels before closing …")
            try:
                self.viewer.status = "napari-vnet: saving labels before closing …"
                app = QApplication.instance()
                if app is not None:
                    app.processEvents(QEventLoop.ProcessEventsFlag.ExcludeUserInputEvents)
            except RuntimeError:  # parts of the window are gone already
                pass
        self.saver.flush()
        paths = []
        for job in self._save_jobs(self._scan_labels(), handoff=False):
            paths.append(self.saver.write_now(job))
            self.autosaved.emit([job.path])
        return paths

    def _on_saved(self, job: SaveJob) -> None:
        stamp = time.strftime("%H:%M:%S")
        self.info_label.setText(f"Saved labels '{job.name}' of {job.entry.name} at {stamp}")
        self.autosaved.emit([job.path])

    def _on_save_failed(self, job: SaveJob, message: str) -> None:
        self._notify("error", f"Autosave of '{job.name}' failed (kept in memory): {message}")

    def _autosave_quietly(self, why: str) -> None:
        try:
            if why == "timer":
                self.autosave()
            else:
                self.save_now()
        except Exception as exc:  # noqa: BLE001 - never crash napari on close
            log.exception("autosave (%s) failed", why)
            self._notify("error", f"Autosave failed: {exc}")
