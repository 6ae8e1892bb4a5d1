"""Bad input gives a VolumeReadError naming the file and the problem; odd paths work."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import SimpleITK as sitk

from napari_vnet._reader import napari_get_reader
from napari_vnet.io import VolumeReadError, read_header, read_volume, write_volume


def _good_nifti(path):
    img = sitk.GetImageFromArray(np.arange(4 * 8 * 8, dtype=np.int16).reshape(4, 8, 8))
    sitk.WriteImage(img, str(path))
    return path


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".mha", ".nrrd"])
def test_empty_file(tmp_path, ext):
    path = tmp_path / f"empty{ext}"
    path.write_bytes(b"")
    with pytest.raises(VolumeReadError, match="empty") as err:
        read_volume(path)
    assert str(path) in str(err.value)
    with pytest.raises(VolumeReadError):
        read_header(path)


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".mha", ".nrrd", ".gipl", ".gipl.gz", ".hdr"])
def test_truncated_file(tmp_path, ext):
    full = _good_nifti(tmp_path / f"full{ext}").read_bytes()
    path = tmp_path / f"cut{ext}"
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(VolumeReadError) as err:
        read_volume(path)
    assert str(path) in str(err.value)
    assert err.value.problem  # a reason, not an empty message


def test_wrong_content_for_extension(tmp_path):
    path = tmp_path / "notes.nii"
    path.write_text("this is not an image\n" * 50)
    with pytest.raises(VolumeReadError) as err:
        read_volume(path)
    assert str(path) in str(err.value)
    # a real NIfTI saved under a .nrrd name is not silently misread either
    gz = gzip.decompress(_good_nifti(tmp_path / "x.nii.gz").read_bytes())
    wrong = tmp_path / "x.nrrd"
    wrong.write_bytes(gz)
    with pytest.raises(VolumeReadError):
        read_volume(wrong)


def test_unsupported_extension_and_missing_path(tmp_path):
    png = tmp_path / "photo.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(VolumeReadError, match="unsupported file type '.png'"):
        read_volume(png)
    assert napari_get_reader(str(png)) is None
    with pytest.raises(VolumeReadError, match="no such file"):
        read_volume(tmp_path / "missing.nii.gz")


def test_folder_without_dicom(tmp_path):
    (tmp_path / "readme.txt").write_text("hello")
    (tmp_path / "sub").mkdir()
    reader = napari_get_reader(str(tmp_path))  # None, or napari's own folder reader
    assert reader is None or not reader.__module__.startswith("napari_vnet")
    with pytest.raises(VolumeReadError, match="no DICOM image series") as err:
        read_volume(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_fake_dicom_file(tmp_path):
    path = tmp_path / "slice.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM" + b"garbage" * 10)
    assert napari_get_reader(str(path)) is not None  # cheap check says "maybe"
    with pytest.raises(VolumeReadError, match="DICOM") as err:
        napari_get_reader(str(path))(str(path))
    assert str(path) in str(err.value)


@pytest.mark.parametrize("bad", [None, 42, "", ["a.nii", "b.nii"], "/no/such/dir/", b"\xff"])
def test_get_reader_never_raises(bad):
    assert napari_get_reader(bad) is None or callable(napari_get_reader(bad))


def test_error_pickles():
    import pickle

    err = pickle.loads(pickle.dumps(VolumeReadError("/x/y.nii", "the file is empty")))
    assert str(err) == "cannot read /x/y.nii: the file is empty" and err.path == "/x/y.nii"


@pytest.mark.parametrize("ext", [".nii.gz", ".mhd", ".nrrd"])
def test_paths_with_spaces_and_non_ascii(tmp_path, ext):
    folder = tmp_path / "Müller data ü 数据"
    folder.mkdir()
    arr = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    out = write_volume(arr, folder / f"seg mask é{ext}")
    vol = read_volume(out)
    assert np.array_equal(vol.array, arr)
    assert napari_get_reader(str(out)) is not None
    assert read_header(out)["shape"] == (3, 4, 5)


def test_truncated_analyze_image_file(tmp_path):
    hdr = _good_nifti(tmp_path / "pair.hdr")
    img = hdr.with_suffix(".img")
    img.write_bytes(img.read_bytes()[:100])
    for path in (hdr, img):
        with pytest.raises(VolumeReadError, match="truncated") as err:
            read_volume(path)
        assert str(img) in str(err.value)
