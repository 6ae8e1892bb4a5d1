"""Bad and unusual files through the reader entry point (napari_get_reader + the reader
it returns) and through a real napari viewer: a clear error naming the file, or correct
handling; the viewer keeps running and no layer is added or replaced by a failed open."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import (
    BAD_FILE_CASES,
    assert_names,
    copy_dicom_series,
    make_bad_file,
    small_volume,
    write_dicom_series,
    write_image,
)
from napari_vnet._reader import napari_get_reader, read_medical
from napari_vnet.io import VolumeReadError, read_volume


def _read(path):
    """What napari does with a path: ask for a reader, then call it."""
    reader = napari_get_reader(str(path))
    assert reader is not None, f"napari-vnet does not offer to read {path}"
    return reader(str(path))


# ------------------------------------------------------------------ broken files


@pytest.mark.parametrize("kind", BAD_FILE_CASES)
def test_broken_file_gives_error_naming_file(tmp_path, kind):
    path = make_bad_file(kind, tmp_path)
    napari_get_reader(str(path))  # never raises, whatever it returns
    with pytest.raises(VolumeReadError) as err:
        read_medical(str(path))
    assert_names(str(err.value), path)
    expected = {
        "empty": "empty",
        "truncated": "truncated",
        "gzip_of_garbage": "no image format",
        "wrong_extension": "no image format",
        "header_larger_than_data": "truncated",
        "non_image_dicom": "not a readable DICOM image",
    }[kind]
    assert expected in err.value.problem


def test_folder_without_images(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("no images here")
    (folder / "table.csv").write_text("a,b\n1,2\n")
    reader = napari_get_reader(str(folder))  # None, or napari's own folder reader
    assert reader is None or not reader.__module__.startswith("napari_vnet")
    with pytest.raises(VolumeReadError, match="no DICOM image series") as err:
        read_medical(str(folder))
    assert_names(str(err.value), folder)


# ------------------------------------------------------------------ odd but valid files


def test_2d_image_opens_as_2d(tmp_path):
    data = np.linspace(-100, 400, 10 * 12, dtype=np.float32).reshape(10, 12)
    ((array, kw, kind),) = _read(write_image(tmp_path / "slice.nii.gz", data))
    assert kind == "image" and array.shape == (10, 12) and len(kw["scale"]) == 2
    np.testing.assert_array_equal(array, data)


def test_4d_time_series_opens_with_time_axis(tmp_path):
    data = np.linspace(0, 1000, 3 * 4 * 10 * 12, dtype=np.float32).reshape(3, 4, 10, 12)
    ((array, kw, kind),) = _read(write_image(tmp_path / "dynamic.nii.gz", data))
    assert kind == "image" and array.shape == (3, 4, 10, 12) and len(kw["scale"]) == 4
    np.testing.assert_array_equal(array, data)


def test_three_component_vector_image_becomes_channels(tmp_path):
    data = np.random.default_rng(0).normal(size=(4, 10, 12, 3)).astype(np.float32)
    ((array, kw, kind),) = _read(write_image(tmp_path / "field.nrrd", data, vector=True))
    assert kind == "image" and kw["channel_axis"] == -1 and array.shape == (4, 10, 12, 3)
    assert len(kw["contrast_limits"]) == 3


@pytest.mark.parametrize("ext", [".mha", ".nii.gz"])
def test_float_image_with_nan_and_inf(tmp_path, ext):
    data = np.random.default_rng(1).normal(size=(4, 10, 12)).astype(np.float32)
    data[0, 0, 0], data[1, 1, 1], data[2, 2, 2] = np.nan, np.inf, -np.inf
    ((array, kw, kind),) = _read(write_image(tmp_path / f"nan{ext}", data))
    assert kind == "image" and array.shape == data.shape
    lo, hi = kw["contrast_limits"]
    assert np.isfinite([lo, hi]).all() and lo < hi  # display range from finite voxels
    finite = np.isfinite(data)
    np.testing.assert_array_equal(array[finite], data[finite])


def test_64_bit_float_image(tmp_path):
    data = np.random.default_rng(2).normal(size=(5, 6, 7)) * 1e6
    ((array, kw, kind),) = _read(write_image(tmp_path / "f64.nrrd", data))
    assert kind == "image" and array.dtype == np.float64
    np.testing.assert_array_equal(array, data)


@pytest.mark.parametrize("shape", [(1, 1, 30), (30, 1, 1)])
def test_thin_volume(tmp_path, shape):
    data = np.linspace(-5, 5, 30, dtype=np.float32).reshape(shape)
    ((array, kw, _kind),) = _read(write_image(tmp_path / "thin.mha", data))
    assert array.shape == shape and len(kw["scale"]) == 3
    np.testing.assert_array_equal(array, data)


@pytest.mark.parametrize("folder", ["my scans", "Patiënt Müller ñ 東京", "a b/ç d"])
def test_paths_with_spaces_and_non_ascii(tmp_path, folder):
    d = tmp_path / folder
    d.mkdir(parents=True)
    data = small_volume().astype(np.float32)
    ((array, kw, _kind),) = _read(write_image(d / "Bauch CT ä.nii.gz", data))
    np.testing.assert_array_equal(array, data)
    assert kw["name"] == "Bauch CT ä"


# ------------------------------------------------------------------ DICOM


def test_dicom_folder_with_two_series_gives_one_layer_each(tmp_path, shared_data):
    folder = tmp_path / "export"
    copy_dicom_series(shared_data, folder)
    write_dicom_series(
        folder, small_volume((5, 16, 16)), uid="1.2.826.0.1.3680043.8.498.99", description="scout"
    )
    layers = _read(folder)
    shapes = sorted(np.asarray(data).shape for data, _kw, _k in layers)
    assert shapes == [(5, 16, 16), (20, 512, 512)]
    assert len({kw["name"] for _d, kw, _k in layers}) == 2
    # the core API asks which one, listing both
    with pytest.raises(VolumeReadError, match="2 DICOM series") as err:
        read_volume(folder)
    assert "scout" in str(err.value) and "CT Body" in str(err.value)
    assert read_volume(folder, series=1).shape in {(5, 16, 16), (20, 512, 512)}


def test_dicom_folder_with_missing_slice_warns(tmp_path, shared_data):
    folder = tmp_path / "gap"
    copy_dicom_series(shared_data, folder, skip=(10,))
    with pytest.warns(UserWarning, match="irregular slice spacing") as rec:
        ((array, kw, _kind),) = _read(folder)
    assert str(folder) in str(rec[0].message)
    assert array.shape == (19, 512, 512)
    assert "irregular_spacing" in kw["metadata"]["napari_vnet"]["metadata"]


def test_complete_dicom_series_does_not_warn(tmp_path, shared_data, recwarn):
    folder = tmp_path / "ok"
    copy_dicom_series(shared_data, folder)
    _read(folder)
    assert not [w for w in recwarn if "irregular" in str(w.message)]


def test_non_image_dicom_next_to_a_series_is_skipped(tmp_path, shared_data):
    from conftest import non_image_dicom

    folder = tmp_path / "with_report"
    copy_dicom_series(shared_data, folder)
    non_image_dicom(folder / "zz_report.dcm")
    ((array, _kw, _kind),) = _read(folder)
    assert array.shape == (20, 512, 512)
