"""write_volume and the npe2 writers: types, atomicity, source protection, formats."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from napari.layers import Image, Labels

from napari_vnet._writer import write_image, write_labels
from napari_vnet.io import (
    Volume,
    VolumeWriteError,
    read_volume,
    smallest_unsigned_dtype,
    volume_to_layer_kwargs,
    write_volume,
)

FORMATS = [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"]


def _vol(dtype=np.int16):
    arr = (np.arange(3 * 4 * 5).reshape(3, 4, 5) - 20).astype(dtype)
    d = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]])  # a 90 degree turn (oblique in napari)
    return Volume(arr, spacing=(2.0, 0.5, 0.75), origin=(1.0, -2.0, 3.0), direction=d)


@pytest.mark.parametrize(
    "max_value, dtype, sitk_type",
    [
        (1, np.uint8, sitk.sitkUInt8),
        (255, np.uint8, sitk.sitkUInt8),
        (256, np.uint16, sitk.sitkUInt16),
        (70000, np.uint32, sitk.sitkUInt32),
    ],
)
def test_labels_use_smallest_unsigned_type(tmp_path, max_value, dtype, sitk_type):
    arr = np.zeros((3, 4, 5), np.int64)
    arr[1, 2, 3] = max_value
    assert smallest_unsigned_dtype(max_value) == dtype
    out = write_volume(arr, tmp_path / "seg.nii.gz", is_label=True)
    img = sitk.ReadImage(str(out))
    assert img.GetPixelID() == sitk_type
    assert np.array_equal(sitk.GetArrayFromImage(img), arr)


def test_label_rules(tmp_path):
    with pytest.raises(VolumeWriteError, match="non-negative"):
        write_volume(np.full((2, 2, 2), -1, np.int16), tmp_path / "a.nii.gz", is_label=True)
    with pytest.raises(VolumeWriteError, match="whole numbers"):
        write_volume(np.full((2, 2, 2), 0.5), tmp_path / "a.nii.gz", is_label=True)
    # bool masks and names saying "mask" are labels automatically; int64 images get narrowed
    out = write_volume(np.ones((2, 2, 2), bool), tmp_path / "b.nrrd")
    assert sitk.ReadImage(str(out)).GetPixelID() == sitk.sitkUInt8
    out = write_volume(np.full((2, 2, 2), 3, np.int32), tmp_path / "liver_mask.mha")
    assert sitk.ReadImage(str(out)).GetPixelID() == sitk.sitkUInt8
    out = write_volume(np.full((2, 2, 2), -300, np.int64), tmp_path / "ct.mha")
    assert sitk.ReadImage(str(out)).GetPixelID() == sitk.sitkInt16
    out = write_volume(np.full((2, 2, 2), -300, np.int16), tmp_path / "ct2.mha")
    assert sitk.ReadImage(str(out)).GetPixelID() == sitk.sitkInt16


@pytest.mark.parametrize("ext", FORMATS)
@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.uint8])
def test_round_trip_values_and_geometry(tmp_path, ext, dtype):
    vol = _vol(dtype)
    out = write_volume(vol, tmp_path / f"v{ext}")
    back = read_volume(out)
    assert back.array.dtype == vol.array.dtype
    assert np.array_equal(back.array, vol.array)
    assert np.allclose(back.spacing, vol.spacing) and np.allclose(back.origin, vol.origin)
    assert np.allclose(back.direction, vol.direction, atol=1e-6)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # the temporary folder is gone


def test_mhd_pair_and_atomic_replace(tmp_path):
    out = tmp_path / "pair.mhd"
    write_volume(np.zeros((2, 3, 4), np.uint8), out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pair.mhd", "pair.raw"]
    assert "ElementDataFile = pair.raw" in out.read_text()
    before = out.stat().st_ino
    write_volume(np.full((2, 3, 4), 7, np.uint8), out)  # replaces both files
    assert out.stat().st_ino != before  # a new file moved in, not rewritten in place
    assert np.all(read_volume(out).array == 7)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pair.mhd", "pair.raw"]


def test_failed_write_leaves_old_file(tmp_path, monkeypatch):
    out = write_volume(np.full((2, 3, 4), 5, np.uint8), tmp_path / "keep.nii.gz")
    import SimpleITK

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(SimpleITK, "WriteImage", boom)
    with pytest.raises(VolumeWriteError, match="disk full"):
        write_volume(np.zeros((2, 3, 4), np.uint8), out)
    monkeypatch.undo()
    assert np.all(read_volume(out).array == 5)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.nii.gz"]


def test_refuses_to_overwrite_source(tmp_path):
    src = write_volume(_vol(), tmp_path / "ct.nii.gz")
    vol = read_volume(src)
    with pytest.raises(VolumeWriteError, match="overwrite the source image") as err:
        write_volume(vol.array > 0, src, like=vol)
    assert str(src) in str(err.value)
    # a mask layer made on the image carries the image's metadata: still refused
    kw = volume_to_layer_kwargs(vol)
    mask = Labels((vol.array > 0).astype(np.uint8), **kw)
    with pytest.raises(VolumeWriteError, match="source image"):
        write_labels(str(src), mask.data, mask._get_state())
    assert read_volume(src).array.dtype == np.int16  # untouched
    # a new name is fine and keeps the geometry; overwrite_source=True is honoured
    write_labels(str(tmp_path / "ct_seg.nii.gz"), mask.data, mask._get_state())
    write_volume(vol.array + 1, src, like=vol, overwrite_source=True)
    assert np.array_equal(read_volume(src).array, vol.array + 1)


def test_refuses_to_overwrite_mhd_data_file(tmp_path):
    src = write_volume(_vol(), tmp_path / "scan.mhd")
    vol = read_volume(src)
    with pytest.raises(VolumeWriteError, match="source image"):
        write_volume(vol.array, tmp_path / "scan.mhd", like=vol)


def test_bad_targets(tmp_path):
    with pytest.raises(VolumeWriteError, match="unsupported extension"):
        write_volume(np.zeros((2, 2, 2)), tmp_path / "x.png")
    with pytest.raises(VolumeWriteError, match="does not exist"):
        write_volume(np.zeros((2, 2, 2)), tmp_path / "nope" / "x.nii.gz")
    with pytest.raises(VolumeWriteError, match="does not match"):
        write_volume(np.zeros((2, 2, 2)), tmp_path / "x.nii.gz", like=_vol())
    sheared = Volume(np.zeros((2, 2, 2)), direction=np.array([[1, 0.5, 0], [0, 1, 0], [0, 0, 1.0]]))
    with pytest.raises(VolumeWriteError, match="orthonormal"):
        write_volume(sheared, tmp_path / "x.nii.gz")


def test_image_writer_rgb_and_2d(tmp_path):
    rgb = np.zeros((6, 7, 3), np.uint8)
    rgb[..., 1] = 200
    layer = Image(rgb, rgb=True, scale=(0.5, 0.25), translate=(3.0, 4.0))
    (out,) = write_image(str(tmp_path / "photo.nrrd"), layer.data, layer._get_state())
    img = sitk.ReadImage(out)
    assert img.GetNumberOfComponentsPerPixel() == 3 and img.GetSize() == (7, 6)
    assert img.GetSpacing() == (0.25, 0.5) and img.GetOrigin() == (4.0, 3.0)
    assert np.array_equal(sitk.GetArrayFromImage(img), rgb)


def test_mask_derived_with_with_array_is_protected_too(tmp_path):
    src = write_volume(_vol(), tmp_path / "ct.nii.gz")
    ct = read_volume(src)
    mask = ct.with_array(ct.array > 0)  # path=None, but the metadata remembers the source
    with pytest.raises(VolumeWriteError, match="source image"):
        write_volume(mask, src)
    out = write_volume(mask, tmp_path / "ct_mask.nii.gz")
    assert sitk.ReadImage(str(out)).GetPixelID() == sitk.sitkUInt8
