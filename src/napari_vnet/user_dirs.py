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

import os
from pathlib import Path

CONFIG_ENV = "NAPARI_VNET_CONFIG_DIR"
APP_NAME = "napari-vnet"


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
