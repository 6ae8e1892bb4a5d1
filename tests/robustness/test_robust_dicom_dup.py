"""A DICOM series with one slice stored twice (a copied or re-sent file)."""

from __future__ import annotations

import shutil
import warnings

import numpy as np

from conftest import small_volume, write_dicom_series
from napari_vnet.io import list_dicom_series, read_volume


def test_duplicated_slice_keeps_the_spacing_and_says_duplicate(tmp_path):
    folder = tmp_path / "series"
    array = small_volume((5, 8, 10))
    files = write_dicom_series(folder, array, uid="1.2.826.0.1.3680043.8.498.55", description="CT")
    shutil.copyfile(files[2], folder / "copy_of_slice3.dcm")
    (series,) = list_dicom_series(folder)
    assert series.shape == (5, 8, 10) and abs(series.spacing[0] - 2.0) < 1e-6
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vol = read_volume(folder)
    messages = " | ".join(str(w.message) for w in caught)
    assert "duplicated slice" in messages and "copy_of_slice3.dcm" in messages, messages
    assert "missing" not in messages, messages
    assert vol.array.shape == (5, 8, 10) and abs(vol.spacing[0] - 2.0) < 1e-6
    np.testing.assert_array_equal(np.asarray(vol.array), array)
