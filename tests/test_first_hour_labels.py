"""Names and colours survive, and the plugin's own DICOM-SEG reads back.

* every labels file napari-vnet writes (Scans autosave, CLI predict, File > Save) gets a
  ``<stem>.labels.json`` with the class names and the colours shown, and reopening it
  (Scans, File > Open) restores both (hover names = ``layer.features``, colours =
  ``layer.colormap``);
* a SEG written by ``predict --format dicom-seg`` opens as a Labels layer on the source
  grid with segment names and colours, equals the NIfTI output, and ``evaluate`` takes
  it as PRED or GT (Dice 1 against the NIfTI output).
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from napari_vnet.cli import main

WAIT_MS = 30_000
ORGAN = (0.8, 0.3, 0.2, 1.0)


pytestmark = pytest.mark.usefixtures("config_dir")


def _card():
    from napari_vnet.models import ClassInfo, ModelCard

    return ModelCard(
        arch="vnet",
        arch_kwargs={"channels": [2, 4], "kernel_size": 3},
        classes=[ClassInfo(0, "background"), ClassInfo(5, "liver", ORGAN), ClassInfo(1, "spleen")],
        normalization={"kind": "zscore"},
        spacing=None,
        patch_size=(8, 8, 8),
    )


def _blob(shape, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.normal(0, 20, size=shape).astype(np.float32)
    z, y, x = (s // 2 for s in shape)
    image[z - 2 : z + 2, y - 4 : y + 4, x - 4 : x + 4] += 200.0
    return image


def _dicom_series(folder, arr, uid="1.2.826.0.1.3680043.99.71"):
    """One CT file per slice (spacing 2.5 x 0.8 x 0.7 mm), names not in slice order."""
    os.makedirs(folder, exist_ok=True)
    vol = sitk.GetImageFromArray(arr.astype(np.int16))
    vol.SetSpacing((0.7, 0.8, 2.5))
    vol.SetOrigin((10.0, -20.0, 30.0))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetImageIO("GDCMImageIO")
    for k in range(arr.shape[0]):
        sl = vol[:, :, k]
        pos = vol.TransformIndexToPhysicalPoint((0, 0, k))
        for key, value in {
            "0020|000e": uid,
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{uid}.{k + 1}",
            "0008|0060": "CT",
            "0020|000d": "1.2.826.0.1.3680043.99",
            "0020|0052": "1.2.826.0.1.3680043.99.2",
            "0010|0010": "Doe^Jane",
            "0010|0020": "PAT-1",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in pos),
            "0020|0037": "1\\0\\0\\0\\1\\0",
        }.items():
            sl.SetMetaData(key, value)
        writer.SetFileName(os.path.join(folder, f"IM{(k * 7) % 11:04d}.dcm"))
        writer.Execute(sl)


@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
    """A DICOM series and a NIfTI scan predicted by the CLI: NIfTI outputs and a SEG."""
    import torch

    from napari_vnet.io import Volume, write_volume
    from napari_vnet.models import build_model, save_checkpoint

    root = tmp_path_factory.mktemp("predicted")
    _dicom_series(root / "in" / "patient1" / "ct", _blob((6, 18, 20), 9))
    write_volume(Volume(_blob((8, 16, 16), 1), spacing=(2.0, 1.0, 1.0)), root / "in" / "a.nii.gz")
    torch.manual_seed(3)
    card = _card()
    ckpt = save_checkpoint(build_model(card), card, root / "tiny.pt")
    args = ["predict", str(root / "in"), "-w", str(ckpt)]
    assert main([*args, "-o", str(root / "nii")]) == 0
    assert main([*args, "-o", str(root / "seg"), "--format", "dicom-seg", "--pattern", "pat*"]) == 0
    return root


def _expected_colors():
    from napari_vnet.io.label_names import class_colors

    return class_colors(_card().classes)


# ------------------------------------------------------------------ CLI outputs (core)


def test_cli_predict_outputs_carry_names_and_colours(predicted, tmp_path):
    from napari_vnet._reader import napari_get_reader
    from napari_vnet.io.label_names import read_label_classes

    nii = predicted / "nii"
    for out in (nii / "a.nii.gz", nii / "patient1" / "ct.nii.gz"):
        classes, sidecar = read_label_classes(out)
        assert sidecar.name.endswith(".labels.json") and sidecar.parent == out.parent
        names = {c["value"]: c["name"] for c in classes}
        assert names == {0: "background", 5: "liver", 1: "spleen"}
        colors = {c["value"]: c["color"] for c in classes if c["value"]}
        want = _expected_colors()
        for v in (5, 1):  # the card's colour, and the one napari-vnet shows otherwise
            assert np.allclose(colors[v], want[v], atol=1e-3), v
        (data, kw, kind) = napari_get_reader(str(out))(str(out))[0]
        assert kind == "labels"
        hover = dict(zip(kw["features"]["index"], kw["features"]["class"], strict=True))
        assert hover == {0: "background", 5: "liver", 1: "spleen"}
        assert np.allclose(kw["colormap"][5], ORGAN, atol=1e-3)
    # one file (not a folder) gets one too
    single = tmp_path / "single.nii.gz"
    src = predicted / "in" / "a.nii.gz"
    assert main(["predict", str(src), "-w", str(predicted / "tiny.pt"), "-o", str(single)]) == 0
    assert {c["value"]: c["name"] for c in read_label_classes(single)[0]}[5] == "liver"


# ------------------------------------------------------------------ DICOM-SEG (core)


def test_dicom_seg_reads_back_as_the_nifti_output(predicted):
    from napari_vnet.io import read_volume

    seg = read_volume(predicted / "seg" / "patient1" / "ct.dcm")
    ref = read_volume(predicted / "nii" / "patient1" / "ct.nii.gz")
    assert np.count_nonzero(ref.array), "the test model should segment something"
    np.testing.assert_array_equal(seg.array, ref.array)  # values 5 and 1, not 0/255
    assert np.allclose(seg.spacing, ref.spacing, atol=1e-4)
    assert np.allclose(seg.origin, ref.origin, atol=1e-4)
    assert np.allclose(seg.direction, ref.direction)
    names = {c["value"]: c["name"] for c in seg.metadata["classes"]}
    assert names[5] == "liver" and names[1] == "spleen"
    colors = {c["value"]: c["color"] for c in seg.metadata["classes"]}
    want = _expected_colors()
    assert np.allclose(colors[5][:3], want[5][:3], atol=0.02)  # via CIELab and back
    assert np.allclose(colors[1][:3], want[1][:3], atol=0.02)  # a colour for every segment


def test_dicom_seg_found_without_its_record_and_without_its_source(predicted, tmp_path):
    """Moved away from its provenance record: the source series beside it is used; with
    no source at all the frames' own extent is the grid (on the right mm positions)."""
    from napari_vnet.io import read_volume

    ref = read_volume(predicted / "nii" / "patient1" / "ct.nii.gz")
    beside = tmp_path / "beside"
    shutil.copytree(predicted / "in" / "patient1" / "ct", beside)
    shutil.copy(predicted / "seg" / "patient1" / "ct.dcm", beside / "seg.dcm")
    np.testing.assert_array_equal(read_volume(beside / "seg.dcm").array, ref.array)
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(predicted / "seg" / "patient1" / "ct.dcm", alone / "seg.dcm")
    seg = read_volume(alone / "seg.dcm")
    z = np.flatnonzero(ref.array.any(axis=(1, 2)))
    np.testing.assert_array_equal(seg.array, ref.array[z[0] : z[-1] + 1])
    assert np.allclose(seg.origin, ref.index_to_physical((z[0], 0, 0)), atol=1e-3)


