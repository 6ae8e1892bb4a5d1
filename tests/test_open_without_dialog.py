"""File > Open in a real napari: medical formats and DICOM folders open with napari-vnet
without napari's "Choose reader" dialog, other images keep opening with napari's own
reader, and the reader preferences napari-vnet writes never overwrite the user's."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from napari_vnet._reader import napari_get_reader
from napari_vnet.reader_preferences import (
    PLUGIN_NAME,
    PREFERRED_PATTERNS,
    register_reader_preferences,
)

FORMATS = [".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr", ".gipl", ".gipl.gz", ".hdr"]


def _volume(path):
    arr = (np.arange(4 * 6 * 8).reshape(4, 6, 8) * 7 - 100).astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.8, 0.8, 2.0))
    sitk.WriteImage(img, str(path))
    return arr


def _dicom_series(folder, n=3):
    """A small CT series written by SimpleITK's GDCM writer (one 2D file per slice)."""
    folder.mkdir()
    for k in range(n):
        sl = sitk.GetImageFromArray((np.arange(48).reshape(6, 8) + 10 * k).astype(np.int16))
        sl.SetSpacing((0.7, 0.7))
        sl.SetOrigin((0.0, 0.0, 2.5 * k))
        for tag, value in [
            ("0008|0060", "CT"),
            ("0020|000d", "1.2.826.0.1.3680043.2.1125.1"),
            ("0020|000e", "1.2.826.0.1.3680043.2.1125.1.2"),
            ("0020|0032", f"0\\0\\{2.5 * k}"),
            ("0020|0037", "1\\0\\0\\0\\1\\0"),
            ("0020|0013", str(k + 1)),
            ("0018|0050", "2.5"),
        ]:
            sl.SetMetaData(tag, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(sl)
    return folder


def _open_like_file_menu(viewer, path):
    """What File > Open and drag-and-drop do: ``plugin=None``. napari raises
    MultipleReaderError exactly when it would show its "Choose reader" dialog."""
    return viewer.open(str(path), plugin=None)


def _first_use(viewer):
    """A fresh napari in which napari-vnet has run once (here: its Scans dock opened)."""
    from napari.settings import get_settings

    assert not any(v == PLUGIN_NAME for v in get_settings().plugins.extension2reader.values())
    viewer.window.add_plugin_dock_widget(PLUGIN_NAME, "Scans")


def test_fresh_viewer_opens_every_format_with_napari_vnet(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    _first_use(viewer)
    for ext in FORMATS:
        arr = _volume(tmp_path / f"scan{ext.replace('.', '_')}{ext}")
        (layer,) = _open_like_file_menu(viewer, tmp_path / f"scan{ext.replace('.', '_')}{ext}")
        assert layer.source.reader_plugin == PLUGIN_NAME, ext
        assert np.array_equal(np.asarray(layer.data), arr), ext
        assert layer.scale[-1] == pytest.approx(0.8), ext  # physical spacing, not pixels
    series = _dicom_series(tmp_path / "series")
    layers = _open_like_file_menu(viewer, series)  # a DICOM folder
    assert [ly.source.reader_plugin for ly in layers] == [PLUGIN_NAME]
    assert layers[0].data.shape == (3, 6, 8)
    (one,) = _open_like_file_menu(viewer, series / "slice001.dcm")  # one file: its series
    assert one.source.reader_plugin == PLUGIN_NAME and one.data.shape == (3, 6, 8)


def test_fresh_viewer_opens_shared_dicom_folder(make_napari_viewer, shared_data):
    viewer = make_napari_viewer()
    _first_use(viewer)
    (ct,) = _open_like_file_menu(viewer, shared_data / "ct-dicom-patient-a" / "dicom")
    assert ct.source.reader_plugin == PLUGIN_NAME
    assert ct.data.shape == (20, 512, 512)
    one_file = sorted((shared_data / "ct-dicom-patient-a" / "dicom").iterdir())[3]
    (whole,) = _open_like_file_menu(viewer, one_file)  # no extension: its whole series
    assert whole.source.reader_plugin == PLUGIN_NAME and whole.data.shape == (20, 512, 512)
    (lab,) = _open_like_file_menu(viewer, shared_data / "ct-dicom-patient-a" / "labels.nii.gz")
    assert lab.source.reader_plugin == PLUGIN_NAME and lab.__class__.__name__ == "Labels"


def test_tif_png_and_image_folders_keep_napari_reader(make_napari_viewer, tmp_path):
    import imageio.v3 as iio
    import tifffile

    viewer = make_napari_viewer()
    _first_use(viewer)
    img = (np.arange(32 * 40).reshape(32, 40) % 251).astype(np.uint8)
    tifffile.imwrite(tmp_path / "cells.tif", img)
    iio.imwrite(tmp_path / "photo.png", np.stack([img] * 3, axis=-1))
    assert napari_get_reader(str(tmp_path / "cells.tif")) is None
    (tif,) = _open_like_file_menu(viewer, tmp_path / "cells.tif")
    (png,) = _open_like_file_menu(viewer, tmp_path / "photo.png")
    assert tif.source.reader_plugin == "napari" and np.array_equal(tif.data, img)
    assert png.source.reader_plugin == "napari" and png.rgb
    # a folder of TIFFs (no DICOM): napari-vnet hands it to napari's own folder reader
    stack = tmp_path / "stack"
    stack.mkdir()
    for k in range(3):
        tifffile.imwrite(stack / f"z{k}.tif", img + k)
    (st,) = _open_like_file_menu(viewer, stack)
    assert st.data.shape == (3, 32, 40)


def test_radiance_hdr_goes_to_napari_reader(tmp_path):
    """.hdr is also Radiance HDR: napari-vnet (preferred for *.hdr) reads Analyze pairs
    only and hands other .hdr files to napari's own reader."""
    from napari_vnet._reader import read_medical

    rad = tmp_path / "sky.hdr"
    rad.write_bytes(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 2 +X 2\n" + bytes(16))
    assert napari_get_reader(str(rad)) is not read_medical
    _volume(tmp_path / "brain.hdr")  # an Analyze pair (brain.hdr + brain.img)
    assert (tmp_path / "brain.img").is_file()
    assert napari_get_reader(str(tmp_path / "brain.hdr")) is read_medical
    assert napari_get_reader(str(tmp_path / "brain.img")) is read_medical


def test_manifest_claims_only_what_the_reader_reads():
    from npe2 import PluginManifest

    import napari_vnet

    mf = PluginManifest.from_file(
        os.path.join(os.path.dirname(napari_vnet.__file__), "napari.yaml")
    )
    (reader,) = mf.contributions.readers
    patterns = reader.filename_patterns
    assert "*" not in patterns
    for p in patterns:
        if p.startswith("*."):  # every claimed ending gets a reader function
            name = "x" + p[1:]
            assert napari_get_reader(name) is not None or p in {"*.dcm", "*.dicom", "*.ima", "*.zip"}, p
    # no ending napari's own reader (imageio/tifffile) reads is claimed
    from fnmatch import fnmatch

    others = [
        "a.tif",
        "a.tiff",
        "a.png",
        "a.jpg",
        "a.npy",
        "a.csv",
        "a.zarr",
        "a.h264",
        "a.mp4",
        "a.mnc2",
        "a.ome.tif",
        "a.h5",
        "a.hdf5",
        "a.obj",
        "a.py",
        "a.gif",
    ]
    for name in others:
        assert not any(fnmatch(name, p.lower()) for p in patterns), name


def test_preferences_never_overwrite_the_users_choice(make_napari_viewer):
    from napari.settings import get_settings

    make_napari_viewer()  # resets napari's settings
    settings = get_settings()
    settings.plugins.extension2reader = {"*.nii.gz": "some-other-plugin"}
    added = register_reader_preferences()
    prefs = settings.plugins.extension2reader
    assert prefs["*.nii.gz"] == "some-other-plugin"
    assert "*.nii.gz" not in added and prefs["*.mha"] == PLUGIN_NAME
    assert prefs["*" + os.sep] == PLUGIN_NAME
    assert not any(p in prefs for p in ("*.tif", "*.png", "*.npy", "*.zarr", "*"))
    assert register_reader_preferences() == []  # written once
    assert set(PREFERRED_PATTERNS) <= set(prefs)


def test_dialog_choice_of_napari_vnet_sets_preferences(make_napari_viewer, tmp_path):
    """A user who picks napari-vnet once in napari's dialog is never asked again."""
    from napari.settings import get_settings

    viewer = make_napari_viewer()
    _volume(tmp_path / "a.nii.gz")
    shutil.copy(tmp_path / "a.nii.gz", tmp_path / "b.nii.gz")
    viewer.open(str(tmp_path / "a.nii.gz"), plugin=PLUGIN_NAME)  # the dialog's choice
    assert get_settings().plugins.extension2reader["*.nii.gz"] == PLUGIN_NAME
    (b,) = _open_like_file_menu(viewer, tmp_path / "b.nii.gz")
    assert b.source.reader_plugin == PLUGIN_NAME


def test_cli_sets_and_removes_preferences_before_napari_starts(tmp_path):
    """`napari-vnet napari-readers` in a fresh napari configuration (a subprocess)."""
    import subprocess
    import sys

    env = dict(os.environ, NAPARI_CONFIG=str(tmp_path / "settings.yaml"))
    env.pop("DISPLAY", None)  # no window needed

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "napari_vnet.cli", "napari-readers", *args],
            capture_output=True, text=True, timeout=300, env=env,
        )  # fmt: skip

    first = run()
    assert first.returncode == 0, first.stderr
    assert "*.nii.gz" in first.stdout
    saved = (tmp_path / "settings.yaml").read_text()
    assert "'*.nii.gz': napari-vnet" in saved or "*.nii.gz: napari-vnet" in saved
    assert "(already set)" in run().stdout
    removed = run("--remove")
    assert removed.returncode == 0 and "removed" in removed.stdout
    assert "napari-vnet" not in (tmp_path / "settings.yaml").read_text()
