"""``napari-vnet napari-readers``: let napari open medical volumes with napari-vnet.

napari asks "Choose reader" when two plugins can read a file and no preference is saved;
its builtin reader also claims .nii/.nii.gz/.mha/.nrrd/.dcm and folders (and cannot read
them). napari-vnet writes its reader preferences itself the first time it runs inside
napari; this command does it before napari is ever started (e.g. right after
``pip install napari-vnet``), or takes them back with ``--remove``. A preference the user
set for another plugin is never overwritten or removed. No window opens.
"""

from __future__ import annotations

import argparse
import sys

HELP = "make napari open medical volumes and DICOM folders with napari-vnet (no dialog)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--remove", action="store_true", help="remove napari-vnet's reader preferences"
    )


def run(args: argparse.Namespace) -> int:
    try:
        from napari.settings import get_settings
    except ImportError as exc:
        print(f"napari-vnet napari-readers: napari is not installed ({exc})", file=sys.stderr)
        return 2
    from napari_vnet.reader_preferences import (
        PLUGIN_NAME,
        register_reader_preferences,
        remove_reader_preferences,
    )

    settings = get_settings()
    if args.remove:
        ours = remove_reader_preferences(settings)
        print(f"removed {len(ours)} reader preference(s): {' '.join(ours) or '-'}")
        return 0
    added = register_reader_preferences(settings)
    kept = {
        p: plugin
        for p, plugin in settings.plugins.extension2reader.items()
        if plugin != PLUGIN_NAME
    }
    print(f"napari opens with napari-vnet: {' '.join(added) or '(already set)'}")
    if kept:
        print("kept your own choices: " + ", ".join(f"{p} -> {v}" for p, v in kept.items()))
    print(f"settings file: {getattr(settings, 'config_path', None) or '(napari default)'}")
    return 0
