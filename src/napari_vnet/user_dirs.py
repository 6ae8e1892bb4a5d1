"""Where napari-vnet keeps user settings and data, per operating system (no Qt).

``$NAPARI_VNET_CONFIG_DIR`` (tests, portable installs) wins; otherwise ``platformdirs``
(a napari dependency) gives the OS's usual folders:

| | settings (:func:`config_dir`) | data (:func:`data_dir`) |
| --- | --- | --- |
| Linux | ``~/.config/napari-vnet`` (``$XDG_CONFIG_HOME``) | ``~/.local/share/napari-vnet`` |
| macOS | ``~/Library/Application Support/napari-vnet`` | the same |
| Windows | ``%LOCALAPPDATA%\\napari-vnet`` | the same |
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

CONFIG_ENV = "NAPARI_VNET_CONFIG_DIR"
APP_NAME = "napari-vnet"
#: the recently used weights in :func:`config_dir`: ``{"recent": [path, ...]}``, newest
#: first, written by the docks and read by the docks and ``napari-vnet list``
RECENT_FILE = "recent_weights.json"

log = logging.getLogger(__name__)


def config_dir() -> Path:
    """Settings (recent weights, the Scans dock's folders): created on demand by writers."""
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False))


def data_dir() -> Path:
    """User data (fine-tuned copies of shipped weights, work folders)."""
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def recent_weights_file() -> Path:
    """The recent-weights list (:data:`RECENT_FILE` in :func:`config_dir`)."""
    return config_dir() / RECENT_FILE


def read_recent_weights() -> list[str]:
    """The entries of the recent-weights list, newest first; [] when missing or unreadable
    (an unreadable list is logged, never raised)."""
    path = recent_weights_file()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable recent-weights list %s: %s", path, exc)
        return []
    items = data.get("recent") if isinstance(data, dict) else data
    if not isinstance(items, list):
        return []
    return [str(p) for p in items if isinstance(p, str)]
