"""The Scans dock in a real napari viewer: another scans folder is another project (a scan
with the same name never shows the first patient's labels or status), and a remembered
folder that cannot be used never stops the dock from opening."""

from __future__ import annotations

import json

import napari  # noqa: F401
import numpy as np
import pytest

from conftest import small_volume, write_image

pytestmark = pytest.mark.gui

WAIT_MS = 60_000


def _dock(make_napari_viewer):
    from napari_vnet._widgets.scans import ScansWidget

    viewer = make_napari_viewer()
    widget = ScansWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Scans")
    return viewer, widget


def _list(qtbot, widget, folder):
    with qtbot.waitSignal(widget.discovery_finished, timeout=WAIT_MS):
        widget.set_scans_folder(folder)
    return {e.key: e for e in widget.entries}


def test_other_scans_folder_is_another_project(make_napari_viewer, qtbot, tmp_path, config_dir):
    first, second = tmp_path / "patient-a", tmp_path / "patient-b"
    for i, folder in enumerate((first, second)):
        folder.mkdir()
        write_image(folder / "ct0.nii.gz", small_volume() + 100 * i)
    _viewer, widget = _dock(make_napari_viewer)
    entry = _list(qtbot, widget, first)["ct0.nii.gz"]
    labels = np.zeros((6, 10, 12), np.uint8)
    labels[2:4] = 1
    from napari_vnet.io import Volume

    vol = Volume(labels, spacing=(1.0,) * 3, origin=(0.0,) * 3, direction=np.eye(3))
    widget.project.save_labels(entry.key, "liver", vol, entry=entry)
    widget.project.mark(entry.key, "reviewed", entry=entry)
    work_a = widget.work_folder

    other = _list(qtbot, widget, second)["ct0.nii.gz"]
    assert widget.work_folder != work_a
    assert widget.project.scans_root == str(second.resolve())
    assert widget.status_of(other) == "not opened"
    assert widget.project.saved_labels(other.key) == []
    assert widget.project.training_pairs() == []  # never paired with patient A's labels

    back = _list(qtbot, widget, first)["ct0.nii.gz"]
    assert widget.work_folder == work_a and widget.status_of(back) == "reviewed"
    assert [s["name"] for s in widget.project.saved_labels(back.key)] == ["liver"]


@pytest.mark.parametrize("case", ["name too long", "work folder is a file", "damaged project"])
def test_remembered_folder_that_fails_never_stops_the_dock(
    make_napari_viewer, qtbot, tmp_path, config_dir, case
):
    from napari_vnet._widgets.scans import SETTINGS_FILE

    scans = tmp_path / "scans"
    scans.mkdir()
    write_image(scans / "ct0.nii.gz", small_volume())
    work = tmp_path / "work"
    if case == "name too long":
        remembered = {"scans_folder": str(tmp_path / ("x" * 300)), "work_folder": str(work)}
    elif case == "work folder is a file":
        work.write_text("not a folder")
        remembered = {"scans_folder": str(scans), "work_folder": str(work)}
    else:
        work.mkdir()
        (work / "napari-vnet-scans.json").write_text("{broken")
        remembered = {"scans_folder": str(scans), "work_folder": str(work)}
    (config_dir / SETTINGS_FILE).write_text(json.dumps(remembered))
    viewer, widget = _dock(make_napari_viewer)  # must not raise
    assert widget.isVisible() or widget.parent() is not None
    if case == "damaged project":  # set aside, the folder listed as usual
        qtbot.waitUntil(lambda: widget._discovery is None, timeout=WAIT_MS)
        assert [e.key for e in widget.entries] == ["ct0.nii.gz"]
        assert list(work.glob("napari-vnet-scans.json.damaged-*"))
    # the dock still works: a good folder lists
    assert list(_list(qtbot, widget, scans)) == ["ct0.nii.gz"]
