"""npe2 writers: Labels and Image layers to .nii.gz, .nii, .nrrd, .mha, .mhd.

A layer read by this plugin is written with its exact source geometry; any other layer
with the geometry of its scale/translate/rotate/shear/affine (world = LPS mm, z y x).
Labels are stored as the smallest unsigned integer type. The file a layer was read from
(or, for a mask made on an image, that image) is never overwritten: choose a new name.
A Labels layer with class names (from a sidecar, a model card or its features table) also
gets ``<stem>.labels.json`` beside it, which the reader uses when the file is opened again.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_vnet.io import layer_to_volume, write_volume
from napari_vnet.label_names import write_label_classes


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


def layer_classes(meta: dict) -> list[dict[str, Any]] | None:
    """The class names (value, name, colour) a Labels layer carries, or None."""
    md = meta.get("metadata") or {}
    for classes in (md.get("classes"), (md.get("napari_vnet") or {}).get("classes")):
        if isinstance(classes, list) and classes and all("value" in c for c in classes):
            return [
                {"value": int(c["value"]), "name": str(c["name"]), "color": c.get("color")}
                for c in classes
            ]
    feats = meta.get("features")
    try:
        index, names = list(feats["index"]), list(feats["class"])
    except (KeyError, TypeError, IndexError):
        return None
    if not index:
        return None
    return [
        {"value": int(v), "name": str(n), "color": None} for v, n in zip(index, names, strict=False)
    ]


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    written = [str(write_volume(_layer_volume(data, meta), path, is_label=True))]
    classes = layer_classes(meta)
    if classes:
        written.append(str(write_label_classes(written[0], classes)))
    return written


def write_image(path: str, data: Any, meta: dict) -> list[str]:
    return [str(write_volume(_layer_volume(data, meta), path, is_label=False))]
