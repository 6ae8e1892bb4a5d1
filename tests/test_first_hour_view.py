"""Small things a user trips on: a second patient opened into the same viewer is shown
(not an empty slice of the combined world extent), in File > Open and in the Scans dock;
autosaves are named ``<scan>_<model>.nii.gz`` (no hash in sight) and still restore."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

WAIT_MS = 30_000


pytestmark = pytest.mark.usefixtures("config_dir")


def _patient(path, origin_xyz, shape=(8, 16, 16), spacing_xyz=(1.0, 1.0, 2.0), value=0):
    rng = np.random.default_rng(value)
    img = sitk.GetImageFromArray((rng.normal(0, 100, shape) + value).astype(np.int16))
    img.SetSpacing(spacing_xyz)
    img.SetOrigin(origin_xyz)
    sitk.WriteImage(img, str(path))
    return path


def _shows(viewer, layer) -> bool:
    """The slice shown lies inside ``layer`` and the camera looks at it."""
    lo, hi = np.asarray(layer.extent.world, float)
    point = np.asarray(viewer.dims.point, float)
    step = np.abs(np.asarray(layer.extent.step, float))
    for d in viewer.dims.not_displayed:
        if not lo[d] - step[d] / 2 <= point[d] <= hi[d] + step[d] / 2:
            return False
    centre = np.asarray(viewer.scene.camera.center, float)[-2:]
    disp = list(viewer.dims.displayed)
    return bool(np.all((lo[disp] <= centre) & (centre <= hi[disp])))


# ------------------------------------------------------------------ second patient


@pytest.mark.gui
def test_second_patient_opened_into_the_viewer_is_shown(make_napari_viewer, tmp_path):
    from napari_vnet.reader_preferences import register_reader_preferences

    viewer = make_napari_viewer()
    register_reader_preferences()
    a = _patient(tmp_path / "patientA_ct.nii.gz", (0.0, 0.0, 0.0))
    b = _patient(tmp_path / "patientB_ct.nii.gz", (300.0, -400.0, 900.0), value=500)
    (la,) = viewer.open(str(a), plugin=None)
    assert _shows(viewer, la)
    (lb,) = viewer.open(str(b), plugin=None)
    assert _shows(viewer, lb)  # not an empty slice between the two patients
    # a mask of the second patient opened on top does not move the view
    point = tuple(viewer.dims.point)
    viewer.add_labels(np.zeros(lb.data.shape, np.uint8), scale=lb.scale, translate=lb.translate)
    assert tuple(viewer.dims.point) == point


@pytest.mark.gui
def test_scans_next_shows_a_scan_on_another_grid(make_napari_viewer, qtbot, tmp_path):
    from napari_vnet._widgets.scans import ScansWidget

    scans = tmp_path / "scans"
    scans.mkdir()
    _patient(scans / "p1.nii.gz", (0.0, 0.0, 0.0))
    _patient(scans / "p2.nii.gz", (0.0, 0.0, 700.0), shape=(5, 16, 16), value=300)
    viewer = make_napari_viewer()
    widget = ScansWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Scans")
    widget.set_work_folder(tmp_path / "work")
    with qtbot.waitSignal(widget.discovery_finished, timeout=WAIT_MS):
        widget.set_scans_folder(scans)
    extra = viewer.add_points(np.array([[0.0, 0.0, 0.0]]), name="a note")  # not the scan's
    with qtbot.waitSignal(widget.scan_loaded, timeout=WAIT_MS):
        widget.load_scan("p1.nii.gz")
    with qtbot.waitSignal(widget.scan_loaded, timeout=WAIT_MS):
        widget.next_scan()
    assert extra in viewer.layers
    assert _shows(viewer, widget._image_layer)


# ------------------------------------------------------------------ autosave names


def test_autosave_names_read_scan_and_model(tmp_path):
    from napari_vnet.io import Volume
    from napari_vnet.workflows.worklist import ScanProject

    project = ScanProject(tmp_path / "work")
    vol = Volume(np.ones((3, 4, 5), np.uint8), spacing=(2.0, 1.0, 1.0))
    path = project.save_labels("sub/patientB_ct.nii.gz", "patientB_ct.nii.gz [3D U-Net]", vol)
    assert path.name == "patientB_ct_3D_U-Net.nii.gz"
    assert path.parent.name == "sub_patientB_ct"  # one folder per scan, no hash
    assert (
        project.save_labels("sub/patientB_ct.nii.gz", "edit", vol).name == "patientB_ct_edit.nii.gz"
    )
    # two layer names that make the same file name: the second one gets a hash, both kept
    other = project.save_labels("sub/patientB_ct.nii.gz", "patientB_ct.nii.gz (3D U-Net)", vol)
    assert other != path and other.parent == path.parent and path.is_file()
    # a scan whose folder name another scan has taken gets its own folder
    clash = project.save_labels("sub_patientB_ct.nii.gz", "sub_patientB_ct.nii.gz [V-Net]", vol)
    assert clash.parent != path.parent and clash.name == "sub_patientB_ct_V-Net.nii.gz"
    # a new session finds the same files for the same names
    again = ScanProject(tmp_path / "work")
    assert again.labels_path("sub/patientB_ct.nii.gz", "patientB_ct.nii.gz [3D U-Net]") == path
    assert again.labels_path("sub_patientB_ct.nii.gz", "sub_patientB_ct.nii.gz [V-Net]") == clash
    names = {s["name"]: s["path"] for s in again.saved_labels("sub/patientB_ct.nii.gz")}
    assert names["patientB_ct.nii.gz (3D U-Net)"] == other


@pytest.mark.gui
def test_scans_autosave_named_after_scan_and_model_restores(make_napari_viewer, qtbot, tmp_path):
    from napari.layers import Labels

    from napari_vnet._widgets.scans import ScansWidget

    scans = tmp_path / "scans"
    scans.mkdir()
    _patient(scans / "patientB_ct.nii.gz", (0.0, 0.0, 0.0))
    _patient(scans / "other.nii.gz", (0.0, 0.0, 0.0), value=7)
    viewer = make_napari_viewer()
    widget = ScansWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Scans")
    widget.set_work_folder(tmp_path / "work")
    with qtbot.waitSignal(widget.discovery_finished, timeout=WAIT_MS):
        widget.set_scans_folder(scans)
    with qtbot.waitSignal(widget.scan_loaded, timeout=WAIT_MS):
        widget.load_scan("patientB_ct.nii.gz")
    image = widget._image_layer
    labels = viewer.add_labels(
        np.zeros(image.data.shape, np.uint8),
        name="patientB_ct.nii.gz [3D U-Net]",
        scale=image.scale,
    )
    labels.paint((3, 4, 4), 2)
    (path,) = widget.autosave(wait=True)
    assert path.name == "patientB_ct_3D_U-Net.nii.gz"
    assert "-" not in path.parent.name.replace("patientB_ct", "")  # no hash in the folder
    with qtbot.waitSignal(widget.scan_loaded, timeout=WAIT_MS):
        widget.load_scan("other.nii.gz")
    widget.saver.flush()
    with qtbot.waitSignal(widget.scan_loaded, timeout=WAIT_MS):
        widget.load_scan("patientB_ct.nii.gz")
    (back,) = [ly for ly in viewer.layers if isinstance(ly, Labels)]
    assert back.name == "patientB_ct.nii.gz [3D U-Net]" and np.asarray(back.data)[3, 4, 4] == 2
