"""napari's reader preferences for the formats napari-vnet reads (no "Choose reader" dialog).

Written by the plugin's activation (npe2's ``on_activate`` hook, on the first use of any
napari-vnet contribution: see :func:`napari_vnet._widgets._session.on_activate`), by
``napari-vnet demo`` before its window opens and by ``napari-vnet napari-readers``; never by
reading a file (the npe2 reader in :mod:`napari_vnet._reader` returns layer data only).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

PLUGIN_NAME = "napari-vnet"

#: Reader preferences napari-vnet writes into napari's settings
#: (``plugins.extension2reader``). napari's own builtin reader also claims these endings
#: (through imageio, which cannot read them), and napari asks "Choose reader" whenever two
#: readers match and no preference exists. ``.hdr``/``.img`` are also Radiance HDR and raw
#: images: napari-vnet reads an Analyze pair (its header starts with the int32 348) and
#: hands any other such file to napari's own reader. ``*/`` is every folder: DICOM folders
#: open with napari-vnet and other folders are handed to napari's own folder reader.
PREFERRED_PATTERNS = (
    "*.nii",
    "*.nii.gz",
    "*.mha",
    "*.mhd",
    "*.nrrd",
    "*.nhdr",
    "*.gipl",
    "*.gipl.gz",
    "*.dcm",
    "*.DCM",
    "*.dicom",
    "*.ima",
    "*.IMA",
    "*.hdr",
    "*.img",
)


def folder_pattern() -> str:
    """The pattern napari matches folders with ("<realpath><sep>")."""
    return "*" + os.sep


def register_reader_preferences(settings=None) -> list[str]:
    """Make napari open medical volumes and DICOM folders with napari-vnet, no dialog.

    Adds ``pattern: "napari-vnet"`` to napari's ``plugins.extension2reader`` for each of
    :data:`PREFERRED_PATTERNS` and for folders, only where the user has no preference for
    that pattern yet (a choice made in napari's dialog or in Preferences > Plugins is never
    overwritten). Returns the patterns added. Never raises: a failure is logged and the
    worst case is napari's usual "Choose reader" dialog.
    """
    try:
        if settings is None:
            from napari.settings import get_settings

            settings = get_settings()
        current = dict(settings.plugins.extension2reader)
        wanted = [*PREFERRED_PATTERNS, folder_pattern()]
        added = [p for p in wanted if p not in current]
        if added:
            settings.plugins.extension2reader = {
                **current,
                **dict.fromkeys(added, PLUGIN_NAME),
            }
            log.info("napari reader preference set to napari-vnet for %s", ", ".join(added))
        return added
    except Exception:  # a settings problem must never stop napari-vnet from starting
        log.debug("could not write napari reader preferences", exc_info=True)
        return []


def remove_reader_preferences(settings) -> list[str]:
    """Take napari-vnet's reader preferences out of ``settings``; returns their patterns
    (a preference the user set for another plugin stays)."""
    prefs = dict(settings.plugins.extension2reader)
    ours = [p for p, plugin in prefs.items() if plugin == PLUGIN_NAME]
    settings.plugins.extension2reader = {
        p: plugin for p, plugin in prefs.items() if plugin != PLUGIN_NAME
    }
    return ours
