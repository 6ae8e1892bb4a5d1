"""What the Segment dock asks of an image layer before a run (no Qt).

Which layers are volumes it can segment (:func:`is_volume`) and why another is refused
(:func:`refusal`), a layer's voxel spacing through the IO geometry contract
(:func:`layer_spacing`), its mismatches with a model card (:func:`layer_issues`) and
whether it looks like a CT in Hounsfield units (:func:`looks_like_ct`).
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


def is_image(layer) -> bool:
    from napari.layers import Image

    return isinstance(layer, Image)


def is_volume(layer) -> bool:
    """A 3D grey-value image layer (not RGB, not an uncertainty map)."""
    from napari_vnet._widgets._uncertainty_layer import is_uncertainty

    volume = is_image(layer) and layer.ndim == 3 and not layer.rgb
    return volume and not is_uncertainty(layer)


def refusal(layer) -> str:
    """Why ``layer`` cannot be segmented (it is not a 3D grey-value image)."""
    if not is_image(layer):
        kind = type(layer).__name__
        return f"'{getattr(layer, 'name', layer)}' is a {kind} layer; choose a 3D image layer."
    if layer.rgb:
        return f"'{layer.name}' is an RGB image; Segment volume needs a 3D grey-value volume."
    shape = "×".join(str(s) for s in layer.data.shape) if not layer.multiscale else "?"
    return (
        f"'{layer.name}' is a {layer.ndim}D image ({shape}); Segment volume needs a 3D "
        "volume (z, y, x). Open a CT/MR volume or a 3D sample (File ▸ Open Sample)."
    )


def layer_spacing(layer) -> tuple[float, float, float]:
    """The image's voxel spacing (z, y, x) in mm, via the IO geometry contract."""
    from napari_vnet.io import layer_to_volume

    try:
        data = layer.data[0] if layer.multiscale else layer.data
        # a zero-byte stand-in of the right shape: never compute a dask array here
        stand_in = np.broadcast_to(np.zeros((), dtype=data.dtype), data.shape)
        vol = layer_to_volume(
            stand_in,
            scale=layer.scale,
            translate=layer.translate,
            affine=layer.affine.affine_matrix,
            rotate=layer.rotate,
            shear=layer.shear,
            metadata=layer.metadata,
        )
        return tuple(float(s) for s in vol.spacing)
    except Exception as exc:  # fall back to the layer scale
        log.warning("layer_to_volume failed for %r: %s", layer.name, exc)
    scale = np.abs(np.asarray(layer.scale, dtype=float))
    lin = np.asarray(layer.affine.linear_matrix, dtype=float)
    scale = scale * np.linalg.norm(lin, axis=0)  # column norms: the affine's own scaling
    return tuple(float(s) for s in scale)


def layer_issues(layer, card) -> list:
    """Mismatches between an image layer and a model card (``[]`` when the check fails:
    a check must never break the dock)."""
    from napari_vnet.workflows.input_check import check_input, value_sample

    meta = (layer.metadata or {}).get("napari_vnet", {}).get("metadata", {})
    try:
        return check_input(
            card,
            shape=tuple(layer.data.shape) if not layer.multiscale else (0, 0, 0),
            spacing=layer_spacing(layer),
            values=None if layer.multiscale else value_sample(layer.data),
            channels=1,
            modality=str(meta.get("modality", "")),
        )
    except Exception as exc:
        log.warning("input check failed: %s", exc)
        return []


def looks_like_ct(layer) -> bool | None:
    """Whether the layer's middle slice looks like a CT in Hounsfield units; None when
    the layer cannot be read."""
    try:
        from napari_vnet.io.layers import looks_like_hu

        data = layer.data[-1] if layer.multiscale else layer.data
        return looks_like_hu(np.asarray(data[data.shape[0] // 2]) if data.ndim >= 3 else data)
    except Exception:  # noqa: BLE001 - an unreadable layer keeps the current choice
        return None
