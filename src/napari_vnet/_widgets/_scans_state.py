"""The contract between the "Scans" dock and its two halves.

:class:`~napari_vnet._widgets.scans.ScansWidget` is built from
:class:`~._scan_loading.ScanLoadingMixin` (requests, prefetch, showing a scan) and
:class:`~._scan_edits.ScanEditsMixin` (which layers belong to the scan, autosave). Both
halves work on fields, signals and methods the widget owns; :class:`ScansDockFields`
declares them (annotations only: the widget sets each one in ``__init__`` or ``_build``).
``tests/test_dock_contracts.py`` checks that every ``self.<name>`` a half uses is declared
here or defined by that half, and that the widget provides every declared name.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import napari
    from qtpy.QtCore import QTimer, Signal
    from qtpy.QtWidgets import QCheckBox, QLabel, QSpinBox

    from napari_vnet._widgets._autosave import BackgroundSaver
    from napari_vnet._widgets._scans_table import ScanTable
    from napari_vnet._widgets._session import Session
    from napari_vnet.io import Volume
    from napari_vnet.workflows.worklist import ScanProject
    from napari_vnet.workflows.worklist_scan import ScanEntry


class ScansDockFields:
    """What :class:`~napari_vnet._widgets.scans.ScansWidget` owns for its halves."""

    # --- the viewer, the project and the scan shown
    viewer: napari.Viewer
    session: Session
    project: ScanProject | None
    scans_folder: Path | None
    current: ScanEntry | None
    saver: BackgroundSaver
    # --- widgets and signals
    table: ScanTable
    info_label: QLabel
    predict_check: QCheckBox
    autosave_spin: QSpinBox
    scan_loaded: Signal
    status_changed: Signal
    autosaved: Signal
    _timer: QTimer  # autosave while editing
    # --- the scan's layers and their state
    _geometry: Volume | None  # the current scan's grid (an empty array)
    _scan_shape: tuple[int, ...]
    _scan_layers: list[Any]
    _image_layer: Any
    _dirty: set[int]  # id() of edited Labels layers
    _trackers: dict[int, Any]  # id() of a Labels layer -> its EditTracker
    _status_ahead: dict[str, str]  # statuses still being written
    _score_ahead: dict[str, float]  # uncertainty scores still being written
    _restoring: bool  # layers being filled by the dock itself (not user edits)
    _closing: bool  # layers being removed by the dock itself
    # --- loading
    _requested: ScanEntry | None
    _loader: Any
    _prefetch: tuple[str, Any] | None  # (key, worker or LoadedScan)
    _direction: int
    # --- methods of the widget
    _entry: Callable[[Any], ScanEntry]
    _notify: Callable[[str, str], None]
    _hook_window: Callable[[], None]
    _refresh_key: Callable[[str], None]
    _select_row: Callable[[str], None]
    default_work_folder: Callable[[str | Path], Path]
    set_work_folder: Callable[..., None]
