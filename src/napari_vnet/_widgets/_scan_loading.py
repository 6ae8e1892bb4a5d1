"""Loading a scan for the "Scans" dock: everything heavy in a worker, cheap swaps after.

:func:`load_scan_data` runs in a worker thread: it reads the volume and its autosaved
labels (or the newest snapshots still being written), and computes what the GUI thread
would otherwise compute on the full volume (contrast limits, data range, layer keyword
arguments). The GUI thread then only swaps the arrays into the layers it already shows
(:func:`swap_image`, :func:`swap_labels`): changing ``layer.data`` of an existing napari
layer costs a few tens of milliseconds for 300 x 512 x 512, where constructing and adding
new layers costs about a second on a software-OpenGL display (see
``benchmarks/clinical_gui.py``).

napari 0.9 facts this relies on (read from its source): ``Image.data = ...`` recomputes
contrast limits only when ``auto_contrast`` is on (it is off for layers built with
explicit ``contrast_limits``); ``Labels.data = ...`` keeps the undo history (so it is
reset here: undoing a stroke of the previous scan into this one would be wrong); scale,
translate and affine are independent of the data and are set explicitly.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_vnet._widgets._scans_state import ScansDockFields
from napari_vnet.workflows.worklist import STATUSES
from napari_vnet.workflows.worklist_scan import ScanEntry

log = logging.getLogger(__name__)


class Superseded(Exception):
    """The user asked for another scan before this one was read."""


@dataclass
class LoadedScan:
    """A scan ready to show: arrays and every keyword argument of its layers."""

    entry: ScanEntry
    volume: Any  # napari_vnet.io.Volume
    image_kwargs: dict[str, Any]
    data_range: tuple[float, float]
    labels: list[tuple[dict[str, Any], np.ndarray, dict[str, Any]]]  # (info, array, kwargs)
    problems: list[str] = field(default_factory=list)
    signature: tuple = ()  # which versions of the labels it was read with
    #: an all-zero label volume on the scan's grid (allocated lazily by the OS), with its
    #: layer kwargs: shown in the current Labels layer when the scan has no labels yet
    blank: tuple[np.ndarray, dict[str, Any]] | None = None


def _paired_label_files(entry: ScanEntry, taken: set[str], problems: list[str]) -> list:
    """The label files discovery paired with this image (``case_seg``, ``labels/``...),
    with class names from their sidecar; an autosave of the same name wins (newer)."""
    from napari_vnet.io import as_label_array, read_volume, volume_to_layer_kwargs
    from napari_vnet.io.label_names import labels_display_kwargs, pairing_rule, read_label_classes

    out = []
    for path in getattr(entry, "labels", ()) or ():
        name = _paired_label_name(entry, path)
        if name in taken:
            continue
        try:
            vol = read_volume(path)
            arr = vol.array if vol.array.dtype.kind in "iu" else as_label_array(vol.array, path)
        except Exception as exc:  # noqa: BLE001 - one bad label file must not block the scan
            problems.append(f"{path}: {exc}")
            continue
        lkw = volume_to_layer_kwargs(vol, is_label=True)
        try:
            found = read_label_classes(path)
        except ValueError as exc:
            problems.append(f"label names not read: {exc}")
            found = None
        if found:
            lkw.update(labels_display_kwargs(found[0]))
            lkw["metadata"]["classes"] = found[0]
        rule = pairing_rule(path, entry.path)
        lkw["metadata"]["labels_source"] = {"path": str(path), "rule": rule}
        out.append(({"name": name, "path": path, "rule": rule}, arr, lkw))
    return out


def _saved_classes(path, problems: list[str]) -> list | None:
    """Class names and colours of an autosave (its ``.labels.json``), or None."""
    from napari_vnet.io.label_names import read_label_classes

    try:
        found = read_label_classes(path)
    except ValueError as exc:
        problems.append(f"label names not read: {exc}")
        return None
    return found[0] if found else None


def _paired_label_name(entry: ScanEntry, path: str) -> str:
    from napari_vnet.io import split_extension

    stem = split_extension(path)[0]
    image_stem = split_extension(entry.path)[0]
    return f"{stem} (labels)" if stem == image_stem or stem in image_stem else stem


def load_scan_data(
    entry: ScanEntry,
    saved: list[dict[str, Any]],
    pending: dict[str, Any],
    signature: tuple = (),
    still_wanted: Callable[[], bool] = lambda: True,
) -> LoadedScan:
    """Worker body: read ``entry`` and its labels; ``pending``: layer name -> SaveJob
    whose snapshot is newer than the file (copied here, never shared with a layer)."""
    from napari_vnet.io import display_range, read_volume, volume_to_layer_kwargs
    from napari_vnet.io.label_names import labels_display_kwargs
    from napari_vnet.workflows.worklist_scan import read_scan

    if not still_wanted():
        raise Superseded(entry.key)
    volume = read_scan(entry)
    if not still_wanted():
        raise Superseded(entry.key)
    kw = volume_to_layer_kwargs(volume)
    if volume.array.ndim > volume.ndim:  # vector pixels: colour or channels
        kw["rgb"] = volume.array.shape[-1] in (3, 4)
    kw["contrast_limits"] = display_range(volume)
    arr = volume.array
    if arr.dtype.kind == "f":
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
    else:
        lo, hi = float(arr.min()), float(arr.max())
    cl = kw["contrast_limits"]
    data_range = (min(lo, cl[0]), max(hi, cl[1]))

    labels, problems = [], []
    names = [s["name"] for s in saved] + [n for n in pending if n not in {s["name"] for s in saved}]
    by_name = {s["name"]: s for s in saved}
    for name in names:
        job = pending.get(name)
        try:
            if job is not None:
                vol = job.volume.with_array(np.array(job.volume.array, copy=True))
                info = {"name": name, "annotated_slices": job.annotated_slices}
            else:
                info = by_name[name]
                vol = read_volume(info["path"])
        except Exception as exc:  # noqa: BLE001 - one bad autosave must not block the scan
            problems.append(f"{by_name.get(name, {}).get('path', name)}: {exc}")
            continue
        lkw = volume_to_layer_kwargs(vol, is_label=True)
        if info.get("annotated_slices"):
            lkw["metadata"]["annotated_slices"] = info["annotated_slices"]
        classes = (
            getattr(job, "classes", None)
            if job is not None
            else _saved_classes(info["path"], problems)
        )
        if classes:
            lkw.update(labels_display_kwargs(classes))
            lkw["metadata"]["classes"] = classes
        labels.append((info, vol.array, lkw))
    labels += _paired_label_files(entry, set(names), problems)
    blank = None
    if not labels:
        zeros = np.zeros(volume.array.shape[: volume.ndim], np.uint8)
        bkw = volume_to_layer_kwargs(volume.with_array(zeros), is_label=True)
        # a placeholder of this scan: a Segment result of its image may fill it
        bkw["metadata"]["napari_vnet"].update(placeholder=True, source_path=volume.path)
        blank = (zeros, bkw)
    return LoadedScan(
        blank=blank,
        entry=entry,
        volume=volume,
        image_kwargs=kw,
        data_range=data_range,
        labels=labels,
        problems=problems,
        signature=signature,
    )


# ---------------------------------------------------------------------- GUI thread
def _set_geometry(layer, kw: dict[str, Any]) -> None:
    """Scale, translate and affine of ``kw``; only those that differ are set (each set
    makes napari refresh the layer: ~0.1 s for 300 x 512 x 512)."""
    ndim = layer.ndim
    affine = kw.get("affine")
    affine = np.eye(ndim + 1) if affine is None else np.asarray(affine, float)
    if not np.allclose(layer.affine.affine_matrix, affine):
        layer.affine = affine
    if not np.allclose(layer.scale, kw["scale"]):
        layer.scale = kw["scale"]
    if not np.allclose(layer.translate, kw["translate"]):
        layer.translate = kw["translate"]


def can_swap_image(layer, loaded: LoadedScan) -> bool:
    """Whether ``layer`` can show ``loaded`` by a data swap (same kind of image)."""
    arr = loaded.volume.array
    return (
        not layer.multiscale
        and bool(getattr(layer, "rgb", False)) == bool(loaded.image_kwargs.get("rgb", False))
        and layer.data.ndim == arr.ndim
    )


def swap_image(layer, loaded: LoadedScan) -> None:
    """Show ``loaded``'s volume in an existing Image layer (no recomputation on the data)."""
    kw = loaded.image_kwargs
    layer.auto_contrast = False  # never scan the new volume for its range here
    layer.data = loaded.volume.array
    _set_geometry(layer, kw)
    layer.metadata = kw["metadata"]
    layer.contrast_limits_range = loaded.data_range
    layer.contrast_limits = kw["contrast_limits"]
    layer.name = loaded.entry.name


