"""GUI state shared by the docks: recently used weights and finding a sibling dock.

Recent weights are kept as a small JSON file in the config folder
``$NAPARI_VNET_CONFIG_DIR`` (default: the operating system's place for settings, from
``platformdirs``: ``~/.config/napari-vnet`` on Linux, ``~/Library/Application
Support/napari-vnet`` on macOS, ``%LOCALAPPDATA%\\napari-vnet`` on Windows), newest first. A broken
or unreadable file is treated as empty (and rewritten on the next change): the list is a
convenience, never a reason for a widget to fail.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_vnet import user_dirs
from napari_vnet._atomic import atomic_write_text

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

CONFIG_ENV = "NAPARI_VNET_CONFIG_DIR"
RECENT_FILE = user_dirs.RECENT_FILE
MAX_RECENT = 10


def config_dir() -> Path:
    """The folder holding napari-vnet's GUI settings (see ``napari_vnet.user_dirs``)."""
    return user_dirs.config_dir()


def data_dir() -> Path:
    """The folder for user data: fine-tuned copies of shipped weights, work folders."""
    return user_dirs.data_dir()


def _recent_path() -> Path:
    return user_dirs.recent_weights_file()


def _read_recent() -> list[str]:
    return user_dirs.read_recent_weights()


def _write_recent(items: list[str]) -> None:
    path = _recent_path()
    try:
        atomic_write_text(path, json.dumps({"recent": items}, indent=1))
    except OSError as exc:
        log.warning("could not save the recent-weights list to %s: %s", path, exc)


def recent_weights() -> list[Path]:
    """Recently used weights files that still exist, newest first."""
    out: list[Path] = []
    for item in _read_recent():
        p = Path(item)
        if (p.is_file() or p.is_dir()) and p not in out:  # folders: nnU-Net, MONAI bundle
            out.append(p)
    return out[:MAX_RECENT]


def add_recent_weights(path: str | os.PathLike) -> None:
    """Put ``path`` first in the recent-weights list (kept to ``MAX_RECENT`` entries)."""
    p = str(Path(path).expanduser().resolve())
    items = [p] + [i for i in _read_recent() if i != p]
    _write_recent(items[:MAX_RECENT])


def forget_recent_weights(path: str | os.PathLike) -> None:
    """Drop ``path`` from the recent-weights list (e.g. after it failed to load)."""
    p = str(Path(path).expanduser().resolve())
    items = _read_recent()
    if p in items:
        _write_recent([i for i in items if i != p])


def first_use_in_napari() -> None:
    """napari-vnet runs inside napari: let File > Open read medical volumes and DICOM
    folders with napari-vnet from now on (napari's reader preferences, written once and
    never over a choice the user made; see ``napari_vnet._reader``) and keep the
    current viewer's camera radiological (``_display``)."""
    from napari_vnet._reader import register_reader_preferences
    from napari_vnet._widgets._display import install_in_current_viewer

    register_reader_preferences()
    install_in_current_viewer()


def find_dock_widget(viewer: napari.Viewer, cls: type) -> Any | None:
    """The docked instance of widget class ``cls`` in ``viewer``'s window, or None.

    Looks through the window's dock widgets (the public ``window.dock_widgets`` mapping
    of napari >= 0.6, else the Qt dock widgets of the private Qt window) and also one level
    inside magicgui containers.
    """
    window = getattr(viewer, "window", None)
    if window is None:
        return None
    candidates: list[Any] = []
    docks = getattr(window, "dock_widgets", None)
    if docks is not None:
        try:
            candidates.extend(docks.values())
        except AttributeError:
            candidates.extend(docks)
    # napari < 0.6 has no public mapping: fall back to the Qt window's dock widgets
    qt_window = getattr(window, "_qt_window", None) if docks is None else None
    if qt_window is not None:
        try:
            from qtpy.QtWidgets import QDockWidget

            for dock in qt_window.findChildren(QDockWidget):
                inner = dock.widget()
                if inner is not None:
                    candidates.append(inner)
        except (ImportError, RuntimeError):  # pragma: no cover - window closing
            pass
    for cand in candidates:
        for obj in _unwrap(cand):
            if isinstance(obj, cls):
                return obj
    return None


def _unwrap(widget: Any) -> list[Any]:
    """The widget itself, its magicgui wrapper/native and its direct Qt children."""
    out = [widget]
    native = getattr(widget, "native", None)
    if native is not None:
        out.append(native)
    magic = getattr(widget, "_magic_widget", None)
    if magic is not None:
        out.append(magic)
    try:
        from qtpy.QtWidgets import QWidget

        if isinstance(widget, QWidget):
            out.extend(widget.findChildren(QWidget))
    except ImportError:  # pragma: no cover
        pass
    return out
