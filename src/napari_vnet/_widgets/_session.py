"""What the docks of one viewer share: the :class:`Session`, and recently used weights.

A :class:`Session` belongs to one napari viewer (:meth:`Session.of`). Each dock registers
itself with it when it is built; the docks reach each other only through it (the Segment
dock's weights, "Predict on open", handing corrected scans to Fine-tune, selecting newly
trained weights). Creating a viewer's session also keeps that viewer's camera radiological
and shows a newly opened patient (:mod:`._display`): the npe2 reader only returns layer
data. npe2's activation hook (:func:`on_activate`, on the first use of any napari-vnet
contribution) writes napari's reader preferences and opens the current viewer's session.

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
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_vnet import user_dirs
from napari_vnet._atomic import atomic_write_text
from napari_vnet.reader_preferences import PLUGIN_NAME, register_reader_preferences

if TYPE_CHECKING:
    import napari

    from napari_vnet._widgets.correct import CorrectWidget
    from napari_vnet._widgets.finetune import FinetuneWidget
    from napari_vnet._widgets.scans import ScansWidget
    from napari_vnet._widgets.segment import SegmentWidget

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


#: the dock roles and the npe2 widget titles (napari.yaml) that open them
DOCK_TITLES = {
    "segment": "Segment volume",
    "finetune": "Fine-tune model",
    "scans": "Scans",
    "correct": "Correct",
}


class Session:
    """The napari-vnet docks of one viewer and what they hand each other.

    Get it with :meth:`of` (one per viewer, made on first use). A dock calls
    :meth:`register` with its role ("segment", "finetune", "scans", "correct") when it is
    built; the others find it as :attr:`segment`, :attr:`finetune`, :attr:`scans` or
    :attr:`correct` (None while there is none, or after it was closed), or open it with
    :meth:`open_dock`. Docks are held weakly: a closed dock is never kept alive here, and
    when the newest dock of a role was closed, the one before it is found again.
    """

    def __init__(self, viewer: napari.Viewer):
        from napari_vnet._widgets._display import install_radiological_view

        self._viewer = weakref.ref(viewer)
        self._docks: dict[str, list[weakref.ref]] = {}
        # every layer opened into this viewer (File > Open, a dock, the sample): the camera
        # stays radiological and a second patient is shown (layers.events.inserted hooks)
        install_radiological_view(viewer)

    @classmethod
    def of(cls, viewer: napari.Viewer) -> Session:
        """``viewer``'s session (made, with its display hooks, the first time)."""
        session = _SESSIONS.get(viewer)
        if session is None:
            session = _SESSIONS[viewer] = cls(viewer)
        return session

    @property
    def viewer(self) -> napari.Viewer | None:
        return self._viewer()

    def register(self, role: str, dock: Any) -> None:
        """``dock`` is this viewer's ``role`` dock from now on (the newest one wins)."""
        if role not in DOCK_TITLES:
            raise ValueError(f"unknown dock role {role!r}; one of {', '.join(DOCK_TITLES)}")
        self._docks.setdefault(role, []).append(weakref.ref(dock))

    def dock(self, role: str) -> Any | None:
        """The newest registered ``role`` dock still open, or None."""
        refs = self._docks.get(role, [])
        while refs:
            widget = refs[-1]()
            try:
                if widget is not None:
                    widget.objectName()
                    return widget
            except RuntimeError:  # its Qt side was deleted with its dock
                pass
            refs.pop()
        return None

    @property
    def segment(self) -> SegmentWidget | None:
        return self.dock("segment")

    @property
    def finetune(self) -> FinetuneWidget | None:
        return self.dock("finetune")

    @property
    def scans(self) -> ScansWidget | None:
        return self.dock("scans")

    @property
    def correct(self) -> CorrectWidget | None:
        return self.dock("correct")

    def open_dock(self, role: str) -> Any:
        """The ``role`` dock, added to the viewer's window first when there is none."""
        widget = self.dock(role)
        if widget is None:
            self.viewer.window.add_plugin_dock_widget(PLUGIN_NAME, DOCK_TITLES[role])
            widget = self.dock(role)  # registered while napari built it
        return widget

    def segment_weights(self) -> Path | None:
        """The weights chosen in the Segment volume dock (None: no dock or no weights)."""
        seg = self.segment
        current = seg.current_weights if seg is not None else None
        return Path(current) if current else None

    def publish_weights(self, path: str | os.PathLike) -> None:
        """Newly written weights: first in the recent list and chosen in the Segment
        volume dock (when it is open)."""
        add_recent_weights(path)
        seg = self.segment
        if seg is not None:
            seg.refresh_weights()
            seg.select_weights(path)


#: each viewer's session, for as long as the viewer lives (viewers hash by identity)
_SESSIONS: weakref.WeakKeyDictionary[Any, Session] = weakref.WeakKeyDictionary()


def on_activate(context=None) -> None:
    """npe2's activation hook (``on_activate`` in napari.yaml): napari calls it once per
    napari session, on the first use of any napari-vnet contribution (a dock, the reader,
    the sample, a writer, the CT window menu). Writes napari's reader preferences (never
    over a choice the user made) so that the next File > Open asks nothing, and opens the
    current viewer's :class:`Session` (radiological camera, new patients shown)."""
    register_reader_preferences()
    try:
        import napari

        viewer = napari.current_viewer()
    except Exception:  # noqa: BLE001 - no viewer (a headless use of a writer): nothing to set up
        log.debug("no current napari viewer", exc_info=True)
        return
    if viewer is not None:
        Session.of(viewer)


def join_session(viewer: napari.Viewer, role: str, dock: Any) -> Session:
    """What each dock does when it is built: napari-vnet has run inside napari (reader
    preferences, see :func:`on_activate`), and ``dock`` joins ``viewer``'s session."""
    register_reader_preferences()
    session = Session.of(viewer)
    session.register(role, dock)
    return session
