"""Background autosave of the Scans dock: same file as a synchronous save, atomic under
SIGKILL, and rapid Next/Previous presses that lose nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import SimpleITK as sitk

WAIT_MS = 30_000


pytestmark = pytest.mark.usefixtures("config_dir")


def _labels_volume(shape=(7, 20, 18), seed=0):
    from napari_vnet.io import Volume

    rng = np.random.default_rng(seed)
    arr = (rng.random(shape) > 0.7).astype(np.uint8) * rng.integers(1, 5, shape, dtype=np.uint8)
    return Volume(
        arr,
        spacing=(2.5, 0.8, 0.7),
        origin=(-3.0, 4.0, 5.0),
        direction=np.eye(3),
    )


def _read(path):
    img = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(img), img.GetSpacing(), img.GetOrigin(), img.GetDirection()


def test_background_autosave_writes_what_a_synchronous_save_writes(qtbot, tmp_path):
    from napari_vnet._widgets._autosave import BackgroundSaver, SaveJob
    from napari_vnet.workflows.worklist import ScanProject

    vol = _labels_volume()
    sync = ScanProject(tmp_path / "sync")
    sync_path = sync.save_labels(
        "a.nii.gz", "liver", vol, annotated_slices={"axis": 0, "slices": [2]}
    )

    bg = ScanProject(tmp_path / "bg")
    saver = BackgroundSaver()
    path = bg.labels_path("a.nii.gz", "liver")
    job = SaveJob(bg, "a.nii.gz", "liver", path, vol, annotated_slices={"axis": 0, "slices": [2]})
    with qtbot.waitSignal(saver.saved, timeout=WAIT_MS) as got:
        saver.submit(job)
    assert got.args[0] is job and saver.pending("a.nii.gz") == {}
    assert path.read_bytes() == sync_path.read_bytes()  # byte for byte the same file
    got_arr, *geo = _read(path)
    want_arr, *want_geo = _read(sync_path)
    np.testing.assert_array_equal(got_arr, want_arr)
    np.testing.assert_array_equal(got_arr, vol.array)
    assert geo == want_geo
    rec, want = bg.record("a.nii.gz")["labels"]["liver"], sync.record("a.nii.gz")["labels"]["liver"]
    assert rec["path"] == want["path"] and rec["annotated_slices"] == want["annotated_slices"]
    saver.shutdown()


def test_queued_snapshots_of_one_file_coalesce_newest_wins(qtbot, tmp_path):
    from napari_vnet._widgets._autosave import BackgroundSaver, SaveJob
    from napari_vnet.workflows.worklist import ScanProject

    project = ScanProject(tmp_path / "work")
    saver = BackgroundSaver()
    big = _labels_volume((60, 200, 200), seed=1)  # keeps the writer busy a moment
    saver.submit(SaveJob(project, "b", "x", project.labels_path("b", "x"), big))
    path = project.labels_path("a", "liver")
    vols = [_labels_volume(seed=s) for s in (2, 3, 4)]
    for vol in vols:
        saver.submit(SaveJob(project, "a", "liver", path, vol))
    assert saver.flush(timeout=60)
    np.testing.assert_array_equal(_read(path)[0], vols[-1].array)
    assert saver.versions("a") == {"liver": 3}
    assert project.saved_labels("a")[0]["path"] == path
    saver.shutdown()


_CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from qtpy.QtCore import QCoreApplication
    from napari_vnet._widgets._autosave import BackgroundSaver, SaveJob
    from napari_vnet.io import Volume
    from napari_vnet.workflows.worklist import ScanProject

    app = QCoreApplication([])
    project = ScanProject(sys.argv[1])
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 200, (120, 256, 256), dtype=np.uint8)  # slow to compress
    saver = BackgroundSaver()
    path = project.labels_path("scan", "liver")
    saver.submit(SaveJob(project, "scan", "liver", path, Volume(arr, spacing=(1.0, 1.0, 1.0))))
    print("writing", flush=True)
    time.sleep(120)
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_sigkill_during_a_background_write_leaves_the_previous_autosave(tmp_path):
    from napari_vnet.workflows.worklist import ScanProject

    work = tmp_path / "work"
    project = ScanProject(work)
    previous = _labels_volume(seed=5)
    path = project.save_labels("scan", "liver", previous)
    before = path.read_bytes()

    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(work)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "writing", child.stderr.read()
        folder = path.parent
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait until the new file is being written
            if any(p.name.startswith(".") for p in folder.iterdir()):
                break
            time.sleep(0.01)
        else:
            pytest.fail("the child never started writing")
        time.sleep(0.2)
        assert child.poll() is None, "the write ended before the kill: make it slower"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    assert child.returncode == -signal.SIGKILL
    assert path.read_bytes() == before  # the previous autosave, intact and readable
    np.testing.assert_array_equal(_read(path)[0], previous.array)
    reopened = ScanProject(work)
    assert [s["path"] for s in reopened.saved_labels("scan")] == [path]


# ------------------------------------------------------------------ rapid stepping
@pytest.fixture
def five_scans(tmp_path):
    root = tmp_path / "scans"
    root.mkdir()
    for i in range(5):
        shape = (4 + i, 12, 10 + i)
        arr = np.full(shape, 100 * (i + 1), np.int16)
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((0.8, 0.8, 1.0 + i))
        sitk.WriteImage(img, str(root / f"s{i}.nii.gz"))
    return root


@pytest.mark.gui
def test_rapid_next_previous_ends_right_and_loses_no_edit(
    make_napari_viewer, qtbot, five_scans, tmp_path
):
    from napari.layers import Image, Labels

    from napari_vnet._widgets.scans import ScansWidget

    viewer = make_napari_viewer()
    widget = ScansWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Scans")
    widget.set_work_folder(tmp_path / "work")
    with qtbot.waitSignal(widget.discovery_finished, timeout=WAIT_MS):
        widget.set_scans_folder(five_scans)
    with qtbot.waitSignal(widget.scan_loaded, timeout=WAIT_MS):
        widget.load_scan("s0.nii.gz")

    def scan_index():
        return int(widget.current.key[1])

    def shown_ok():
        """The image and labels shown are those of the current scan, nothing else."""
        i = scan_index()
        image = widget._image_layer
        assert isinstance(image, Image) and image.name == f"s{i}.nii.gz"
        assert image.data.shape == (4 + i, 12, 10 + i) and image.data[0, 0, 0] == 100 * (i + 1)
        for layer in viewer.layers:
            assert layer.data.shape == image.data.shape, layer.name
            np.testing.assert_allclose(layer.scale, image.scale)

    # an edit on s0, then 10 presses within a second, painting whenever a scan shows
    image = viewer.layers[0]
    edit = viewer.add_labels(np.zeros(image.data.shape, np.uint8), name="edit", scale=image.scale)
    edit.paint((1, 1, 1), 7)
    painted = {0: 7}
    presses = [+1, +1, -1, +1, +1, +1, -1, -1, +1, +1]
    for direction in presses:
        (widget.next_scan if direction > 0 else widget.previous_scan)()
        qtbot.wait(40)  # ten presses in about a second (plus what each press costs)
        i = scan_index()
        if widget._requested is None and i not in painted:  # the user draws on this scan
            shown = widget._image_layer
            labels = [lay for lay in viewer.layers if isinstance(lay, Labels)]
            if not labels:
                labels = [
                    viewer.add_labels(
                        np.zeros(shown.data.shape, np.uint8), name="edit", scale=shown.scale
                    )
                ]
            labels[0].paint((1, 2, 2), 10 + i)
            painted[i] = 10 + i
    expected = 0
    for direction in presses:
        expected = min(max(0, expected + direction), 4)
    qtbot.waitUntil(lambda: widget._requested is None and scan_index() == expected, timeout=WAIT_MS)
    shown_ok()
    assert widget.table.currentRow() == expected

    # every edit is in that scan's autosave (or in the labels shown now)
    labels_now = [lay for lay in viewer.layers if isinstance(lay, Labels)]
    if labels_now and expected in painted:
        value = painted[expected]
        where = (1, 1, 1) if expected == 0 else (1, 2, 2)
        assert labels_now[0].data[where] == value
    widget.save_now()
    for i, value in painted.items():
        saved = widget.project.saved_labels(f"s{i}.nii.gz")
        assert saved, f"no autosave of s{i}"
        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(saved[-1]["path"])))
        where = (1, 1, 1) if i == 0 else (1, 2, 2)
        assert arr[where] == value, (i, value)

    # going back to s0 brings its edit back into the reused layers
    with qtbot.waitSignal(widget.scan_loaded, timeout=WAIT_MS):
        widget.load_scan("s0.nii.gz")
    shown_ok()
    (restored,) = [lay for lay in viewer.layers if isinstance(lay, Labels)]
    assert restored.data[1, 1, 1] == 7 and len(restored._undo_history) == 0
