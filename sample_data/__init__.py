"""Sample data shipped with napari-vnet (installed as ``napari_vnet.sample_data``).

``phantom_ct.nii.gz`` / ``phantom_labels.nii.gz`` / ``phantom_classes.json`` are written
by ``make_sample.py`` (in this folder) from :func:`napari_vnet.phantoms.make_phantom`.
"""

from __future__ import annotations

from pathlib import Path

SAMPLE_FILES = ("phantom_ct.nii.gz", "phantom_labels.nii.gz", "phantom_classes.json")


def sample_paths() -> dict[str, Path]:
    """``{"ct": ..., "labels": ..., "classes": ...}`` paths of the installed sample files."""
    from importlib.resources import files

    root = files(__name__)
    names = dict(zip(("ct", "labels", "classes"), SAMPLE_FILES, strict=True))
    # the package is installed as plain files (never zipped), so this is a real path
    return {key: Path(str(root.joinpath(name))) for key, name in names.items()}
