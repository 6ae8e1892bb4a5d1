"""The npe2 reader: what opens as Labels or Image, contrast limits, odd dimensionalities,
and the real napari viewer opening the shared DICOM series with its label map."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from napari_vnet._reader import napari_get_reader
from napari_vnet.io import read_volume


def _write(path, arr, is_vector=False, spacing=None):
    img = sitk.GetImageFromArray(arr, isVector=is_vector)
    if spacing:
        img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))
    return str(path)


def _open(path):
    reader = napari_get_reader(str(path))
    assert reader is not None, path
    return reader(str(path))


@pytest.mark.parametrize(
    "name, arr, kind",
    [
        ("liver_seg.nii.gz", np.full((3, 4, 5), 2, np.int16), "labels"),  # name says seg
        ("Mask.mha", np.full((3, 4, 5), 1.0, np.float32), "labels"),  # whole floats + name
        ("prob_mask.mha", np.full((3, 4, 5), 0.3, np.float32), "image"),  # fractions: not labels
        ("organs.nrrd", np.arange(60).reshape(3, 4, 5) % 4, "labels"),  # few integer values
        ("ct.nii.gz", (np.arange(60).reshape(3, 4, 5) * 37 - 1000).astype(np.int16), "image"),
        ("mr.nii", np.arange(60, dtype=np.float32).reshape(3, 4, 5), "image"),
    ],
)
def test_labels_or_image(tmp_path, name, arr, kind):
    ((data, kw, layer_type),) = _open(_write(tmp_path / name, arr))
    assert layer_type == kind
    assert kw["name"] == name.split(".")[0]
    if kind == "labels":
        assert data.dtype.kind in "iu"
        assert np.array_equal(data, arr)


def test_contrast_limits_ignore_nan_and_inf(tmp_path):
    arr = np.linspace(0, 100, 4 * 50 * 50, dtype=np.float32).reshape(4, 50, 50)
    arr[0, 0, :10] = np.nan
    arr[1, 0, :10] = np.inf
    arr[2, 0, :10] = -np.inf
    ((data, kw, kind),) = _open(_write(tmp_path / "scan.mha", arr))  # NIfTI IO zeroes NaN
    lo, hi = kw["contrast_limits"]
    assert kind == "image" and np.isfinite([lo, hi]).all()
    assert 0 <= lo < 2 and 98 < hi <= 100
    assert np.isnan(data[0, 0, 0])  # the data itself is untouched


def test_constant_image_gets_valid_limits(tmp_path):
    ((_, kw, _),) = _open(_write(tmp_path / "flat.nii.gz", np.full((3, 4, 5), 7.5, np.float32)))
    lo, hi = kw["contrast_limits"]
    assert hi > lo


def test_2d_4d_and_vector_files(tmp_path):
    ((d2, kw2, _),) = _open(
        _write(tmp_path / "slice.nii.gz", np.ones((6, 7), np.float32), spacing=(0.5, 2.0))
    )
    assert d2.shape == (6, 7) and tuple(kw2["scale"]) == (2.0, 0.5)

    arr4 = np.arange(2 * 3 * 4 * 5, dtype=np.int16).reshape(2, 3, 4, 5) * 50
    ((d4, kw4, _),) = _open(_write(tmp_path / "dyn.nii.gz", arr4))
    assert d4.shape == (2, 3, 4, 5) and len(kw4["scale"]) == 4

    rgb = np.zeros((6, 7, 3), np.uint8)
    ((drgb, kwrgb, _),) = _open(_write(tmp_path / "photo.mha", rgb, is_vector=True))
    assert kwrgb.get("rgb") is True and drgb.shape == (6, 7, 3)

    vec = np.random.default_rng(0).normal(size=(3, 4, 5, 3)).astype(np.float32)
    ((dv, kwv, _),) = _open(_write(tmp_path / "field.nrrd", vec, is_vector=True))
    assert kwv["channel_axis"] == -1 and len(kwv["contrast_limits"]) == 3
    assert np.array_equal(dv, vec)

    many = np.zeros((3, 4, 5, 12), np.float32)
    ((dm, kwm, _),) = _open(_write(tmp_path / "dwi.mha", many, is_vector=True))
    assert dm.shape == (12, 3, 4, 5) and len(kwm["scale"]) == 4  # components as a slider axis


def test_values_identical_to_simpleitk(tmp_path):
    rng = np.random.default_rng(3)
    arr = rng.integers(-1024, 3000, size=(7, 9, 11)).astype(np.int16)
    for ext in (".nii.gz", ".nrrd", ".mha", ".mhd", ".gipl"):
        path = _write(tmp_path / f"v{ext}", arr)
        vol = read_volume(path)
        assert np.array_equal(vol.array, sitk.GetArrayFromImage(sitk.ReadImage(path)))
        assert vol.array.flags.writeable  # usable as napari data (painting etc.)


def test_read_array_shares_simpleitk_buffer(tmp_path):
    path = _write(tmp_path / "v.nii.gz", np.zeros((4, 5, 6), np.int16))
    vol = read_volume(path)
    assert not vol.array.flags.owndata and vol.array.base is not None
    vol.array[1, 2, 3] = 9  # writeable, and the image stays alive with the array
    import gc

    gc.collect()
    assert vol.array[1, 2, 3] == 9 and vol.array.sum() == 9


# ----------------------------------------------------------------- real napari viewer


@pytest.mark.gui
def test_viewer_opens_shared_dicom_and_labels(make_napari_viewer, shared_data, tmp_path):
    import napari

    viewer = make_napari_viewer()
    root = shared_data / "ct-dicom-patient-a"
    ct_layers = viewer.open(str(root / "dicom"), plugin="napari-vnet")
    lab_layers = viewer.open(str(root / "labels.nii.gz"), plugin="napari-vnet")
    assert len(ct_layers) == 1 and len(lab_layers) == 1
    ct, lab = ct_layers[0], lab_layers[0]
    assert isinstance(ct, napari.layers.Image) and isinstance(lab, napari.layers.Labels)
    assert ct.name == "CT Body 3.0" and lab.name == "labels"
    assert tuple(ct.contrast_limits) == (-110.0, 190.0)  # DICOM window 40 / 300
    # same physical extent: the flipped label grid covers the CT exactly
    assert np.allclose(
        np.sort(ct.extent.world, axis=0), np.sort(lab.extent.world, axis=0), atol=1e-3
    )
    # a liver voxel of the label map sits on a liver-like CT voxel
    k, j, i = np.argwhere(np.asarray(lab.data) == 5)[1000]
    w = lab.data_to_world((k, j, i))
    ck, cj, ci = np.rint(ct.world_to_data(w)).astype(int)
    assert (ck, cj, ci) == (k, 511 - j, i)
    assert 0 < ct.data[ck, cj, ci] < 250
    # a point in the viewer picks the same label as the data says
    assert lab.get_value(w, world=True) == 5
    # one DICOM file opens its whole series too
    one = sorted((root / "dicom").iterdir())[5]
    (single,) = viewer.open(str(one), plugin="napari-vnet")
    assert single.data.shape == (20, 512, 512)

    # save the labels through napari with our writer; geometry of the source is kept
    out = tmp_path / "labels copy.nrrd"
    lab.save(str(out), plugin="napari-vnet")
    back = sitk.ReadImage(str(out))
    src = sitk.ReadImage(str(root / "labels.nii.gz"))
    assert back.GetDirection() == pytest.approx(src.GetDirection())
    assert back.GetOrigin() == pytest.approx(src.GetOrigin())
    assert back.GetPixelID() == sitk.sitkUInt8
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(src))
    # never over the file it came from (tested on a copy, never on the shared data)
    copy = tmp_path / "labels.nii.gz"
    copy.write_bytes((root / "labels.nii.gz").read_bytes())
    (from_copy,) = viewer.open(str(copy), plugin="napari-vnet")
    with pytest.raises(Exception, match="source image"):
        from_copy.save(str(copy), plugin="napari-vnet")
    viewer.screenshot(str(tmp_path / "shot.png"), canvas_only=True)  # renders without error


@pytest.mark.gui
def test_viewer_opens_2d_4d_rgb_and_vector_files(make_napari_viewer, tmp_path):
    import napari

    viewer = make_napari_viewer()
    paths = {
        "slice": _write(tmp_path / "slice.nii.gz", np.ones((6, 7), np.float32)),
        "dyn": _write(tmp_path / "dyn.nii.gz", np.arange(120, dtype=np.int16).reshape(2, 3, 4, 5)),
        "photo": _write(tmp_path / "photo.mha", np.zeros((6, 7, 3), np.uint8), is_vector=True),
        "field": _write(tmp_path / "field.nrrd", np.ones((3, 4, 5, 3), np.float32), is_vector=True),
        "organs_seg": _write(tmp_path / "organs_seg.nii.gz", np.eye(5, dtype=np.uint8)[None]),
    }
    counts = {name: len(viewer.open(p, plugin="napari-vnet")) for name, p in paths.items()}
    assert counts == {"slice": 1, "dyn": 1, "photo": 1, "field": 3, "organs_seg": 1}
    assert viewer.layers["dyn"].ndim == 4 and viewer.layers["photo"].rgb
    assert isinstance(viewer.layers["organs_seg"], napari.layers.Labels)
    viewer.dims.ndisplay = 3  # and they render in 3D too
    viewer.screenshot(str(tmp_path / "shot.png"), canvas_only=True)