def test_evaluate_takes_a_seg_as_pred_or_gt(predicted, capsys):
    seg = predicted / "seg" / "patient1" / "ct.dcm"
    nii = predicted / "nii" / "patient1" / "ct.nii.gz"
    for pred, gt in ((seg, nii), (nii, seg)):
        assert main(["evaluate", str(pred), str(gt), "--json"]) == 0
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert result["mean_dice"] == pytest.approx(1.0)
        assert result["dice"] and set(result["dice"].values()) == {1.0}
        assert set(result["dice"]) <= {"1", "5"}
        names = {"1": "spleen", "5": "liver"}
        assert result["names"] == {k: names[k] for k in result["dice"]}  # from the SEG or sidecar
    # folders: the SEG folder of a dicom-seg run against the NIfTI run's folder
    assert main(["evaluate", str(seg.parent.parent), str(nii.parent.parent)]) == 0
    table = capsys.readouterr().out
    assert "1.0000" in table and "patient1" not in capsys.readouterr().err


# ------------------------------------------------------------------ in the viewer


@pytest.mark.gui
def test_seg_opens_in_the_viewer_with_names_and_colours(make_napari_viewer, predicted):
    from napari.layers import Labels

    from napari_vnet.reader_preferences import register_reader_preferences

    viewer = make_napari_viewer()
    register_reader_preferences()
    (layer,) = viewer.open(str(predicted / "seg" / "patient1" / "ct.dcm"), plugin=None)
    (image,) = viewer.open(str(predicted / "in" / "patient1" / "ct"), plugin=None)
    assert isinstance(layer, Labels)
    from napari_vnet.io import read_volume

    ref = read_volume(predicted / "nii" / "patient1" / "ct.nii.gz")
    np.testing.assert_array_equal(np.asarray(layer.data), ref.array)
    np.testing.assert_allclose(layer.scale, image.scale, atol=1e-4)  # on the source grid
    np.testing.assert_allclose(layer.translate, image.translate, atol=1e-4)
    feats = dict(zip(layer.features["index"], layer.features["class"], strict=True))
    assert feats[5] == "liver" and feats[1] == "spleen"
    assert np.allclose(layer.colormap.map(np.array([5]))[0][:3], ORGAN[:3], atol=0.02)


