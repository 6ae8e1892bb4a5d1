"""Truthful controls: each one shows what will actually run.

* Segment dock: an nnU-Net folder shows "nnU-Net v2" in the Architecture box (not the
  last own architecture), locked; own weights bring the box back;
* Segment dock: after Next in the Scans dock the status line names the scan now shown;
* Fine-tune dock: no "Save to ...vnet-new-ft1.pt" while no start weights are shown, and
  the New model list reads "V-Net", "3D U-Net", "Vox2Vox";
* ``napari-vnet info``: long histories summarised (whole with --json), nnU-Net's own
  preprocessing instead of ``normalization: {"kind": "none"}``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from napari_vnet.cli import main

WAIT_MS = 60_000
NNUNET = (
    Path(__file__).parent / "data" / "nnunet" / "Dataset901_TinyPhantom"
    / "nnUNetTrainer__nnUNetPlans__3d_fullres"
)  # fmt: skip


pytestmark = pytest.mark.usefixtures("config_dir")


# ------------------------------------------------------------------ Segment dock


@pytest.mark.gui
def test_architecture_box_shows_nnunet_for_an_nnunet_folder(make_napari_viewer):
    from napari_vnet._widgets.segment import SegmentWidget

    viewer = make_napari_viewer()
    seg = SegmentWidget(viewer)
    viewer.window.add_dock_widget(seg, name="Segment volume")
    assert seg.select_weights("vnet-phantom")
    seg.model.arch.value = "unet3d"  # the box left at another own architecture
    assert seg.select_weights(NNUNET)
    box = seg.model.arch
    assert box.native.currentText() == "nnU-Net v2" and box.value == "nnunet"
    assert not box.enabled  # the folder brings its network: nothing to choose
    assert "PlainConvUNet" in box.tooltip
    assert seg.model.problem is None and seg.model.current_arch == "nnunet"
    assert seg.select_weights("vnet-phantom")
    assert box.native.currentText() == "V-Net" and box.enabled


@pytest.mark.gui
def test_segment_status_names_the_scan_shown_after_next(
    tiny_checkpoint, make_napari_viewer, qtbot, tmp_path
):
    from napari_vnet._widgets.scans import ScansWidget
    from napari_vnet._widgets.segment import SegmentWidget

    scans = tmp_path / "scans"
    scans.mkdir()
    rng = np.random.default_rng(0)
    for name in ("p1.nii.gz", "p2.nii.gz"):
        img = sitk.GetImageFromArray(rng.normal(0, 100, (8, 16, 16)).astype(np.int16))
        img.SetSpacing((1.0, 1.0, 2.0))
        sitk.WriteImage(img, str(scans / name))
    viewer = make_napari_viewer()
    seg = SegmentWidget(viewer)
    viewer.window.add_dock_widget(seg, name="Segment volume")
    widget = ScansWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Scans")
    assert seg.select_weights(tiny_checkpoint(tmp_path / "tiny.pt"))
    widget.set_work_folder(tmp_path / "work")
    with qtbot.waitSignal(widget.discovery_finished, timeout=WAIT_MS):
        widget.set_scans_folder(scans)
    with qtbot.waitSignal(widget.scan_loaded, timeout=WAIT_MS):
        widget.load_scan("p1.nii.gz")
    seg.set_image_layer(widget._image_layer)
    with qtbot.waitSignal(seg.prediction_added, timeout=WAIT_MS):
        seg.run()
    qtbot.waitUntil(lambda: seg.worker is None, timeout=WAIT_MS)
    assert "p1" in seg.status.text()
    with qtbot.waitSignal(widget.scan_loaded, timeout=WAIT_MS):
        widget.next_scan()
    text = seg.status.text()
    assert "p2" in text and "p1" not in text, text


# ------------------------------------------------------------------ Fine-tune dock


@pytest.mark.gui
def test_finetune_proposes_no_output_without_start_weights(
    tiny_checkpoint, make_napari_viewer, tmp_path
):
    from napari_vnet._widgets.finetune import FinetuneWidget

    viewer = make_napari_viewer()
    ft = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(ft, name="Fine-tune model")
    assert ft.from_base_radio.isChecked() and ft.base_weights() is None
    assert ft.out_edit.text() == ""  # not "...vnet-new-ft1.pt" for weights nobody chose
    assert "start weights" in ft.out_edit.placeholderText()
    items = [ft.arch_combo.itemText(i) for i in range(ft.arch_combo.count())]
    assert items == ["V-Net", "3D U-Net", "Vox2Vox"]
    ft.new_model_radio.setChecked(True)
    assert Path(ft.out_edit.text()).name == "vnet-new-ft1.pt"
    ft.arch_combo.setCurrentIndex(1)
    assert Path(ft.out_edit.text()).name == "unet3d-new-ft1.pt"
    assert ft.training_config().arch == "unet3d"  # the registry name reaches training
    ft.from_base_radio.setChecked(True)
    ft.set_base_weights(tiny_checkpoint(tmp_path / "base.pt"))
    assert Path(ft.out_edit.text()) == tmp_path / "base-ft1.pt"


# ------------------------------------------------------------------ info


def test_info_summarises_histories_and_shows_nnunet_preprocessing(
    tiny_checkpoint, tmp_path, capsys
):
    losses = [round(1.0 / (i + 1), 4) for i in range(400)]
    history = {
        "iterations": 400,
        "loss": losses,
        "run": {"config": {f"key{i}": i for i in range(40)}, "device": "cpu"},
    }
    weights = tiny_checkpoint(tmp_path / "hist.pt", history)
    assert main(["info", str(weights)]) == 0
    out = capsys.readouterr().out
    assert "iterations: 400" in out
    assert "loss: 400 values, first 1, last 0.0025" in out
    assert max(len(line) for line in out.splitlines() if line.startswith("  ")) < 200
    assert "--json" in out
    assert main(["info", str(weights), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["card"]["history"]["loss"] == losses  # whole

    assert main(["info", str(NNUNET)]) == 0
    out = capsys.readouterr().out
    norm = next(line for line in out.splitlines() if line.startswith("normalization:"))
    assert '"kind": "none"' not in norm
    assert "nnU-Net's own (3d_fullres)" in norm and "CTNormalization: clip to [" in norm
    assert "architecture:  nnU-Net v2 PlainConvUNet" in out
