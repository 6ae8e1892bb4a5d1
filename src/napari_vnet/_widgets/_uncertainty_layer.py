"""The uncertainty of a prediction as a napari Image layer beside its Labels layer.

The layer holds the uint8 map of :func:`napari_vnet.inference.predict`
(``return_uncertainty=True``: normalised entropy, 0..255) with the labels' geometry, an
``inferno`` colour map and additive blending, and says in its metadata whose it is::

    layer.metadata["napari_vnet"] = {"kind": "uncertainty", "uncertainty_of": "<labels>",
                                     "slice_scores": [...]}  # mean per z slice, 0..1
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_vnet.correct.uncertainty import slice_scores

KIND = "uncertainty"


def is_uncertainty(layer) -> bool:
    record = (getattr(layer, "metadata", None) or {}).get("napari_vnet") or {}
    return isinstance(record, dict) and record.get("kind") == KIND


def find_uncertainty(viewer, labels_layer):
    """The uncertainty Image layer of ``labels_layer`` (same name recorded, same shape);
    None when there is none."""
    from napari.layers import Image

    for layer in reversed(list(viewer.layers)):
        if not isinstance(layer, Image) or not is_uncertainty(layer):
            continue
        if tuple(layer.data.shape) != tuple(labels_layer.data.shape):
            continue
        if layer.metadata["napari_vnet"].get("uncertainty_of") == labels_layer.name:
            return layer
    return None


def show_uncertainty(viewer, labels_layer, uncertainty: np.ndarray, geometry: dict[str, Any]):
    """Add (or refresh) the uncertainty layer of ``labels_layer``; returns it."""
    meta = {
        "napari_vnet": {
            "kind": KIND,
            "uncertainty_of": labels_layer.name,
            "slice_scores": [round(float(s), 5) for s in slice_scores(uncertainty)],
        }
    }
    layer = find_uncertainty(viewer, labels_layer)
    if layer is not None:
        layer.metadata = meta
        layer.data = uncertainty
        return layer
    kw = {k: v for k, v in geometry.items() if k not in ("units", "axis_labels")}
    layer = viewer.add_image(
        uncertainty,
        name=f"{labels_layer.name} uncertainty",
        colormap="inferno",
        contrast_limits=(0, 255),
        blending="additive",
        opacity=0.6,
        metadata=meta,
        **kw,
    )
    return layer
