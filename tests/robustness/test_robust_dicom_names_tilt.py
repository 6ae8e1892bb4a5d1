"""DICOM series with a slice name that is not UTF-8, and sheared (gantry-tilted) series.

A file name with a byte that is not UTF-8 (a Latin-1 name from a Windows share) made the
listing of a series without SeriesInstanceUID raise UnicodeEncodeError, so a scan list
showed every slice as a broken "series" of its own. A gantry-tilted CT (slice positions
stepping along the table, not along the tilted slices' normal) was stacked along the
normal by SimpleITK: every slice shifted in its own plane, by up to ~19 mm, silently.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from napari_vnet.io import list_dicom_series, read_header, read_volume

pytestmark = pytest.mark.skipif(
    sys.platform == "win32", reason="file names that are not UTF-8 are a POSIX thing"
)


def write_series(
    dest: Path,
    array: np.ndarray,
    *,
    uid: str,
    positions: list[np.ndarray],
    row=(1.0, 0.0, 0.0),
    col=(0.0, 1.0, 0.0),
    pixel=(1.0, 1.0),
) -> list[Path]:
    """One DICOM file per slice of ``array`` (z, y, x int16), slice k at ``positions[k]``
    (x, y, z mm) with the given row/column cosines and (row, column) pixel spacing."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for k, plane in enumerate(array):
        image = sitk.GetImageFromArray(plane[None].astype(np.int16))
        image.SetSpacing((pixel[1], pixel[0], 1.0))
        tags = {
            "0008|0060": "CT",
            "0008|103e": "tilt test",
            "0020|000d": "1.2.826.0.1.3680043.8.498.10" if uid else "",
            "0020|000e": uid,
            "0020|0011": "3",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in positions[k]),
            "0020|0037": "\\".join(f"{v:.8f}" for v in (*row, *col)),
            "0028|0030": f"{pixel[0]:g}\\{pixel[1]:g}",
        }
        if uid:
            tags["0008|0018"] = f"{uid}.{k + 1}"
        for key, value in tags.items():
            image.SetMetaData(key, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        path = dest / f"slice_{k:03d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(image)
        out.append(path)
    return out


def volume_data(shape=(6, 12, 14)) -> np.ndarray:
    return ((np.arange(int(np.prod(shape))) * 7) % 251).reshape(shape).astype(np.int16)


# ------------------------------------------------------------- a name that is not UTF-8


@pytest.mark.parametrize("uid", ["1.2.826.0.1.3680043.8.498.91", ""], ids=["uid", "no-uid"])
def test_non_utf8_slice_name_reads_as_the_same_series(tmp_path, uid):
    array = volume_data()
    positions = [np.array([-5.0, 7.0, 2.5 * k - 3.0]) for k in range(len(array))]
    ascii_dir = tmp_path / "ascii"
    files = write_series(ascii_dir, array, uid=uid, positions=positions)
    odd_dir = tmp_path / "latin1"
    shutil.copytree(ascii_dir, odd_dir)
    os.rename(odd_dir / files[2].name, os.fsencode(odd_dir) + b"/slice_\xff.dcm")
    assert b"slice_\xff.dcm" in os.listdir(os.fsencode(odd_dir))

    (ascii_series,) = list_dicom_series(ascii_dir)
    found = list_dicom_series(odd_dir)
    assert len(found) == 1, [s.key for s in found]
    (series,) = found
    assert len(series.files) == len(array)
    assert series.shape == ascii_series.shape == array.shape
    assert read_header(odd_dir)["shape"] == array.shape

    expected = read_volume(ascii_dir)
    vol = read_volume(odd_dir)
    np.testing.assert_array_equal(np.asarray(vol.array), np.asarray(expected.array))
    np.testing.assert_array_equal(np.asarray(vol.array), array)
    np.testing.assert_allclose(vol.spacing, expected.spacing)
    np.testing.assert_allclose(vol.origin, expected.origin)
    np.testing.assert_allclose(vol.direction, expected.direction)


def test_non_utf8_slice_name_lists_one_scan(tmp_path):
    """The scan list (worklist) shows the folder as one readable series, not one broken
    entry per slice."""
    from napari_vnet.workflows.worklist_scan import discover_scans

    array = volume_data()
    positions = [np.array([0.0, 0.0, 2.0 * k]) for k in range(len(array))]
    folder = tmp_path / "scans" / "case"
    files = write_series(folder, array, uid="", positions=positions)
    os.rename(files[4], os.fsencode(folder) + b"/slice_\xe9t\xe9.dcm")
    entries = list(discover_scans(tmp_path / "scans"))
    assert len(entries) == 1, [(e.key, e.error) for e in entries]
    assert entries[0].error is None and entries[0].shape == array.shape


# ------------------------------------------------------------------------ gantry tilt

N, ROWS, COLS = 20, 24, 16
STEP = 2.0  # table feed per slice, mm (along patient z)
P0 = np.array([-8.0, -12.0, 30.0])  # first slice position (x, y, z)
MARKER = (17, 6, 9)  # (k, j, i) of the bright voxel in the acquired slices


def write_tilted(dest: Path, tilt_deg: float) -> np.ndarray:
    """A series acquired with the gantry tilted by ``tilt_deg`` about the x axis: slice
    planes tilted, positions stepping straight along z. Returns the marker's true
    physical point (x, y, z mm)."""
    t = math.radians(tilt_deg)
    row = np.array([1.0, 0.0, 0.0])
    col = np.array([0.0, math.cos(t), math.sin(t)])
    array = np.full((N, ROWS, COLS), 20, np.int16)
    array[MARKER] = 2000
    positions = [P0 + np.array([0.0, 0.0, STEP * k]) for k in range(N)]
    write_series(dest, array, uid="1.2.826.0.1.3680043.8.498.92", positions=positions,
                 row=row, col=col)  # fmt: skip
    k, j, i = MARKER
    return positions[k] + j * col + i * row


def marker_point(vol) -> np.ndarray:
    """The bright voxel's physical point (x, y, z) in the volume read, from its geometry
    (weighted centre of the voxels above the background)."""
    arr = np.asarray(vol.array, float)
    weights = np.clip(arr - 20.0, 0.0, None)
    assert weights.sum() > 0, "the marker is lost"
    idx = np.stack(np.nonzero(weights), axis=1)
    w = weights[weights > 0]
    centre = (idx * w[:, None]).sum(0) / w.sum()  # (k, j, i)
    zyx = np.asarray(vol.origin) + np.asarray(vol.direction) @ (centre * np.asarray(vol.spacing))
    return zyx[::-1]


@pytest.mark.parametrize("tilt", [25.0, -15.0])
def test_tilted_series_puts_the_marker_at_its_true_place_and_warns(tmp_path, tilt, caplog):
    folder = tmp_path / "tilted"
    true_point = write_tilted(folder, tilt)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        vol = read_volume(folder)
    voxel = max(vol.spacing)
    error = float(np.linalg.norm(marker_point(vol) - true_point))
    assert error <= voxel, f"marker {error:.2f} mm from its true place (voxel {voxel:.2f} mm)"
    messages = [str(w.message) for w in caught]
    tilt_msgs = [m for m in messages if "tilt" in m and f"{abs(tilt):.2f} degrees" in m]
    assert tilt_msgs, messages
    assert any("tilt" in r.getMessage() for r in caplog.records)
    assert vol.metadata.get("gantry_tilt") == pytest.approx(abs(tilt), abs=0.01)

    # the grid is orthogonal and holds every slice whole
    d = np.asarray(vol.direction)
    np.testing.assert_allclose(d @ d.T, np.eye(3), atol=1e-6)
    assert vol.array.shape[0] == N and vol.array.shape[2] == COLS
    assert vol.array.shape[1] > ROWS
    # the marker is moved whole (in-plane interpolation keeps its intensity), nothing cut
    excess = np.clip(np.asarray(vol.array, float) - 20.0, 0.0, None).sum()
    assert excess == pytest.approx(1980.0, rel=0.01)
    assert int(np.asarray(vol.array).min()) == 20  # outside the slices: the background
    # the listing (read_header) predicts the geometry read_volume returns
    head = read_header(folder)
    assert tuple(head["shape"]) == vol.array.shape
    np.testing.assert_allclose(head["origin"], vol.origin, atol=1e-6)
    np.testing.assert_allclose(head["spacing"], vol.spacing, atol=1e-6)


def test_untilted_series_is_not_resampled(tmp_path):
    """A straight series (positions on the normal) reads exactly as before, no warning."""
    folder = tmp_path / "straight"
    array = volume_data((5, 10, 12))
    positions = [np.array([1.0, 2.0, 3.0 + 2.5 * k]) for k in range(5)]
    write_series(folder, array, uid="1.2.826.0.1.3680043.8.498.93", positions=positions)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vol = read_volume(folder)
    assert not [w for w in caught if "tilt" in str(w.message)]
    np.testing.assert_array_equal(np.asarray(vol.array), array)
    np.testing.assert_allclose(vol.origin, (3.0, 2.0, 1.0))
    np.testing.assert_allclose(vol.spacing, (2.5, 1.0, 1.0))


def test_scattered_slice_is_warned_not_blown_up(tmp_path):
    """One slice recorded 5 km off in its plane is no tilt to correct: the series is not
    widened into a gigabyte grid, and the warning says it is uncorrected and by how much."""
    folder = tmp_path / "scattered"
    array = volume_data((4, 8, 8))
    positions = [np.array([0.0, 0.0, 2.0 * k]) for k in range(4)]
    positions[2] = np.array([5e6, 0.0, 4.0])
    write_series(folder, array, uid="1.2.826.0.1.3680043.8.498.94", positions=positions)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vol = read_volume(folder)
    assert vol.array.shape == array.shape
    messages = " | ".join(str(w.message) for w in caught)
    assert "NOT corrected" in messages and "5000000.0 mm" in messages, messages
    assert vol.metadata["shear_corrected"] is False
