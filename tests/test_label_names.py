"""Label names from sidecars (labels.json, ITK-SNAP, Slicer .ctbl and .seg.nrrd, nnU-Net
dataset.json), a label map opening with them in napari, and label files paired with their
images by the usual folder conventions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from napari_vnet._reader import napari_get_reader
from napari_vnet.io.label_names import (
    LabelSidecarError,
    find_label_sidecar,
    pair_labels_with_images,
    read_label_classes,
)


def _labels(path, values=(0, 1, 2)):
    arr = np.zeros((4, 5, 6), np.uint8)
    for i, v in enumerate(values):
        arr[i] = v
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    return path


def _names(found):
    classes, _ = found
    return {c["value"]: c["name"] for c in classes}


def test_labels_json_forms(tmp_path):
    lab = _labels(tmp_path / "case_seg.nii.gz")
    (tmp_path / "labels.json").write_text(json.dumps({"1": "liver", "2": "spleen"}))
    assert _names(read_label_classes(lab)) == {1: "liver", 2: "spleen"}
    # <stem>.json wins over labels.json; name -> value; colours 0..255
    (tmp_path / "case_seg.json").write_text(
        json.dumps({"classes": [{"value": 2, "name": "kidney", "color": [255, 0, 0]}]})
    )
    classes, src = read_label_classes(lab)
    assert src.name == "case_seg.json" and classes[0]["color"] == [1.0, 0.0, 0.0, 1.0]
    (tmp_path / "case_seg.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1}}))
    assert _names(read_label_classes(lab)) == {0: "background", 1: "liver"}
    (tmp_path / "case_seg.json").write_text("{not json")
    with pytest.raises(LabelSidecarError, match="case_seg.json: not valid JSON"):
        read_label_classes(lab)


def test_itksnap_label_description(tmp_path):
    lab = _labels(tmp_path / "seg.nii.gz")
    (tmp_path / "seg.txt").write_text(
        "################################################\n"
        "# ITK-SnAP Label Description File\n"
        '    0     0    0    0        0  0  0    "Clear Label"\n'
        '    1   255    0    0        1  1  1    "Left kidney"\n'
        '    2     0  255    0      0.5  1  1    "Spleen"\n'
    )
    classes, src = read_label_classes(lab)
    assert src.name == "seg.txt"
    by = {c["value"]: c for c in classes}
    assert by[1]["name"] == "Left kidney" and by[1]["color"] == [1.0, 0.0, 0.0, 1.0]
    assert by[2]["color"] == [0.0, 1.0, 0.0, 0.5]
    (tmp_path / "seg.txt").write_text("1 255 0\n")
    with pytest.raises(LabelSidecarError, match="line 1"):
        read_label_classes(lab)


def test_slicer_ctbl(tmp_path):
    lab = _labels(tmp_path / "segmentation.nrrd")
    (tmp_path / "Organs.ctbl").write_text(
        "# Color table file Organs.ctbl\n# 3 values\n0 Background 0 0 0 0\n"
        "1 liver 221 130 101 255\n2 spleen 157 108 162 255\n"
    )
    classes, src = read_label_classes(lab)  # the folder's only .ctbl
    assert src.name == "Organs.ctbl"
    assert {c["value"]: c["name"] for c in classes} == {0: "Background", 1: "liver", 2: "spleen"}
    assert classes[1]["color"][:3] == pytest.approx([221 / 255, 130 / 255, 101 / 255])


def test_seg_nrrd_segment_metadata(tmp_path):
    img = sitk.GetImageFromArray(np.array([[[0, 1], [2, 2]]], np.uint8))
    for key, val in {
        "Segment0_ID": "Segment_1",
        "Segment0_Name": "liver",
        "Segment0_LabelValue": "1",
        "Segment0_Color": "0.8 0.2 0.1",
        "Segment0_Layer": "0",
        "Segment1_ID": "Segment_2",
        "Segment1_Name": "spleen",
        "Segment1_LabelValue": "2",
        "Segment1_Color": "0.1 0.2 0.9",
        "Segment1_Layer": "0",
    }.items():
        img.SetMetaData(key, val)
    path = tmp_path / "case.seg.nrrd"
    sitk.WriteImage(img, str(path))
    assert find_label_sidecar(path) == path
    classes, _ = read_label_classes(path)
    assert [(c["value"], c["name"]) for c in classes] == [(1, "liver"), (2, "spleen")]
    assert classes[0]["color"] == pytest.approx([0.8, 0.2, 0.1, 1.0])


@pytest.mark.parametrize(
    "labels, expected",
    [
        ({"background": 0, "liver": 1, "tumour": 2}, {0: "background", 1: "liver", 2: "tumour"}),
        ({"0": "background", "1": "liver"}, {0: "background", 1: "liver"}),  # MSD / v1
    ],
)
def test_nnunet_dataset_json(tmp_path, labels, expected):
    ds = tmp_path / "Dataset003_Liver"
    (ds / "labelsTr").mkdir(parents=True)
    lab = _labels(ds / "labelsTr" / "liver_001.nii.gz")
    (ds / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": labels}))
    assert _names(read_label_classes(lab)) == expected


def test_no_sidecar(tmp_path):
    assert read_label_classes(_labels(tmp_path / "mask.nii.gz")) is None
    (tmp_path / "dataset.json").write_text(json.dumps({"name": "no labels key"}))
    assert read_label_classes(tmp_path / "mask.nii.gz") is None


def test_reader_gives_names_and_colours(tmp_path):
    lab = _labels(tmp_path / "organs_seg.nii.gz")
    (tmp_path / "organs_seg.ctbl").write_text("1 liver 255 0 0 255\n2 spleen 0 0 255 255\n")
    ((data, kw, kind),) = napari_get_reader(str(lab))(str(lab))
    assert kind == "labels"
    assert kw["features"] == {"index": [1, 2], "class": ["liver", "spleen"]}
    assert kw["colormap"][1] == (1.0, 0.0, 0.0, 1.0)
    assert kw["metadata"]["classes"][1]["name"] == "spleen"
    # a broken sidecar: the labels still open, with a warning naming the file
    (tmp_path / "organs_seg.ctbl").write_text("liver\n")
    with pytest.warns(UserWarning, match="organs_seg.ctbl"):
        ((data, kw, kind),) = napari_get_reader(str(lab))(str(lab))
    assert kind == "labels" and "features" not in kw


def test_shared_labels_open_with_names(make_napari_viewer, shared_data):
    viewer = make_napari_viewer()
    (lab,) = viewer.open(
        str(shared_data / "ct-dicom-patient-a" / "labels.nii.gz"), plugin="napari-vnet"
    )
    feats = lab.features.set_index("index")["class"]
    assert feats[5] == "liver" and feats[1] == "spleen" and feats[6] == "stomach"
    # the name shows in the status bar when hovering a voxel of that class
    z, y, x = np.argwhere(np.asarray(lab.data) == 5)[0]
    status = lab.get_status(lab.data_to_world((z, y, x)), world=True)
    assert "liver" in str(status)


def test_pairing_conventions(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    files = [
        flat / n
        for n in (
            "p1.nii.gz",
            "p1_seg.nii.gz",
            "p2.mha",
            "p2-label.mha",
            "p3_seg.nii.gz",
            "s4.nrrd",
            "s4.seg.nrrd",
        )
    ]
    nn = tmp_path / "Dataset001"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (nn / sub).mkdir(parents=True)
    files += [
        nn / "imagesTr" / "case_001_0000.nii.gz",
        nn / "imagesTr" / "case_001_0001.nii.gz",
        nn / "labelsTr" / "case_001.nii.gz",
        nn / "imagesTs" / "case_009_0000.nii.gz",
    ]
    sep = tmp_path / "study"
    (sep / "images").mkdir(parents=True)
    (sep / "labels").mkdir()
    files += [sep / "images" / "a.nrrd", sep / "labels" / "a.nrrd", sep / "labels" / "orphan.nrrd"]
    for f in files:
        f.write_bytes(b"")
    pairs = pair_labels_with_images(files)
    assert pairs == {
        str(flat / "p1_seg.nii.gz"): str(flat / "p1.nii.gz"),
        str(flat / "p2-label.mha"): str(flat / "p2.mha"),
        str(flat / "s4.seg.nrrd"): str(flat / "s4.nrrd"),
        str(nn / "labelsTr" / "case_001.nii.gz"): str(nn / "imagesTr" / "case_001_0000.nii.gz"),
        str(sep / "labels" / "a.nrrd"): str(sep / "images" / "a.nrrd"),
    }  # p3_seg has no image and orphan.nrrd none either: they stay scans


def test_saved_labels_keep_their_names(make_napari_viewer, shared_data, tmp_path):
    """Save a named label map with napari-vnet's writer and open it again: same names."""
    viewer = make_napari_viewer()
    (lab,) = viewer.open(
        str(shared_data / "ct-dicom-patient-a" / "labels.nii.gz"), plugin="napari-vnet"
    )
    out = tmp_path / "edited.nii.gz"
    lab.save(str(out), plugin="napari-vnet")
    side = tmp_path / "edited.labels.json"
    assert side.is_file()
    classes, src = read_label_classes(out)
    assert src == side and {c["value"]: c["name"] for c in classes}[5] == "liver"
    (again,) = viewer.open(str(out), plugin="napari-vnet")
    assert again.features.set_index("index")["class"][5] == "liver"
    # a layer without names writes no sidecar
    plain = viewer.add_labels(np.zeros((2, 3, 4), np.uint8), name="plain")
    plain.save(str(tmp_path / "plain.nii.gz"), plugin="napari-vnet")
    assert not (tmp_path / "plain.labels.json").exists()