def swap_labels(layer, array: np.ndarray, name: str, kw: dict[str, Any]) -> None:
    """Show ``array`` in an existing Labels layer, with a fresh undo history."""
    from napari.utils.colormaps import CyclicLabelColormap, label_colormap

    layer.data = array
    _set_geometry(layer, kw)
    if kw.get("colormap") is not None:  # class colours from a sidecar (paired label file)
        from napari.utils.colormaps import DirectLabelColormap

        layer.colormap = DirectLabelColormap(color_dict=kw["colormap"])
    elif not isinstance(layer.colormap, CyclicLabelColormap):  # e.g. a prediction's
        layer.colormap = label_colormap()
    if kw.get("features") is not None:  # class names shown on hover
        layer.features = kw["features"]
    elif len(layer.features):
        layer.features = {}
    layer.metadata = kw["metadata"]
    layer.name = name
    reset = getattr(layer, "_reset_history", None)  # napari's own (private) reset
    if reset is not None:
        reset()


def _show_whole_scan(viewer, image) -> None:
    """The slice shown lies inside the new scan (its grid may differ from the last)."""
    try:
        from napari_vnet._widgets._display import centre_on_layer

        centre_on_layer(viewer, image)
    except Exception:  # noqa: BLE001 - a display nicety never blocks a scan
        log.debug("scan not centred", exc_info=True)


