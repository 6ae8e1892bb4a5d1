"""The Scans dock with its siblings: predict on open (Segment volume), each scan's
uncertainty and the order "least certain first", and "Fine-tune on corrected scans"
(Fine-tune model), with a tiny real checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("config_dir")]

WAIT_MS = 60_000


@pytest.fixture
def ckpt(tmp_path, tiny_checkpoint):
    return tiny_checkpoint(tmp_path / "tiny.pt")


@pytest.fixture
def scans(tmp_path):
    root = tmp_path / "scans"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in ("p1.nii.gz", "p2.mha"):
        img = sitk.GetImageFromArray(rng.normal(0, 100, (8, 16, 16)).astype(np.int16))
        img.SetSpacing((1.0, 1.0, 2.0))
        sitk.WriteImage(img, str(root / name))
    return root


def test_predict_on_open_then_finetune_on_corrected(
    make_napari_viewer, qtbot, scans, ckpt, tmp_path
):
    from napari_vnet._widgets.finetune import FinetuneWidget
    from napari_vnet._widgets.scans import ScansWidget
    from napari_vnet._widgets.segment import SegmentWidget

    viewer = make_napari_viewer()
    seg = SegmentWidget(viewer)
    viewer.window.add_dock_widget(seg, name="Segment volume")
    fine = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(fine, name="Fine-tune model")
    widget = ScansWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Scans")
    assert seg.select_weights(ckpt)
    widget.predict_check.setChecked(True)
    widget.set_work_folder(tmp_path / "work")
    with qtbot.waitSignal(widget.discovery_finished, timeout=WAIT_MS):
        widget.set_scans_folder(scans)

    with qtbot.waitSignal(seg.prediction_added, timeout=WAIT_MS) as got:
        with qtbot.waitSignal(widget.scan_loaded, timeout=WAIT_MS):
            widget.load_scan("p1.nii.gz")
    prediction = got.args[0]
    qtbot.waitUntil(lambda: seg.worker is None, timeout=WAIT_MS)
    key = "p1.nii.gz"
    widget.saver.flush()  # the project file is written in the background
    record = widget.project.record(key)
    assert record["status"] == "predicted"
    assert record["weights"] == str(ckpt)

    # the user corrects two slices of the prediction
    prediction.data_setitem((np.array([3, 4]), np.array([5, 5]), np.array([6, 6])), 1)
    assert widget.status_of(widget._entry(key)) == "corrected"  # at once, in the dock
    widget.saver.flush()
    assert widget.project.status(key) == "corrected"

    with qtbot.waitSignal(widget.scan_loaded, timeout=WAIT_MS):
        widget.next_scan()
    qtbot.waitUntil(lambda: seg.worker is None, timeout=WAIT_MS)  # p2 predicted on open
    # p2 had no labels: p1's Labels layer stayed as an empty placeholder, and p2's
    # prediction went into it (no second layer constructed and added)
    from napari.layers import Labels

    (result,) = [lay for lay in viewer.layers if isinstance(lay, Labels)]
    assert result is prediction and result.name == "p2.mha [V-Net]"
    assert result.metadata["napari_vnet"]["source_layer"] == "p2.mha"
    assert len(result._undo_history) == 0
    widget.saver.flush()
    assert widget.project.status("p2.mha") == "predicted"
    widget.mark_reviewed()  # p2: reviewed as predicted (saved labels: the prediction)

    assert widget.finetune_on_corrected() == 2
    pairs = {p.image_path.name: p for p in fine.pairs}
    assert set(pairs) == {"p1.nii.gz", "p2.mha"}
    annotated = pairs["p1.nii.gz"].annotated
    assert {k: annotated[k] for k in ("axis", "slices")} == {"axis": 0, "slices": [3, 4]}
    # the record also says which labels were corrected where (label 1 at (5, 6))
    assert {z: r["labels"] for z, r in annotated["edits"].items()} == {"3": [1], "4": [1]}
    saved = sitk.GetArrayFromImage(sitk.ReadImage(str(pairs["p1.nii.gz"].labels_path)))
    assert saved[3, 5, 6] == 1 and saved.shape == (8, 16, 16)


def test_timer_autosave_and_window_close(make_napari_viewer, qtbot, scans, tmp_path):
    from napari_vnet._widgets.scans import ScansWidget

    viewer = make_napari_viewer()
    widget = ScansWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Scans")
    widget.set_work_folder(tmp_path / "work")
    with qtbot.waitSignal(widget.discovery_finished, timeout=WAIT_MS):
        widget.set_scans_folder(scans)
    with qtbot.waitSignal(widget.scan_loaded, timeout=WAIT_MS):
        widget.load_scan("p2.mha")
    image = viewer.layers[0]
    labels = viewer.add_labels(np.zeros(image.data.shape, np.uint8), name="edit", scale=image.scale)
    labels.paint((2, 2, 2), 4)
    assert widget._timer.isActive()  # the N-minute autosave is armed by the edit
    with qtbot.waitSignal(widget.autosaved, timeout=WAIT_MS) as got:
        widget._timer.setInterval(10)
        widget._timer.start()
    assert got.args[0][0].exists()

    labels.paint((3, 3, 3), 6)
    assert widget._hooked_window() is viewer.window._qt_window
    with qtbot.waitSignal(widget.autosaved, timeout=WAIT_MS) as got:
        viewer.window._qt_window.close()  # the window's close event (user closing napari)
    back = sitk.GetArrayFromImage(sitk.ReadImage(str(got.args[0][0])))
    assert back[3, 3, 3] == 6 and back[2, 2, 2] == 4


@pytest.fixture
def three_scans(tmp_path):
    root = tmp_path / "three"
    root.mkdir()
    rng = np.random.default_rng(0)
    smooth = np.linspace(-200, 200, 8 * 16 * 16).reshape(8, 16, 16)
    images = {
        "p1.nii.gz": smooth,  # smooth: the tiny network is fairly sure of it
        "p2.mha": rng.normal(0, 300, (8, 16, 16)),  # noise: less sure
        "p3.nrrd": rng.normal(0, 100, (8, 16, 16)),  # never predicted
    }
    for name, arr in images.items():
        img = sitk.GetImageFromArray(arr.astype(np.int16))
        img.SetSpacing((1.0, 1.0, 2.0))
        sitk.WriteImage(img, str(root / name))
    return root


def _predict(qtbot, widget, seg, action):
    with qtbot.waitSignal(seg.prediction_added, timeout=WAIT_MS) as got:
        with qtbot.waitSignal(widget.scan_loaded, timeout=WAIT_MS):
            action()
    qtbot.waitUntil(lambda: seg.worker is None, timeout=WAIT_MS)
    return got.args[0]


def test_uncertainty_column_and_least_certain_first(
    make_napari_viewer, qtbot, three_scans, ckpt, tmp_path
):
    """The "Uncertainty" column and "Order: least certain first": two scans predicted on
    open (the Segment dock's uncertainty layer off), a third never predicted."""
    from napari.layers import Image

    from napari_vnet._widgets._scans_table import COL_UNCERTAINTY, COLUMNS
    from napari_vnet._widgets.scans import ScansWidget
    from napari_vnet._widgets.segment import SegmentWidget

    viewer = make_napari_viewer()
    seg = SegmentWidget(viewer)
    viewer.window.add_dock_widget(seg, name="Segment volume")
    widget = ScansWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Scans")
    assert seg.select_weights(ckpt)
    assert not seg._settings.uncertainty.value  # the uncertainty layer is off
    widget.predict_check.setChecked(True)
    widget.set_work_folder(tmp_path / "work")
    with qtbot.waitSignal(widget.discovery_finished, timeout=WAIT_MS):
        widget.set_scans_folder(three_scans)
    assert [e.key for e in widget.visible_entries()] == ["p1.nii.gz", "p2.mha", "p3.nrrd"]

    first = _predict(qtbot, widget, seg, lambda: widget.load_scan("p1.nii.gz"))
    assert "uncertainty_score" in first.metadata["napari_vnet"]
    _predict(qtbot, widget, seg, widget.next_scan)  # p2, predicted on open
    widget.predict_check.setChecked(False)  # p3 stays unpredicted
    # the map was computed for the score only: no uncertainty layer was added
    assert not [lay for lay in viewer.layers if isinstance(lay, Image) and "uncertainty" in lay.name]

    score = {e.key: widget.uncertainty_of(e) for e in widget.entries}
    assert score["p3.nrrd"] is None
    assert 0.0 < score["p1.nii.gz"] < score["p2.mha"] < 1.0  # p2 is the less certain
    table = widget.table
    assert table.horizontalHeaderItem(COL_UNCERTAINTY).text() == COLUMNS[COL_UNCERTAINTY]
    assert not table.isColumnHidden(COL_UNCERTAINTY)
    # shown right after the status
    assert table.horizontalHeader().visualIndex(COL_UNCERTAINTY) == 2
    text = {e.key: table.item(table.row_of[e.key], COL_UNCERTAINTY).text() for e in widget.entries}
    assert text == {"p1.nii.gz": f"{score['p1.nii.gz']:.3f}", "p2.mha": f"{score['p2.mha']:.3f}",
                    "p3.nrrd": "—"}  # fmt: skip
    widget.saver.flush()  # the scores are in the project file
    assert widget.project.uncertainty("p2.mha") == pytest.approx(score["p2.mha"], abs=1e-5)

    widget.set_order("least certain first")
    order = ["p2.mha", "p1.nii.gz", "p3.nrrd"]  # the least certain first, unpredicted last
    assert [e.key for e in widget.visible_entries()] == order
    shown = [table.item(r, 0).text() for r in table.visual_rows()]
    assert shown == order
    # Next / Previous follow the order shown (p2 is the current scan)
    assert widget.current.key == "p2.mha"
    with qtbot.waitSignal(widget.scan_loaded, timeout=WAIT_MS):
        widget.next_scan()
    assert widget.current.key == "p1.nii.gz"
    with qtbot.waitSignal(widget.scan_loaded, timeout=WAIT_MS):
        widget.next_scan()
    assert widget.current.key == "p3.nrrd"
    assert widget.next_scan() is None  # the last of the list
    with qtbot.waitSignal(widget.scan_loaded, timeout=WAIT_MS):
        widget.previous_scan()
    assert widget.current.key == "p1.nii.gz"

    # a new score moves its scan at once: p3 predicted, very uncertain -> first
    widget._mark("p3.nrrd", "predicted", weights=str(ckpt), uncertainty=0.99)
    assert [e.key for e in widget.visible_entries()] == ["p3.nrrd", *order[:2]]
    widget.set_order("folder")
    assert [e.key for e in widget.visible_entries()] == ["p1.nii.gz", "p2.mha", "p3.nrrd"]
    with pytest.raises(ValueError, match="unknown order"):
        widget.set_order("random")
    widget.set_order("least certain first")  # remembered with the dock's settings
    widget.saver.flush()
    # a new session: the order and the scores come back (the list fills in that order)
    again = ScansWidget(make_napari_viewer())
    assert again.order_combo.currentText() == "least certain first"
    qtbot.waitUntil(lambda: again._discovery is None and len(again.entries) == 3, timeout=WAIT_MS)
    assert [e.key for e in again.visible_entries()] == ["p3.nrrd", *order[:2]]
