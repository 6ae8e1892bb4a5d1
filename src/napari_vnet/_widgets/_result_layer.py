"""Turning a finished prediction into a napari Labels layer on the image's grid.

The Labels layer copies every part of the image layer's data-to-world transform (scale,
translate, rotate, shear and affine, plus units and axis labels), so it overlays the image
exactly, also when the image is flipped or oblique. Class names go into the layer's
``features`` table (column ``index`` holds the label value), which napari shows in the
status bar and the tooltip under the cursor; class colours become a
``DirectLabelColormap``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import napari

    from napari_vnet.models import ModelCard


def unique_layer_name(viewer: napari.Viewer, base: str) -> str:
    """``base`` if no layer has that name, else ``base (2)``, ``base (3)``..."""
    names = {layer.name for layer in viewer.layers}
    if base not in names:
        return base
    n = 2
    while f"{base} ({n})" in names:
        n += 1
    return f"{base} ({n})"


def class_colors(card: ModelCard) -> dict[int, tuple[float, float, float, float]]:
    """Label value -> RGBA; card colours where given, distinct hues otherwise."""
    from napari_vnet.io.label_names import class_colors as colors_of

    return colors_of(card.classes)


def labels_colormap(card: ModelCard):
    from napari.utils.colormaps import DirectLabelColormap

    color_dict: dict[Any, Any] = {None: (0.6, 0.6, 0.6, 1.0)}  # values outside the card
    color_dict.update(class_colors(card))
    color_dict.setdefault(0, (0.0, 0.0, 0.0, 0.0))
    return DirectLabelColormap(color_dict=color_dict, background_value=0)


def class_features(card: ModelCard) -> dict[str, list]:
    """The features table: one row per class, ``index`` = label value."""
    return {
        "index": [int(c.value) for c in card.classes],
        "class": [str(c.name) for c in card.classes],
    }


def geometry_kwargs(image_layer) -> dict[str, Any]:
    """The image layer's full data-to-world transform as Labels keyword arguments."""
    kw: dict[str, Any] = {
        "scale": np.asarray(image_layer.scale, dtype=float).copy(),
        "translate": np.asarray(image_layer.translate, dtype=float).copy(),
        "rotate": np.asarray(image_layer.rotate, dtype=float).copy(),
        "shear": np.asarray(image_layer.shear, dtype=float).copy(),
        "affine": np.asarray(image_layer.affine.affine_matrix, dtype=float).copy(),
    }
    for attr in ("units", "axis_labels"):
        value = getattr(image_layer, attr, None)
        if value is not None:
            kw[attr] = tuple(value)
    return kw


def result_metadata(image_layer, card: ModelCard, info: dict[str, Any]) -> dict[str, Any]:
    """``metadata`` of the result layer: the image's source geometry and the run record."""
    source = image_layer.metadata.get("napari_vnet", {}) if image_layer.metadata else {}
    # the IO geometry record (spacing/origin/direction/shape/metadata) stays valid: the
    # labels share the image's grid; they are not the image's file, though
    record: dict[str, Any] = {k: v for k, v in dict(source).items() if k != "annotated_slices"}
    if record.get("path"):
        record["source_path"] = record["path"]
    record["path"] = None
    if "shape" in record or "spacing" in record:
        record["is_label"] = True
        record["pixel_type"] = ""
    record.update(info)
    record["classes"] = [c.to_dict() for c in card.classes]
    record["source_layer"] = image_layer.name
    return {"napari_vnet": record}


def make_labels_layer(
    viewer: napari.Viewer,
    image_layer,
    labels: np.ndarray,
    card: ModelCard,
    info: dict[str, Any],
    model_name: str,
    geometry: dict[str, Any] | None = None,
):
    """A new Labels layer (not yet added) named ``<image> [<model>]``, unique in ``viewer``.

    ``geometry``: the image's transform captured when the run started (default: now).
    """
    from napari.layers import Labels

    layer = Labels(
        labels,
        name=unique_layer_name(viewer, f"{image_layer.name} [{model_name}]"),
        colormap=labels_colormap(card),
        features=class_features(card),
        metadata=result_metadata(image_layer, card, info),
        opacity=0.5,
        **(geometry if geometry is not None else geometry_kwargs(image_layer)),
    )
    return layer


def previous_result(viewer: napari.Viewer, image_layer, arch: str, shape: tuple[int, ...]):
    """The newest unedited Labels layer holding an earlier ``arch`` result for
    ``image_layer`` with this ``shape``; None when there is none.

    An empty placeholder layer of the same image (``metadata["napari_vnet"]["placeholder"]``:
    the Scans dock keeps one on a scan without labels) is offered too. A layer the user
    painted on (it has undo history) is never offered: replacing it would throw the
    corrections away.
    """
    from napari.layers import Labels

    source = ((image_layer.metadata or {}).get("napari_vnet") or {}).get("path")
    for layer in reversed(list(viewer.layers)):
        if not isinstance(layer, Labels) or tuple(layer.data.shape) != tuple(shape):
            continue
        record = (layer.metadata or {}).get("napari_vnet") or {}
        same_result = record.get("model") == arch and record.get("source_layer") == image_layer.name
        placeholder = record.get("placeholder") and source and record.get("source_path") == source
        if not (same_result or placeholder):
            continue
        if getattr(layer, "_undo_history", None):  # edited since it was added
            continue
        return layer
    return None


def replace_result(
    layer, image_layer, labels: np.ndarray, card: ModelCard, info, geometry=None, name=None
):
    """Put a new result into an existing result ``layer`` (no new layer, no re-add).

    Metadata first, then the data, so a listener to the data event (the Scans dock) sees
    the new run's record; the undo history is reset (an undo must not paint strokes of
    the previous result into this one).
    """
    layer.metadata = result_metadata(image_layer, card, info)
    layer.colormap = labels_colormap(card)
    layer.features = class_features(card)
    layer.data = labels
    for attr, value in (geometry if geometry is not None else geometry_kwargs(image_layer)).items():
        if attr in ("units", "axis_labels"):
            continue
        setattr(layer, attr, value)
    if name is not None:
        layer.name = name
    reset = getattr(layer, "_reset_history", None)  # napari's own (private) reset
    if reset is not None:
        reset()
    return layer


def place_result(
    viewer: napari.Viewer,
    image_layer,
    labels: np.ndarray,
    card: ModelCard,
    info,
    geometry,
    *,
    model_name: str,
    replace: bool,
):
    """Show a result of ``image_layer``: in its previous unedited result layer of this
    model when ``replace`` finds one (:func:`previous_result`), else in a new Labels
    layer added to the viewer. Returns ``(layer, True when an existing layer was
    updated)``."""
    previous = None
    if replace:
        previous = previous_result(viewer, image_layer, card.arch, labels.shape)
    if previous is not None:
        name = None
        if (previous.metadata.get("napari_vnet") or {}).get("placeholder"):
            name = unique_layer_name(viewer, f"{image_layer.name} [{model_name}]")
        return replace_result(previous, image_layer, labels, card, info, geometry, name), True
    layer = make_labels_layer(
        viewer, image_layer, labels, card, info, model_name=model_name, geometry=geometry
    )
    viewer.add_layer(layer)
    return layer, False
