"""Radiological display in a real napari viewer: CT windows, camera orientation per view,
anatomical axis labels and millimetre units; the window presets."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from napari_vnet.io import Volume, display_range
from napari_vnet.io.layers import ANATOMICAL_AXIS_LABELS, WINDOW_PRESETS, looks_like_hu


def _vol(arr, **meta):
    return Volume(
        array=arr, spacing=(2.0, 1.0, 1.0), origin=(0, 0, 0), direction=np.eye(3), metadata=meta
    )


def _ct_like(shape=(8, 32, 32), seed=0):
    rng = np.random.default_rng(seed)
    a = np.full(shape, -1000, np.int16)  # air around the body
    a[:, 6:26, 6:26] = rng.normal(50, 20, (shape[0], 20, 20)).astype(np.int16)  # soft tissue
    a[:, 14:18, 14:18] = 700  # bone
    return a


def test_window_rules():
    ct = _ct_like()
    assert looks_like_hu(ct)
    assert display_range(_vol(ct)) == (-160.0, 240.0)  # soft tissue, not percentiles
    assert display_range(_vol(ct, window_center=50, window_width=350)) == (-125.0, 225.0)
    mr = np.abs(_ct_like()).astype(np.int16) // 3  # MR: non-negative, arbitrary scale
    assert not looks_like_hu(mr)
    lo, hi = display_range(_vol(mr, modality="MR"))
    assert (lo, hi) == tuple(np.percentile(mr, (0.5, 99.5)))
    # a CT of HU-like values labelled MR keeps the percentile window (the header wins)
    assert display_range(_vol(ct, modality="MR")) != (-160.0, 240.0)
    assert not looks_like_hu(np.linspace(0, 1, 1000, dtype=np.float32))


def test_shared_ct_layers_radiological(make_napari_viewer, shared_data):
    import napari

    viewer = make_napari_viewer()
    root = shared_data / "ct-dicom-patient-a"
    (ct,) = viewer.open(str(root / "dicom"), plugin="napari-vnet")
    (lab,) = viewer.open(str(root / "labels.nii.gz"), plugin="napari-vnet")
    meta = ct.metadata["napari_vnet"]["metadata"]
    if meta.get("window_width"):  # the header's window
        c, w = float(meta["window_center"]), float(meta["window_width"])
        assert tuple(ct.contrast_limits) == pytest.approx((c - w / 2, c + w / 2))
    else:
        assert tuple(ct.contrast_limits) == pytest.approx((-160, 240))
    assert isinstance(lab, napari.layers.Labels)
    for layer in (ct, lab):
        assert tuple(layer.axis_labels) == ANATOMICAL_AXIS_LABELS
        assert [str(u) for u in layer.units] == ["millimeter"] * 3
    assert tuple(viewer.dims.axis_labels) == ANATOMICAL_AXIS_LABELS
    # axial: napari's default (anterior at the top, patient's right on the screen's left)
    assert tuple(_camera(viewer).orientation2d) == ("down", "right")
    viewer.dims.order = (1, 0, 2)  # coronal: displays z (vertical) and x
    assert tuple(_camera(viewer).orientation2d) == ("up", "right")  # superior up
    viewer.dims.order = (2, 0, 1)  # sagittal: z and y
    assert tuple(_camera(viewer).orientation2d) == ("up", "right")
    viewer.dims.order = (0, 1, 2)
    assert tuple(_camera(viewer).orientation2d) == ("down", "right")
    viewer.dims.ndisplay = 3  # seen from the feet, not mirrored
    assert tuple(_camera(viewer).orientation) == ("away", "down", "right")
    viewer.dims.ndisplay = 2
    viewer.layers.clear()  # no medical layer left: napari's default again
    assert tuple(_camera(viewer).orientation) == ("towards", "down", "right")


def _camera(viewer):
    """napari >= 0.9 keeps the camera on ``viewer.scene`` (``viewer.camera`` is deprecated)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def test_superior_is_up_on_screen_in_coronal(make_napari_viewer, tmp_path):
    """A bright voxel at the top (superior) of the body shows above one at the bottom."""
    viewer = make_napari_viewer(show=True)
    arr = np.zeros((10, 4, 12), np.int16) - 1000
    arr[8, 2, 6] = 1000  # superior (high z)
    arr[1, 2, 6] = 500  # inferior
    img = sitk.GetImageFromArray(arr)
    sitk.WriteImage(img, str(tmp_path / "ct.nii.gz"))
    (layer,) = viewer.open(str(tmp_path / "ct.nii.gz"), plugin="napari-vnet")
    layer.contrast_limits = (-1000, 1000)  # superior voxel white, inferior one mid-grey
    layer.interpolation2d = "nearest"
    viewer.dims.order = (1, 0, 2)
    viewer.dims.set_point(1, 2)
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)[..., 0].astype(int)
    sup_rows = np.nonzero(shot > 230)[0]
    inf_rows = np.nonzero((shot > 150) & (shot < 220))[0]
    assert sup_rows.size and inf_rows.size
    assert sup_rows.mean() < inf_rows.mean()  # superior above inferior on the screen


@pytest.mark.parametrize("preset", list(WINDOW_PRESETS))
def test_window_presets(make_napari_viewer, preset):
    from napari_vnet._widgets._display import set_window, window_lung

    viewer = make_napari_viewer()
    layer = viewer.add_image(_ct_like(), contrast_limits=(-160, 240))
    lvl, wid = WINDOW_PRESETS[preset]
    assert set_window(layer, preset) == (lvl - wid / 2, lvl + wid / 2)
    assert tuple(layer.contrast_limits) == pytest.approx((lvl - wid / 2, lvl + wid / 2))
    window_lung(viewer)  # the menu command acts on the selected layer
    assert tuple(layer.contrast_limits) == pytest.approx((-1350, 150))


def test_preset_menu_is_contributed(make_napari_viewer):
    from napari._app_model import get_app_model

    make_napari_viewer()
    app = get_app_model()
    ids = [
        getattr(i, "command", None) and i.command.id
        for i in app.menus.get_menu("napari-vnet.ct_window")
    ]
    assert "napari-vnet.window_soft_tissue" in ids and "napari-vnet.window_brain" in ids
