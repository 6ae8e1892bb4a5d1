"""Scans: label files are paired with their images during discovery (not listed as scans)
and open as Labels, with their class names, when the image is loaded."""

from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk

from napari_vnet.workflows.worklist_scan import discover_scans


def _write(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    return path


def _ct(seed=0):
    return (np.random.default_rng(seed).normal(0, 300, (4, 8, 8)) - 200).astype(np.int16)


def _lab():
    a = np.zeros((4, 8, 8), np.uint8)
    a[1:3, 2:6, 2:6] = 5
    return a


def test_discovery_pairs_labels(tmp_path):
    _write(tmp_path / "flat" / "p1.nii.gz", _ct())
    _write(tmp_path / "flat" / "p1_seg.nii.gz", _lab())
    _write(tmp_path / "flat" / "p2.nii.gz", _ct(1))
    _write(tmp_path / "study" / "images" / "a.nrrd", _ct(2))
    _write(tmp_path / "study" / "labels" / "a.nrrd", _lab())
    _write(tmp_path / "Dataset001" / "imagesTr" / "c_001_0000.nii.gz", _ct(3))
    _write(tmp_path / "Dataset001" / "labelsTr" / "c_001.nii.gz", _lab())
    entries = {e.key: e for e in discover_scans(tmp_path)}
    assert sorted(entries) == [
        "Dataset001/imagesTr/c_001_0000.nii.gz",
        "flat/p1.nii.gz",
        "flat/p2.nii.gz",
        "study/images/a.nrrd",
    ]  # no label file is listed as a scan
    assert entries["flat/p1.nii.gz"].labels == (str(tmp_path / "flat" / "p1_seg.nii.gz"),)
    assert entries["flat/p2.nii.gz"].labels == ()
    assert entries["study/images/a.nrrd"].labels == (str(tmp_path / "study/labels/a.nrrd"),)
    assert entries["Dataset001/imagesTr/c_001_0000.nii.gz"].labels == (
        str(tmp_path / "Dataset001/labelsTr/c_001.nii.gz"),
    )


def test_loader_restores_paired_labels_with_names(tmp_path):
    from napari_vnet._widgets._scan_loading import load_scan_data

    _write(tmp_path / "p1.nii.gz", _ct())
    _write(tmp_path / "p1_seg.nii.gz", _lab())
    (tmp_path / "labels.json").write_text(json.dumps({"5": "liver"}))
    (entry,) = discover_scans(tmp_path)
    loaded = load_scan_data(entry, saved=[], pending={})
    ((info, arr, kw),) = loaded.labels
    assert info["name"] == "p1_seg" and arr.dtype.kind in "iu" and arr.max() == 5
    assert kw["features"] == {"index": [5], "class": ["liver"]}
    # an autosave of the same name is newer: it wins over the paired file
    loaded = load_scan_data(entry, saved=[], pending={"p1_seg": _Job(entry)})
    assert len(loaded.labels) == 1 and loaded.labels[0][1].max() == 2


class _Job:
    def __init__(self, entry):
        from napari_vnet.io import read_volume

        vol = read_volume(entry.path)
        self.volume = vol.with_array(np.full(vol.array.shape, 2, np.uint8))
        self.annotated_slices = []


def test_scans_dock_shows_paired_labels(make_napari_viewer, qtbot, tmp_path):
    import napari

    from napari_vnet._widgets.scans import ScansWidget

    scans = tmp_path / "scans"
    _write(scans / "p1.nii.gz", _ct())
    _write(scans / "p1_seg.nii.gz", _lab())
    (scans / "p1_seg.json").write_text(json.dumps({"5": "liver"}))
    viewer = make_napari_viewer()
    w = ScansWidget(viewer)
    viewer.window.add_dock_widget(w, name="Scans")
    w.set_work_folder(tmp_path / "work")
    with qtbot.waitSignal(w.discovery_finished, timeout=30000):
        w.set_scans_folder(scans)
    assert [e.name for e in w.entries] == ["p1.nii.gz"]  # the label file is not a scan
    with qtbot.waitSignal(w.scan_loaded, timeout=30000):
        w.next_scan()
    labels = [ly for ly in viewer.layers if isinstance(ly, napari.layers.Labels)]
    assert [ly.name for ly in labels] == ["p1_seg"]
    assert labels[0].features.set_index("index")["class"][5] == "liver"
    assert int(np.asarray(labels[0].data).max()) == 5