@pytest.mark.gui
def test_file_save_keeps_the_colours_shown(make_napari_viewer, tmp_path):
    """File > Save of a layer whose names come from its features table (no colours in
    its metadata) writes the colours it is shown in; File > Open restores both."""
    from napari.utils.colormaps import DirectLabelColormap

    from napari_vnet.reader_preferences import register_reader_preferences

    viewer = make_napari_viewer()
    register_reader_preferences()
    data = np.zeros((4, 6, 8), np.uint8)
    data[1, 2:4, 2:5] = 2
    data[2, 1:3, 4:7] = 7
    shown = {None: (1, 0, 1, 1), 0: (0, 0, 0, 0), 2: (0.1, 0.6, 0.9, 1.0), 7: (0.9, 0.8, 0.1, 1.0)}
    viewer.add_labels(
        data,
        name="organs",
        features={"index": [0, 2, 7], "class": ["background", "kidney", "aorta"]},
        colormap=DirectLabelColormap(color_dict=shown),
    )
    (out,) = [p for p in viewer.layers.save(str(tmp_path / "organs.nii.gz"), plugin="napari-vnet")
              if p.endswith(".nii.gz")]  # fmt: skip
    rows = json.loads((tmp_path / "organs.labels.json").read_text())["classes"]
    assert {r["value"]: r.get("color") is not None for r in rows} == {0: False, 2: True, 7: True}
    (back,) = viewer.open(out, plugin=None)
    assert back is not viewer.layers["organs"]
    for v in (2, 7):
        assert np.allclose(back.colormap.map(np.array([v]))[0], shown[v], atol=1e-3)
    feats = dict(zip(back.features["index"], back.features["class"], strict=True))
    assert feats == {0: "background", 2: "kidney", 7: "aorta"}


def _scans(tmp_path):
    root = tmp_path / "scans"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in ("p1.nii.gz", "p2.mha"):
        img = sitk.GetImageFromArray(rng.normal(0, 100, (8, 16, 16)).astype(np.int16))
        img.SetSpacing((1.0, 1.0, 2.0))
        sitk.WriteImage(img, str(root / name))
    return root


@pytest.mark.gui
@pytest.mark.parametrize("from_disk", [True, False], ids=["from-disk", "same-session"])
def test_scans_autosave_restores_names_and_colours(make_napari_viewer, qtbot, tmp_path, from_disk):
    from napari.layers import Labels
    from napari.utils.colormaps import DirectLabelColormap

    from napari_vnet._widgets.scans import ScansWidget

    viewer = make_napari_viewer()
    widget = ScansWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Scans")
    widget.set_work_folder(tmp_path / "work")
    with qtbot.waitSignal(widget.discovery_finished, timeout=WAIT_MS):
        widget.set_scans_folder(_scans(tmp_path))
    with qtbot.waitSignal(widget.scan_loaded, timeout=WAIT_MS):
        widget.load_scan("p1.nii.gz")
    image = viewer.layers[0]
    colors = {None: (1, 0, 1, 1), 0: (0, 0, 0, 0), 3: (0.2, 0.7, 0.3, 1.0), 4: ORGAN}
    labels = viewer.add_labels(
        np.zeros(image.data.shape, np.uint8),
        name="p1 [V-Net]",
        scale=image.scale,
        features={"index": [0, 3, 4], "class": ["background", "kidney", "liver"]},
        colormap=DirectLabelColormap(color_dict=colors),
    )
    labels.paint((2, 5, 5), 4)
    labels.paint((4, 8, 8), 3)
    widget.autosave(wait=True)
    (saved,) = widget.project.saved_labels("p1.nii.gz")
    assert saved["path"].with_name(saved["path"].name[: -len(".nii.gz")] + ".labels.json").is_file()
    if not from_disk:  # autosave still in memory when the scan is shown again
        labels.paint((5, 6, 6), 4)
    with qtbot.waitSignal(widget.scan_loaded, timeout=WAIT_MS):
        widget.next_scan()
    if from_disk:
        widget.saver.flush()
    with qtbot.waitSignal(widget.scan_loaded, timeout=WAIT_MS):
        widget.previous_scan()
    (back,) = [ly for ly in viewer.layers if isinstance(ly, Labels)]
    assert back.name == "p1 [V-Net]" and np.asarray(back.data)[2, 5, 5] == 4
    feats = dict(zip(back.features["index"], back.features["class"], strict=True))
    assert feats[4] == "liver" and feats[3] == "kidney"  # class names on hover
    assert np.allclose(back.colormap.map(np.array([4]))[0], ORGAN, atol=1e-3)
    assert np.allclose(back.colormap.map(np.array([3]))[0], colors[3], atol=1e-3)
