"""Wrong inputs recognised: a label map chosen as the image is called a label map before
Run; the Scans dock pairs labels only by its documented rules (never a same-named file
from a folder beside the chosen one) and says where the labels it shows come from."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from napari_vnet.workflows.input_check import check_input

WAIT_MS = 30_000


pytestmark = pytest.mark.usefixtures("config_dir")


def _labels(shape=(8, 24, 24)):
    a = np.zeros(shape, np.uint8)
    a[2:6, 4:12, 4:12] = 1
    a[3:5, 14:20, 10:18] = 3
    a[1:3, 16:22, 2:6] = 4
    return a


def _ct(shape=(8, 24, 24), seed=0):
    rng = np.random.default_rng(seed)
    ct = rng.normal(40, 30, shape)
    ct[:, :3] = -1000  # air
    return ct.astype(np.int16)


def _card():
    from napari_vnet.models import ClassInfo, ModelCard

    return ModelCard(
        arch="vnet",
        arch_kwargs={"channels": [4, 8]},
        classes=[ClassInfo(0, "background"), ClassInfo(1, "liver")],
        normalization={"kind": "window", "low": -200.0, "high": 400.0},
        spacing=(2.0, 1.0, 1.0),
        patch_size=(16, 16, 16),
        description="CT liver",
    )


def test_label_map_values_tells_label_maps_from_scans():
    from napari_vnet.workflows.input_check import label_map_values

    assert label_map_values(_labels()) == [0.0, 1.0, 3.0, 4.0]
    assert label_map_values(_labels().astype(np.float32)) == [0.0, 1.0, 3.0, 4.0]
    assert label_map_values((_labels() > 0).astype(np.uint8) * 255) == [0.0, 255.0]
    assert label_map_values(_ct()) is None  # HU: negative, many values
    mr = np.random.default_rng(1).gamma(2.0, 80.0, (8, 24, 24)).astype(np.float32)
    assert label_map_values(mr) is None
    assert label_map_values(np.round(mr).astype(np.uint16)) is None  # many whole values
    assert label_map_values(np.zeros((4, 4, 4), np.uint8)) is None  # empty, not a map


def test_check_input_says_label_map_instead_of_not_hu():
    issues = check_input(_card(), shape=(8, 24, 24), spacing=(2.0, 1.0, 1.0), values=_labels())
    (issue,) = issues
    assert not issue.refuses and "label map" in issue.text and "4 whole values" in issue.text
    assert not check_input(_card(), shape=(8, 24, 24), spacing=(2.0, 1.0, 1.0), values=_ct())


@pytest.mark.gui
def test_segment_dock_calls_a_label_map_image_a_label_map(make_napari_viewer):
    from napari_vnet._widgets.segment import SegmentWidget

    viewer = make_napari_viewer()
    mask = viewer.add_image(_labels(), name="p1_mask", scale=(2.0, 1.0, 1.0))
    seg = SegmentWidget(viewer)
    viewer.window.add_dock_widget(seg, name="Segment volume")
    assert seg.select_weights("vnet-phantom")
    seg.set_image_layer(mask)
    note = seg.check_note.text()
    assert not seg.check_note.isHidden() and "label map" in note, note
    assert "Hounsfield" not in note  # the real problem, not a side effect of it
    ct = viewer.add_image(_ct(), name="p1", scale=(2.0, 1.0, 1.0))
    seg.set_image_layer(ct)
    assert "label map" not in seg.check_note.text()


def _write(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.0, 1.0, 2.0))
    sitk.WriteImage(img, str(path))
    return path


def test_no_pairing_with_a_folder_beside_the_chosen_one(tmp_path):
    from napari_vnet.workflows.worklist_scan import discover_scans

    data = tmp_path / "data"
    _write(data / "scans" / "p1.nii.gz", _ct())
    _write(data / "labels" / "p1.nii.gz", _labels())  # e.g. another program's predictions
    (entry,) = discover_scans(data / "scans")
    assert entry.labels == ()  # outside the chosen folder: not this scan's labels
    # the documented layout, inside the chosen folder, still pairs
    entries = {e.key: e for e in discover_scans(data)}
    assert sorted(entries) == ["scans/p1.nii.gz"]
    assert entries["scans/p1.nii.gz"].labels == (str(data / "labels" / "p1.nii.gz"),)


@pytest.mark.gui
def test_scans_dock_says_where_labels_come_from(make_napari_viewer, qtbot, tmp_path):
    import napari

    from napari_vnet._widgets.scans import ScansWidget

    data = tmp_path / "study"
    _write(data / "images" / "p1.nii.gz", _ct())
    _write(data / "labels" / "p1.nii.gz", _labels())
    _write(tmp_path / "labels" / "p2.nii.gz", _labels())  # beside the chosen folder
    _write(data / "images" / "p2.nii.gz", _ct(seed=2))
    viewer = make_napari_viewer()
    w = ScansWidget(viewer)
    viewer.window.add_dock_widget(w, name="Scans")
    w.set_work_folder(tmp_path / "work")
    with qtbot.waitSignal(w.discovery_finished, timeout=WAIT_MS):
        w.set_scans_folder(data / "images")  # the images folder itself was chosen
    assert all(e.labels == () for e in w.entries)  # study/labels lies beside it: not used
    with qtbot.waitSignal(w.discovery_finished, timeout=WAIT_MS):
        w.set_scans_folder(data)
    (p1,) = [e for e in w.entries if e.name.endswith("p1.nii.gz")]
    assert p1.labels == (str(data / "labels" / "p1.nii.gz"),)
    row = next(r for r in range(w.table.rowCount()) if w.table.item(r, 0).text() == p1.name)
    assert "labels/ beside images/" in w.table.item(row, 0).toolTip()
    with qtbot.waitSignal(w.scan_loaded, timeout=WAIT_MS):
        w.load_scan(p1.key)
    assert "labels from labels/p1.nii.gz" in w.info_label.text()
    (lab,) = [ly for ly in viewer.layers if isinstance(ly, napari.layers.Labels)]
    assert lab.metadata["labels_source"]["path"] == str(data / "labels" / "p1.nii.gz")
