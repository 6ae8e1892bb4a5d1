"""Radiological display in napari: camera orientation per view and CT window presets.

World coordinates of every layer napari-vnet opens are LPS millimetres in (z, y, x)
order (see ``napari_vnet.io.layers``). napari draws the vertical screen axis downwards,
which is right for an axial slice (anterior at the top, the patient's right on the
screen's left) but puts the feet at the top of coronal and sagittal slices, and its
default 3D camera shows the mirror image of an LPS volume. :func:`install_radiological_view`
keeps the camera in the radiological convention whatever axes are displayed:

* 2D: superior up when the vertical axis is z, otherwise down; horizontal axes run to the
  right (axial: patient's left on the screen's right; sagittal: posterior on the right);
* 3D: the same vertical rule, with the depth direction chosen so that the volume is not
  mirrored (the view from the feet, as an axial slice is read).

It only acts while the viewer holds a layer opened by napari-vnet and gives the camera
back to napari's default orientation when the last one is removed. The viewer's
:class:`~napari_vnet._widgets._session.Session` installs it (once per viewer).

The window presets are npe2 commands (Layers > Visualize > CT window ...) acting on the
selected Image layer.
"""

from __future__ import annotations

import logging

import napari

from napari_vnet.io.layers import META_KEY, WINDOW_PRESETS, window_limits

log = logging.getLogger(__name__)

_INSTALLED = "_napari_vnet_radiological"
_DEFAULT_ORIENTATION = ("towards", "down", "right")


def _has_medical_layer(viewer) -> bool:
    return any(META_KEY in (layer.metadata or {}) for layer in viewer.layers)


def radiological_orientation(displayed: tuple[int, ...], ndim: int) -> tuple[str, ...] | None:
    """(vertical, horizontal) in 2D or (depth, vertical, horizontal) in 3D for the
    displayed dims, or None when a displayed axis is not one of the last three (z, y, x).

    The third-from-last world axis is z (inferior -> superior): superior goes up.
    """
    rel = [d - ndim for d in displayed]
    if any(r < -3 for r in rel):
        return None
    vertical = "up" if rel[-2] == -3 else "down"
    if len(rel) == 2:
        return (vertical, "right")
    return ("away", vertical, "right")  # depth fixed by handedness in apply_radiological_view


def _permutation_parity(rel: list[int]) -> int:
    perm = [r + 3 for r in rel]  # 0 = z, 1 = y, 2 = x
    parity = 0
    for i in range(len(perm)):
        for j in range(i + 1, len(perm)):
            parity ^= perm[i] > perm[j]
    return parity


def apply_radiological_view(viewer: napari.Viewer) -> None:
    """Set the camera orientation for the axes now displayed (see module docstring)."""
    scene = getattr(viewer, "scene", None)  # napari >= 0.9; viewer.camera before
    camera = scene.camera if scene is not None else viewer.camera
    if not _has_medical_layer(viewer):
        if getattr(viewer, _INSTALLED, None) == "applied":
            camera.orientation = _DEFAULT_ORIENTATION
            setattr(viewer, _INSTALLED, "installed")
        return
    displayed = tuple(viewer.dims.displayed)
    want = radiological_orientation(displayed, viewer.dims.ndim)
    if want is None:
        return
    if len(want) == 2:
        camera.orientation2d = want
    else:
        # LPS is right-handed as (x, y, z), so napari (which calls its (0, 1, 2) default
        # right-handed) must show the (z, y, x) order left-handed to avoid a mirror image;
        # an odd permutation of the displayed axes flips that once more
        rel = [d - viewer.dims.ndim for d in displayed]
        target = "right" if _permutation_parity(rel) else "left"
        for depth in ("away", "towards"):
            camera.orientation = (depth, want[1], want[2])
            if str(getattr(camera.handedness, "value", camera.handedness)) == target:
                break
    setattr(viewer, _INSTALLED, "applied")


