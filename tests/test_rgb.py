"""Colour (RGB/RGBA) volumes open as one RGB layer (2D and 3D); the Segment dock refuses
them (the models take one grey-value channel) and predict refuses a channel mismatch."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from napari_vnet._reader import napari_get_reader


def _rgb(path, shape, comps=3):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (*shape, comps), dtype=np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(arr, isVector=True), str(path))
    return arr


@pytest.mark.parametrize("shape, comps", [((6, 7), 3), ((4, 6, 7), 3), ((4, 6, 7), 4)])
def test_rgb_is_one_layer(tmp_path, shape, comps):
    arr = _rgb(tmp_path / "colour.mha", shape, comps)
    ((data, kw, kind),) = napari_get_reader(str(tmp_path / "colour.mha"))(
        str(tmp_path / "colour.mha")
    )
    assert kind == "image" and kw["rgb"] is True
    assert np.array_equal(data, arr)
    assert len(kw["scale"]) == len(shape)  # the colour axis is not a spatial one


def test_rgb_volume_in_viewer_and_segment_refuses(make_napari_viewer, tmp_path):
    from napari_vnet._widgets.segment import SegmentWidget

    _rgb(tmp_path / "colour.nrrd", (4, 16, 16))
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(tmp_path / "colour.nrrd"), plugin="napari-vnet")
    assert layer.rgb and layer.ndim == 3 and len(viewer.layers) == 1
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment")
    assert widget.select_weights("unet3d-phantom")
    assert widget.set_image_layer(layer) is False  # refused with a message
    assert not widget.run_button.isEnabled()
    assert "RGB" in widget.run_button.toolTip() or "RGB" in widget.image_note.text()
