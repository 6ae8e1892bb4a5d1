"""npe2 writers: Labels and Image layers to .nii.gz, .nii, .nrrd, .mha, .mhd.

A layer read by this plugin is written with its exact source geometry; any other layer
with the geometry of its scale/translate/rotate/shear/affine (world = LPS mm, z y x).
Labels are stored as the smallest unsigned integer type. The file a layer was read from
(or, for a mask made on an image, that image) is never overwritten: choose a new name.
A Labels layer with class names (from a sidecar, a model card or its features table) also
gets ``<stem>.labels.json`` beside it, with the names and the colours the layer shows
them in; the reader restores both when the file is opened again.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_vnet.io import layer_to_volume, write_volume
from napari_vnet.io.label_names import write_label_classes


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


def _named_classes(meta: dict) -> list[dict[str, Any]] | None:
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


def _shown_color(colormap: Any, value: int) -> list[float] | None:
    """The RGBA napari shows ``value`` in with ``colormap`` (what the user saw)."""
    if colormap is None or value == 0:
        return None
    try:
        rgba = np.asarray(colormap.map(np.asarray([value])), float).reshape(-1)
    except Exception:  # noqa: BLE001 - a colormap napari-vnet does not know: no colour
        return None
    return [float(v) for v in rgba[:4]] if rgba.size >= 4 else None


def layer_classes(meta: dict) -> list[dict[str, Any]] | None:
    """The class names (value, name, colour) a Labels layer carries, or None.

    ``meta``: the layer's state (``metadata``, ``features``, ``colormap``), as napari
    passes it to writers. Each class gets the colour the layer shows it in (its
    ``colormap``), so a reopened file looks like the layer that was saved."""
    classes = _named_classes(meta)
    if not classes:
        return None
    colormap = meta.get("colormap")
    for c in classes:
        shown = _shown_color(colormap, c["value"])
        if shown is not None:
            c["color"] = shown
    return classes


def layer_state(layer) -> dict[str, Any]:
    """What :func:`layer_classes` reads, from a live Labels layer."""
    return {"metadata": layer.metadata, "features": layer.features, "colormap": layer.colormap}


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    written = [str(write_volume(_layer_volume(data, meta), path, is_label=True))]
    classes = layer_classes(meta)
    if classes:
        written.append(str(write_label_classes(written[0], classes)))
    return written


def write_image(path: str, data: Any, meta: dict) -> list[str]:
    return [str(write_volume(_layer_volume(data, meta), path, is_label=False))]