def centre_on_layer(viewer: napari.Viewer, layer, *, only_if_outside: bool = True) -> bool:
    """Show ``layer``: the dims point (the slice) goes to the middle of its world extent
    and the camera fits it, when the current slice lies outside it (a second patient
    opened into a viewer whose world extent now spans both would otherwise show an
    empty slice). Returns whether the view moved."""
    import numpy as np

    ext = np.asarray(layer.extent.world, float)  # (2, layer.ndim)
    off = viewer.dims.ndim - ext.shape[1]
    if off < 0:
        return False
    lo, hi = ext[0], ext[1]
    tol = np.maximum(np.abs(np.asarray(layer.extent.step, float)), 1e-6) / 2
    point = np.asarray(viewer.dims.point, float)[off:]
    axes = [d - off for d in viewer.dims.not_displayed if d >= off]
    outside = any(not lo[a] - tol[a] <= point[a] <= hi[a] + tol[a] for a in axes)
    if only_if_outside and not outside:
        return False
    for a in axes:
        viewer.dims.set_point(a + off, float((lo[a] + hi[a]) / 2))
    viewer.fit_to_view(layers=[layer])
    return True


def _centre_new_patient(viewer: napari.Viewer, event) -> None:
    """A napari-vnet image added beside other layers: show it (see centre_on_layer)."""
    from napari.layers import Image

    layer = getattr(event, "value", None)
    if not isinstance(layer, Image) or META_KEY not in (layer.metadata or {}):
        return
    if len(viewer.layers) > 1:
        centre_on_layer(viewer, layer)


def install_radiological_view(viewer: napari.Viewer | None) -> None:
    """Keep ``viewer``'s camera radiological as dims and layers change (idempotent)."""
    if viewer is None or getattr(viewer, _INSTALLED, None):
        return
    setattr(viewer, _INSTALLED, "installed")

    def _update(event=None):
        try:
            apply_radiological_view(viewer)
        except Exception:  # display nicety: never break the viewer over it
            log.debug("radiological orientation not applied", exc_info=True)

    viewer.dims.events.order.connect(_update)
    viewer.dims.events.ndisplay.connect(_update)
    viewer.dims.events.ndim.connect(_update)
    viewer.layers.events.inserted.connect(_update)
    viewer.layers.events.removed.connect(_update)

    def _new_layer(event):
        try:
            _centre_new_patient(viewer, event)
        except Exception:  # display nicety: never break the viewer over it
            log.debug("new layer not centred", exc_info=True)

    viewer.layers.events.inserted.connect(_new_layer)
    _update()


# ------------------------------------------------------------------ window presets


def set_window(layer, preset: str) -> tuple[float, float]:
    """Set ``layer``'s contrast limits to a CT window preset (or "DICOM" = the header's)."""
    if preset == "DICOM":
        meta = (layer.metadata or {}).get(META_KEY, {}).get("metadata", {})
        if not meta.get("window_width"):
            raise ValueError(f"layer {layer.name!r} has no window in its DICOM header")
        limits = window_limits(meta["window_center"], meta["window_width"])
    else:
        limits = window_limits(*WINDOW_PRESETS[preset])
    lo, hi = layer.contrast_limits_range
    if limits[0] < lo or limits[1] > hi:  # widen the slider's range so the window fits
        layer.contrast_limits_range = (min(lo, limits[0]), max(hi, limits[1]))
    layer.contrast_limits = limits
    return limits


def _preset_command(preset: str):
    def command(viewer: napari.viewer.Viewer) -> None:
        from napari.layers import Image
        from napari.utils.notifications import show_info

        layer = viewer.layers.selection.active
        if not isinstance(layer, Image) or layer.rgb:
            show_info("Select a CT image layer to set its window.")
            return
        set_window(layer, preset)

    command.__name__ = f"window_{preset.replace(' ', '_')}"
    return command


window_soft_tissue = _preset_command("soft tissue")
window_lung = _preset_command("lung")
window_bone = _preset_command("bone")
window_brain = _preset_command("brain")
