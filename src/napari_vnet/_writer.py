"""npe2 writers: Labels and Image layers to .nii.gz, .nii, .nrrd, .mha, .mhd.

A layer read by this plugin is written with its exact source geometry; any other layer
with the geometry of its scale/translate/rotate/shear/affine (world = LPS mm, z y x).
Labels are stored as the smallest unsigned integer type. The file a layer was read from
(or, for a mask made on an image, that image) is never overwritten: choose a new name.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_vnet.io import layer_to_volume, write_volume


def _layer_volume(data: Any, meta: dict):
    if isinstance(data, (list, tuple)):  # multiscale: write the full resolution level
        data = data[0]
    return layer_to_volume(
        np.asarray(data),
        scale=meta.get("scale"),
        translate=meta.get("translate"),
        affine=meta.get("affine"),
        rotate=meta.get("rotate"),
        shear=meta.get("shear"),
        metadata=meta.get("metadata"),
    )


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    return [str(write_volume(_layer_volume(data, meta), path, is_label=True))]


def write_image(path: str, data: Any, meta: dict) -> list[str]:
    return [str(write_volume(_layer_volume(data, meta), path, is_label=False))]
