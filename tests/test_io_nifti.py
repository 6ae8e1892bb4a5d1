"""The direct NIfTI voxel path gives exactly SimpleITK's values (and falls back to ITK)."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import SimpleITK as sitk

from napari_vnet.io import read_volume

DTYPES = [
    np.uint8,
    np.int8,
    np.int16,
    np.uint16,
    np.int32,
    np.uint32,
    np.int64,
    np.float32,
    np.float64,
]


def _same_as_sitk(path):
    """Both read paths (direct voxels, forced; and the default) equal SimpleITK's reading."""
    assert np.array_equal(read_volume(path).array, read_volume(path, fast_nifti=False).array)
    ref = sitk.ReadImage(str(path))
    vol = read_volume(path, fast_nifti=True)
    expected = sitk.GetArrayFromImage(ref)
    assert vol.array.dtype == expected.dtype
    assert np.array_equal(vol.array, expected)
    assert vol.pixel_type == ref.GetPixelIDTypeAsString()
    assert vol.spacing == tuple(reversed(ref.GetSpacing()))
    assert vol.origin == tuple(reversed(ref.GetOrigin()))
    assert np.array_equal(vol.direction, np.asarray(ref.GetDirection()).reshape(3, 3)[::-1, ::-1])
    return vol


@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_values_types_and_geometry_match_simpleitk(tmp_path, ext, dtype):
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    arr = (
        rng.integers(info.min, info.max, size=(5, 6, 7), dtype=dtype, endpoint=True)
        if info
        else rng.normal(size=(5, 6, 7)).astype(dtype)
    )
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.5, 0.75, 2.0))
    img.SetOrigin((1.0, 2.0, -3.0))
    img.SetDirection((-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))
    sitk.WriteImage(img, str(tmp_path / f"v{ext}"))
    vol = _same_as_sitk(tmp_path / f"v{ext}")
    assert vol.array.flags.owndata  # read straight into our own array
    if ext == ".nii":  # the default for plain .nii; .nii.gz only when memory is tight
        assert read_volume(tmp_path / f"v{ext}").array.flags.owndata


def test_non_finite_floats_become_zero_like_simpleitk(tmp_path):
    arr = np.ones((3, 4, 5), np.float32)
    arr[0, 0, :3] = [np.nan, np.inf, -np.inf]
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "f.nii.gz"))
    vol = _same_as_sitk(tmp_path / "f.nii.gz")
    assert vol.array[0, 0, 0] == 0 and vol.array[0, 0, 3] == 1


def test_scaled_nifti_falls_back_to_itk(tmp_path):
    path = tmp_path / "scaled.nii"
    sitk.WriteImage(
        sitk.GetImageFromArray(np.arange(60, dtype=np.int16).reshape(3, 4, 5)), str(path)
    )
    raw = bytearray(path.read_bytes())
    raw[112:120] = struct.pack("<ff", 0.5, -10.0)  # scl_slope, scl_inter
    path.write_bytes(bytes(raw))
    vol = _same_as_sitk(path)
    assert vol.array.dtype.kind == "f" and vol.array[0, 0, 1] == pytest.approx(-9.5)


def test_big_endian_nifti(tmp_path):
    arr = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5) * 100 - 2000
    head = bytearray(352)
    struct.pack_into(">i", head, 0, 348)
    struct.pack_into(">8h", head, 40, 3, 5, 4, 3, 1, 1, 1, 1)
    struct.pack_into(">hh", head, 70, 4, 16)  # datatype int16, bitpix
    struct.pack_into(">8f", head, 76, 1.0, 0.8, 0.9, 2.5, 1, 1, 1, 1)
    struct.pack_into(">f", head, 108, 352.0)
    struct.pack_into(">f", head, 112, 1.0)
    head[344:348] = b"n+1\0"
    path = tmp_path / "big.nii.gz"
    path.write_bytes(gzip.compress(bytes(head) + arr.astype(">i2").tobytes()))
    vol = _same_as_sitk(path)
    assert np.array_equal(vol.array, arr) and vol.array.dtype == np.int16


def test_2d_and_4d_nifti(tmp_path):
    a2 = np.arange(30, dtype=np.float32).reshape(5, 6)
    sitk.WriteImage(sitk.GetImageFromArray(a2), str(tmp_path / "a2.nii"))
    assert np.array_equal(read_volume(tmp_path / "a2.nii").array, a2)
    a4 = np.arange(2 * 3 * 4 * 5, dtype=np.uint16).reshape(2, 3, 4, 5)
    sitk.WriteImage(sitk.GetImageFromArray(a4, isVector=False), str(tmp_path / "a4.nii.gz"))
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "a4.nii.gz")))
    assert np.array_equal(read_volume(tmp_path / "a4.nii.gz").array, ref)


def test_vector_nifti_uses_itk(tmp_path):
    vec = np.arange(3 * 4 * 5 * 3, dtype=np.float32).reshape(3, 4, 5, 3)
    sitk.WriteImage(sitk.GetImageFromArray(vec, isVector=True), str(tmp_path / "vec.nii"))
    vol = read_volume(tmp_path / "vec.nii")
    assert vol.array.shape == (3, 4, 5, 3) and np.array_equal(vol.array, vec)
    assert vol.metadata["n_components"] == 3
