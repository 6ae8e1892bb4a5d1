"""Model/input mismatch checks: the core rules, ``napari-vnet predict`` saying them (and
still running), the Segment dock showing them and the demo-model note before Run."""

from __future__ import annotations

import numpy as np

from napari_vnet.models import ClassInfo, ModelCard
from napari_vnet.workflows.input_check import check_input, demo_note, expects_hu


def _card(**kw):
    base = dict(
        arch="unet3d",
        arch_kwargs={"channels": [4, 8]},
        classes=[ClassInfo(0, "background"), ClassInfo(1, "liver")],
        normalization={"kind": "window", "low": -200.0, "high": 400.0},
        spacing=(2.0, 1.0, 1.0),
        patch_size=(16, 16, 16),
    )
    base.update(kw)
    return ModelCard(**base)


def _ct(shape=(8, 24, 24)):
    a = np.full(shape, -1000, np.int16)
    a[:, 4:20, 4:20] = 60
    a[:, 10:12, 10:12] = 900
    return a


def _mr(shape=(8, 24, 24)):
    return (np.random.default_rng(0).random(shape) * 800).astype(np.int16)


def test_rules():
    ct_card = _card()
    assert expects_hu(ct_card) is True
    assert expects_hu(_card(normalization={"kind": "zscore"})) is None
    mr_card = _card(
        normalization={"kind": "none"},
        source={"format": "nnunet", "channel_names": {"0": "T2"}},
    )
    assert expects_hu(mr_card) is False
    assert check_input(ct_card, shape=(8, 24, 24), spacing=(2, 1, 1), values=_ct()) == []
    (hu,) = check_input(ct_card, shape=(8, 24, 24), spacing=(2, 1, 1), values=_mr())
    assert hu.level == "warning" and "Hounsfield" in hu.text
    (mod,) = check_input(ct_card, shape=(8, 24, 24), values=_ct(), modality="MR")
    assert "this is MR data" in mod.text  # the header's modality wins over the values
    (back,) = check_input(mr_card, shape=(8, 24, 24), values=_ct())
    assert "trained on MR" in back.text
    (sp,) = check_input(ct_card, shape=(8, 24, 24), spacing=(10.0, 1, 1), values=_ct())
    assert "5×" in sp.text and sp.level == "warning"
    assert check_input(ct_card, shape=(8, 24, 24), spacing=(7.9, 1, 1)) == []  # 3.95×
    (flat,) = check_input(ct_card, shape=(24, 24), values=_ct((1, 24, 24))[0])
    assert "2D" in flat.text
    (four,) = check_input(ct_card, shape=(3, 8, 24, 24))
    assert "4D" in four.text
    (ch,) = check_input(_card(in_channels=2), shape=(8, 24, 24), channels=1)
    assert ch.refuses and "2 input channels" in ch.text
    (rgb,) = check_input(ct_card, shape=(8, 24, 24), channels=3)
    assert rgb.refuses and "the image has 3" in rgb.text


def test_demo_note_for_shipped_models():
    from napari_vnet.models import read_card
    from napari_vnet.weights import shipped_weights

    for name, path in shipped_weights().items():
        # phantom demos say synthetic; the real-CT starter says it saw one CT
        want = "one public abdominal CT" if name.endswith("ct-starter") else "synthetic"
        assert want in (demo_note(read_card(path)) or ""), name
    assert demo_note(_card(description="trained on 40 real CT scans")) is None


def test_predict_cli_warns_and_runs(shared_data, tmp_path, capsys):
    from napari_vnet.cli import main

    out = tmp_path / "mr_pred.nii.gz"
    mr = shared_data / "mr" / "mr_small.nii.gz"
    assert main(["predict", str(mr), "--weights", "unet3d-phantom", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "Hounsfield" in err and "mr_small.nii.gz" in err
    assert out.is_file()  # a heuristic never refuses


def test_predict_cli_refuses_channel_mismatch(tmp_path, capsys):
    import SimpleITK as sitk

    from napari_vnet.cli import main
    from napari_vnet.models import build_model, save_checkpoint

    card = _card(in_channels=2)
    save_checkpoint(build_model(card), card, tmp_path / "two.pt")
    img = sitk.GetImageFromArray(_ct((8, 16, 16)))
    sitk.WriteImage(img, str(tmp_path / "ct.nii.gz"))
    rc = main(
        [
            "predict",
            str(tmp_path / "ct.nii.gz"),
            "--weights",
            str(tmp_path / "two.pt"),
            "--out",
            str(tmp_path / "p.nii.gz"),
        ]
    )
    assert rc == 1 and "refused: This model takes 2 input channels" in capsys.readouterr().err
    assert not (tmp_path / "p.nii.gz").exists()


def test_segment_dock_shows_mismatch_and_demo_note(make_napari_viewer, qtbot, shared_data):
    from napari_vnet._widgets.segment import SegmentWidget

    viewer = make_napari_viewer()
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment")
    (mr,) = viewer.open(str(shared_data / "mr" / "mr_small.nii.gz"), plugin="napari-vnet")
    assert widget.select_weights("unet3d-phantom")
    widget.set_image_layer(mr)
    text = widget.check_note.text()
    assert not widget.check_note.isHidden()
    assert "Hounsfield" in text and "synthetic" in text
    assert widget.run_button.isEnabled()  # warned, not refused
    ct = viewer.add_image(_ct(), scale=(4.0, 2.5, 2.5), name="ct-like")
    widget.set_image_layer(ct)
    assert "Hounsfield" not in widget.check_note.text()
    assert "synthetic" in widget.check_note.text()  # the demo note stays before Run


def test_predict_folder_warns_per_case(shared_data, tmp_path, caplog):
    import shutil

    from napari_vnet.cli import main

    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(shared_data / "mr" / "mr_small.nii.gz", scans / "mr_small.nii.gz")
    rc = main(
        ["predict", str(scans), "--weights", "unet3d-phantom", "--out", str(tmp_path / "out")]
    )
    # logged as warnings (stderr in a terminal; pytest's log capture here)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert rc == 0 and any("Hounsfield" in m and "mr_small.nii.gz" in m for m in warned)
    assert list((tmp_path / "out").glob("mr_small*"))
