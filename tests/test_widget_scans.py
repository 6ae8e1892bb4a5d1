"""The "Scans" dock in a real napari viewer: listing, loading, autosave, status."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import SimpleITK as sitk

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("config_dir")]

WAIT_MS = 30_000


def _write(path, shape, spacing, value):
    arr = (np.arange(np.prod(shape)).reshape(shape) % 50 + value).astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin((-3.0, 4.0, 5.0))
    sitk.WriteImage(img, str(path))


@pytest.fixture
def scans(tmp_path, shared_data):
    root = tmp_path / "scans"
    root.mkdir()
    _write(root / "a_ct.nii.gz", (6, 12, 10), (0.8, 0.8, 2.5), 0)
    _write(root / "b_mr.mha", (5, 16, 14), (1.0, 1.0, 3.0), 100)
    _write(root / "c_pet.nrrd", (4, 10, 12), (2.0, 2.0, 2.0), 200)
    (root / "d_corrupt.nii.gz").write_bytes(b"\x1f\x8b garbage" * 30)
    shutil.copytree(shared_data / "ct-dicom-patient-a" / "dicom", root / "patient-a" / "dicom")
    return root


def _make(make_napari_viewer, qtbot, scans, work):
    from napari_vnet._widgets.scans import ScansWidget

    viewer = make_napari_viewer()
    widget = ScansWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Scans")
    widget.set_work_folder(work)
    with qtbot.waitSignal(widget.discovery_finished, timeout=WAIT_MS):
        widget.set_scans_folder(scans)
    return viewer, widget


def _load(qtbot, widget, action):
    with qtbot.waitSignal(widget.scan_loaded, timeout=WAIT_MS) as blocker:
        action()  # a worker, or None when shown at once from the prefetched scan
    return blocker.args[0]


def _rows(widget):
    t = widget.table
    return {t.item(r, 0).text(): t.item(r, 1).text() for r in range(t.rowCount())}


def test_lists_formats_dicom_by_description_and_broken(make_napari_viewer, qtbot, scans, tmp_path):
    viewer, widget = _make(make_napari_viewer, qtbot, scans, tmp_path / "work")
    rows = _rows(widget)
    assert rows == {
        "a_ct.nii.gz": "not opened",
        "b_mr.mha": "not opened",
        "c_pet.nrrd": "not opened",
        "d_corrupt.nii.gz": "broken",
        "patient-a / CT Body 3.0": "not opened",
    }
    r = widget._row_of["b_mr.mha"]
    assert widget.table.item(r, 2).text() == "5 × 16 × 14"
    assert widget.table.item(r, 3).text() == "3, 1, 1"
    widget.set_filter("broken")
    assert [e.name for e in widget.visible_entries()] == ["d_corrupt.nii.gz"]
    assert widget.load_scan("d_corrupt.nii.gz") is None  # broken: not opened
    assert len(viewer.layers) == 0

    # a click on a row loads that scan
    from qtpy.QtCore import Qt

    widget.set_filter("all")
    rect = widget.table.visualItemRect(widget.table.item(widget._row_of["c_pet.nrrd"], 0))
    with qtbot.waitSignal(widget.scan_loaded, timeout=WAIT_MS) as got:
        qtbot.mouseClick(widget.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert got.args[0].key == "c_pet.nrrd"
    assert [lay.name for lay in viewer.layers] == ["c_pet.nrrd"]
    assert _rows(widget)["c_pet.nrrd"] == "opened"


@pytest.mark.slow  # ~25 s on 2 busy cores: reads the 20 x 512 x 512 DICOM series
def test_next_previous_autosave_restore_and_status(make_napari_viewer, qtbot, scans, tmp_path):
    from napari.layers import Image, Labels

    work = tmp_path / "work"
    viewer, widget = _make(make_napari_viewer, qtbot, scans, work)
    first = _load(qtbot, widget, widget.next_scan)
    assert first.name == "a_ct.nii.gz"
    (image,) = viewer.layers
    assert isinstance(image, Image) and image.data.shape == (6, 12, 10)
    assert tuple(image.scale) == pytest.approx((2.5, 0.8, 0.8))

    labels = viewer.add_labels(
        np.zeros(image.data.shape, np.uint8),
        name="liver",
        **{"scale": image.scale, "translate": image.translate},
    )
    labels.data_setitem((np.array([2, 2, 3]), np.array([4, 5, 6]), np.array([1, 1, 1])), 3)
    assert _rows(widget)["a_ct.nii.gz"] == "corrected"
    annotated = labels.metadata.get("annotated_slices")
    assert annotated is not None and annotated["slices"] == [2, 3]

    second = _load(qtbot, widget, widget.next_scan)
    assert second.name == "b_mr.mha"
    # the layers are reused: the image shows b, the Labels layer stays, empty, on b's grid
    assert [lay.name for lay in viewer.layers] == ["b_mr.mha", "liver"]
    assert viewer.layers[0] is image and image.data.shape == (5, 16, 14)
    assert labels.data.shape == (5, 16, 14) and not labels.data.any()
    assert len(labels._undo_history) == 0
    widget.saver.flush()  # the autosave is written in the background
    assert widget.project.saved_labels(second.key) == []  # an unpainted layer is not saved
    saved = widget.project.saved_labels(first.key)
    assert [s["name"] for s in saved] == ["liver"] and saved[0]["path"].is_relative_to(work)
    on_disk = sitk.ReadImage(str(saved[0]["path"]))
    assert on_disk.GetSpacing() == pytest.approx((0.8, 0.8, 2.5))
    assert on_disk.GetOrigin() == pytest.approx((-3.0, 4.0, 5.0))
    assert sitk.GetArrayFromImage(on_disk)[2, 4, 1] == 3

    # PageUp (bound on the viewer) goes back to the first scan
    from napari.utils.key_bindings import KeyBinding

    back = _load(qtbot, widget, lambda: viewer.keymap[KeyBinding.from_str("PageUp")](viewer))
    assert back.key == first.key
    restored = viewer.layers["liver"]
    assert isinstance(restored, Labels)
    assert restored.data[2, 4, 1] == 3 and restored.data.sum() == 9
    assert tuple(restored.scale) == pytest.approx(tuple(viewer.layers["a_ct.nii.gz"].scale))
    assert restored.metadata["annotated_slices"]["slices"] == [2, 3]

    dicom = _load(qtbot, widget, lambda: widget.load_scan("patient-a / CT Body 3.0"))
    assert viewer.layers[0].data.shape == (20, 512, 512)
    assert dicom.kind == "dicom"
    widget.mark_reviewed()
    assert _rows(widget)["patient-a / CT Body 3.0"] == "reviewed"
    widget.set_filter("to do (not reviewed)")
    assert "patient-a / CT Body 3.0" not in [e.name for e in widget.visible_entries()]


def test_autosave_on_close_and_status_survives_reopen(make_napari_viewer, qtbot, scans, tmp_path):
    work = tmp_path / "work"
    viewer, widget = _make(make_napari_viewer, qtbot, scans, work)
    entry = _load(qtbot, widget, lambda: widget.load_scan("c_pet.nrrd"))
    image = viewer.layers[0]
    labels = viewer.add_labels(
        np.zeros(image.data.shape, np.uint8),
        name="lesion",
        scale=image.scale,
        translate=image.translate,
    )
    labels.paint((1, 3, 3), 5, refresh=True)
    assert widget.project.saved_labels(entry.key) == []  # not yet saved: only edited
    viewer.close()  # napari clears the layers, then closes the window
    saved = widget.project.saved_labels(entry.key)
    assert [s["name"] for s in saved] == ["lesion"]

    # a new viewer and dock, same work folder: the settings and the project come back
    from napari_vnet._widgets.scans import ScansWidget

    viewer2 = make_napari_viewer()
    widget2 = ScansWidget(viewer2)
    assert widget2.work_folder == work.resolve()
    assert widget2.scans_folder == scans.resolve()
    qtbot.waitUntil(lambda: len(widget2.entries) == 5, timeout=WAIT_MS)
    assert _rows(widget2)["c_pet.nrrd"] == "corrected"
    _load(qtbot, widget2, lambda: widget2.load_scan("c_pet.nrrd"))
    assert viewer2.layers["lesion"].data[1, 3, 3] == 5