class ScanLoadingMixin(ScansDockFields):
    """The loading half of :class:`~napari_vnet._widgets.scans.ScansWidget`: requests,
    prefetch, and showing a :class:`LoadedScan` in the layers already in the viewer
    (the widget's fields it uses: :class:`~._scans_state.ScansDockFields`)."""

    # the edits half's methods used here (:class:`~._scan_edits.ScanEditsMixin`)
    _status: Callable[[str], str]
    _mark: Callable[..., bool]
    _save_layers: Callable[..., list[Path]]
    _track: Callable[[Any], None]
    _untrack: Callable[[Any], None]

    def _read_args(self, entry: ScanEntry) -> tuple:
        """What the loader reads: saved labels records and unwritten autosave snapshots."""
        saved, pending = self.project.saved_labels(entry.key), self.saver.pending(entry.key)
        return entry, saved, pending, self._signature(entry.key, saved, pending)

    def _signature(self, key: str, saved=None, pending=None) -> tuple:
        """Changes when the labels a scan would be read with change (a new autosave)."""
        saved = self.project.saved_labels(key) if saved is None else saved
        pending = self.saver.pending(key) if pending is None else pending
        names = sorted({s["name"] for s in saved} | set(pending))
        return tuple(names), tuple(sorted(self.saver.versions(key).items()))

    def load_scan(self, which):
        """Show a scan (entry, row, key or name); returns the loading worker, or None when
        refused, already shown, or shown at once from the prefetched scan.

        The current scan's edited Labels layers are autosaved when the new scan arrives.
        """
        from napari.qt.threading import create_worker

        entry = self._entry(which)
        if entry.broken:
            self._notify("warning", f"Cannot open {entry.name}: {entry.error}")
            return None
        if self.project is None:
            self.set_work_folder(self.default_work_folder(self.scans_folder or Path.cwd()))
        if self._requested is not None and entry.key == self._requested.key:
            return self._loader  # already on its way
        if (
            self.current is not None
            and entry.key == self.current.key
            and any(lay in self.viewer.layers for lay in self._scan_layers)
        ):
            self._requested = None
            return None
        self._cancel_prediction()
        self._select_row(entry.key)
        ready = self._take_prefetched(entry)
        if ready is not None:
            self._requested = entry
            self._show(ready)
            return None
        self._requested = entry
        args = self._read_args(entry)
        wanted = functools.partial(self._still_wanted, entry.key)
        worker = create_worker(
            load_scan_data, *args, still_wanted=wanted, _start_thread=False, _ignore_errors=True
        )
        worker.returned.connect(self._on_loaded)
        worker.errored.connect(functools.partial(self._on_load_error, entry))
        self._loader = worker
        self.info_label.setText(f"Loading {entry.name} …")
        worker.start()
        return worker

    def _still_wanted(self, key: str) -> bool:  # called from the loader thread
        req = self._requested
        return req is not None and req.key == key

    def _on_load_error(self, entry: ScanEntry, exc: Exception) -> None:
        if isinstance(exc, Superseded):
            return
        if self._requested is entry:
            self._requested = None
        self._notify("error", f"Cannot open {entry.name}: {exc}")

    def _on_loaded(self, loaded: LoadedScan) -> None:
        if self._requested is None or loaded.entry.key != self._requested.key:
            return  # the user moved on while this scan was loading
        if loaded.signature != self._signature(loaded.entry.key):
            self._loader = None  # its labels were saved meanwhile: read them again
            self._requested = None
            self.load_scan(loaded.entry)
            return
        self._show(loaded)

    def _show(self, loaded: LoadedScan) -> None:
        """Put ``loaded`` into the viewer, reusing the current scan's layers."""
        from napari.layers import Image, Labels

        entry = loaded.entry
        self._hook_window()  # docked by now: autosave when its main window closes
        self._cancel_prediction()
        self._timer.stop()
        old = [lay for lay in self._scan_layers if lay in self.viewer.layers]
        old_labels = [lay for lay in old if isinstance(lay, Labels)]
        self._save_layers(old_labels, handoff=True)  # these arrays leave their layers now
        for layer in list(self._scan_layers):
            self._untrack(layer)
        self._requested = None
        self.current = entry
        self._geometry = loaded.volume.with_array(np.empty((0,) * loaded.volume.ndim, np.uint8))
        self._scan_shape = tuple(loaded.volume.array.shape[: loaded.volume.ndim])
        image = self._image_layer if self._image_layer in old else None
        if image is not None and not can_swap_image(image, loaded):
            image = None
        keep: list = []
        self._restoring = True
        try:
            if image is not None:
                swap_image(image, loaded)
            else:
                image = Image(loaded.volume.array, name=entry.name, **loaded.image_kwargs)
                image.contrast_limits_range = loaded.data_range
                self.viewer.add_layer(image)
            keep.append(image)
            for i, (info, array, lkw) in enumerate(loaded.labels):
                if i < len(old_labels):
                    swap_labels(old_labels[i], array, info["name"], lkw)
                    layer = old_labels[i]
                else:
                    layer = Labels(array, name=info["name"], **lkw)
                    self.viewer.add_layer(layer)
                keep.append(layer)
            if loaded.blank is not None and old_labels:
                # keep one (empty) Labels layer: removing a layer costs napari a full
                # gc.collect() (~1 s in a big session); an unpainted layer is never saved
                zeros, lkw = loaded.blank
                swap_labels(old_labels[0], zeros, old_labels[0].name, lkw)
                keep.append(old_labels[0])
        finally:
            self._restoring = False
        self._closing = True
        try:
            for layer in old:
                if not any(layer is k for k in keep) and layer in self.viewer.layers:
                    self.viewer.layers.remove(layer)
        finally:
            self._closing = False
        self._scan_layers = keep
        self._image_layer = image
        _show_whole_scan(self.viewer, image)
        self._dirty.clear()
        for layer in keep[1:]:
            self._track(layer)
        self._mark(entry.key, "opened", entry=entry)
        paired = [info["rule"] for info, _a, _k in loaded.labels if info.get("rule")]
        if paired:  # say where the labels shown come from
            self.info_label.setText(f"{entry.name}: labels from " + "; ".join(paired))
        for msg in loaded.problems:
            self._notify("warning", f"Autosaved labels not restored: {msg}")
        self.scan_loaded.emit(entry)
        if self.predict_check.isChecked() and not loaded.labels:
            self._predict_on_open(entry)
        self._start_prefetch()

    def _start_prefetch(self) -> None:
        """Read the scan after this one (in the direction of travel) in the background."""
        from napari.qt.threading import create_worker

        target = self.table.step_target(self.current.key, self._direction)
        if target is None or self.project is None:
            self._prefetch = None
            return
        if self._prefetch is not None and self._prefetch[0] == target.key:
            return
        worker = create_worker(
            load_scan_data, *self._read_args(target), _start_thread=False, _ignore_errors=True
        )
        self._prefetch = (target.key, worker)

        def done(result, key=target.key):
            if self._prefetch is not None and self._prefetch[0] == key:
                self._prefetch = (key, result)

        worker.returned.connect(done)
        worker.errored.connect(lambda _exc: None)  # the real load reports it
        worker.start()

    def _take_prefetched(self, entry: ScanEntry):
        pre, self._prefetch = self._prefetch, None
        if pre is None or pre[0] != entry.key or not isinstance(pre[1], LoadedScan):
            return None
        return pre[1] if pre[1].signature == self._signature(entry.key) else None

    def _predict_on_open(self, entry: ScanEntry) -> None:
        if STATUSES.index(self._status(entry.key)) >= STATUSES.index("predicted"):
            return
        seg = self.session.segment
        if seg is None:
            self._notify("warning", "Predict on open: open the 'Segment volume' dock first.")
            return
        if seg.current_weights is None:
            self._notify("warning", "Predict on open: choose weights in 'Segment volume'.")
            return
        seg.set_image_layer(self._image_layer)
        seg.run()

    def _close_current(self) -> None:
        """Autosave the current scan's Labels layers, then remove its layers."""
        from napari.layers import Labels

        self._requested = None
        self._prefetch = None
        if self.current is None and not self._scan_layers:
            return
        self._cancel_prediction()
        shown = [lay for lay in self._scan_layers if lay in self.viewer.layers]
        self._save_layers([lay for lay in shown if isinstance(lay, Labels)], handoff=True)
        self._closing = True
        try:
            for layer in shown:
                self.viewer.layers.remove(layer)
        finally:
            self._closing = False
        for layer in list(self._scan_layers):
            self._untrack(layer)
        self._scan_layers.clear()
        self._image_layer = None
        self._dirty.clear()
        self._timer.stop()
        key = self.current.key if self.current else None
        self.current = None
        self._geometry = None
        if key:
            self._refresh_key(key)

    def _cancel_prediction(self) -> None:
        """A prediction still running on this scan's image would land on the next scan."""
        seg = self.session.segment
        try:
            if seg is not None and seg.is_running and seg.image_layer in self._scan_layers:
                seg.cancel()
        except RuntimeError:  # the Segment dock is closing
            pass

    def next_scan(self):
        """Show the next listed (visible, not broken) scan; returns the worker or None."""
        return self._step(+1)

    def previous_scan(self):
        return self._step(-1)

    def _step(self, direction: int):
        self._direction = direction
        ref = self._requested or self.current
        target = self.table.step_target(ref.key if ref else None, direction)
        if target is None:
            if self.table.step_target(None, direction) is not None:
                self._notify("info", "Last scan of the list." if direction > 0 else "First scan.")
            return None
        return self.load_scan(target)
