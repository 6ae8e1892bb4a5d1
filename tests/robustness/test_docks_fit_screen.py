"""The three docks at 1920 x 1080 and 1366 x 768: each dock's primary action (Run,
Train / Cancel and the progress bar, Next and Save labels now) stays in view, pinned
below its scrolled settings; a long recent-weights path is elided (full path as the
item's tool-tip) and no longer widens the dock column; the Scans table shows only the
columns that fit; advanced settings start collapsed. In a real napari window."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

DOCKS = ("Segment volume", "Fine-tune model", "Scans")
#: the widest a dock column may get with the long path below (it was ~1745 px)
MAX_DOCK_WIDTH = 480


@pytest.fixture(autouse=True)
def _own_settings(tmp_path, monkeypatch):
    """Recent weights and dock settings of these tests only."""
    monkeypatch.setenv("NAPARI_VNET_CONFIG_DIR", str(tmp_path / "config"))


@pytest.fixture
def long_weights(tmp_path) -> Path:
    """A real weights file under a long folder path, first in the recent-weights list."""
    from napari_vnet.weights import shipped_weights

    folder = tmp_path / ("a_long_project_folder_name_" * 3) / "experiments" / "2024-11-05_round_2"
    folder.mkdir(parents=True)
    path = folder / "unet3d-ct-finetuned-on-corrected-slices-of-patient-b-ft3.pt"
    shutil.copy(shipped_weights()["unet3d-phantom"], path)
    from napari_vnet._widgets._session import add_recent_weights

    add_recent_weights(path)
    return path


def _primary(docks) -> dict[str, list]:
    seg, ft, scans = (docks[name][1].content for name in DOCKS)
    return {
        "Segment volume": [seg.run_button, seg.progress_bar.native],
        "Fine-tune model": [ft.train_btn, ft.cancel_btn, ft.progress],
        "Scans": [scans.next_button, scans.prev_button, scans.save_button],
    }


def _settle(qtbot, window, size) -> None:
    from qtpy.QtWidgets import QApplication

    window.showNormal()
    window.resize(*size)
    for _ in range(3):
        QApplication.processEvents()
        qtbot.wait(30)


def _assert_in_view(button, dock, window) -> None:
    from qtpy.QtCore import QPoint, QRect

    name = getattr(button, "text", lambda: type(button).__name__)()
    assert button.isVisible(), name
    region = button.visibleRegion().boundingRect()
    assert region.size() == button.size(), f"{name!r} clipped: {region} of {button.size()}"
    in_dock = QRect(button.mapTo(dock, QPoint(0, 0)), button.size())
    assert dock.rect().contains(in_dock), f"{name!r} at {in_dock} outside {dock.rect()}"
    in_window = QRect(button.mapTo(window, QPoint(0, 0)), button.size())
    assert window.rect().contains(in_window), f"{name!r} at {in_window} off the window"


@pytest.mark.parametrize("size", [(1920, 1080), (1366, 768)])
def test_primary_actions_in_view_with_three_docks(make_napari_viewer, qtbot, long_weights, size):
    viewer = make_napari_viewer(show=True)
    docks = {name: viewer.window.add_plugin_dock_widget("napari-vnet", name) for name in DOCKS}
    seg = docks["Segment volume"][1]
    assert seg.select_weights(long_weights) is not None
    window = viewer.window._qt_window
    _settle(qtbot, window, size)
    assert window.width() <= size[0] and window.height() <= size[1]  # it did not grow
    for name, buttons in _primary(docks).items():
        dock = docks[name][0]
        assert dock.width() <= MAX_DOCK_WIDTH, f"{name} dock {dock.width()} px wide"
        for button in buttons:
            _assert_in_view(button, dock, window)
    # training shows the loss curve in the pinned part too, Train and Cancel still in view
    ft_dock, ft = docks["Fine-tune model"]
    ft.curve.show()
    _settle(qtbot, window, size)
    assert window.height() <= size[1]
    for widget in (ft.curve, ft.train_btn, ft.cancel_btn, ft.status_label):
        _assert_in_view(widget, ft_dock, window)
    assert ft.curve.height() >= 100


def test_long_recent_path_is_elided_with_the_full_path_as_tooltip(
    make_napari_viewer, qtbot, long_weights
):
    from qtpy.QtCore import Qt

    viewer = make_napari_viewer(show=True)
    _, seg = viewer.window.add_plugin_dock_widget("napari-vnet", "Segment volume")
    seg.select_weights(long_weights)
    combo = seg.model.weights.native
    row = combo.findData(str(long_weights))
    assert row >= 0
    text = combo.itemText(row)
    assert long_weights.name[:10] in text and "…" in text and len(text) <= 50
    assert combo.itemData(row, Qt.ItemDataRole.ToolTipRole) == str(long_weights)
    assert combo.toolTip() == str(long_weights)  # the chosen one, in full
    assert combo.sizeHint().width() < 300  # the long item no longer sets its width


def test_advanced_settings_start_collapsed_and_open(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    docks = [viewer.window.add_plugin_dock_widget("napari-vnet", n) for n in DOCKS]
    _settle(qtbot, viewer.window._qt_window, (1920, 1080))
    assert all(dock.isVisible() for dock, _ in docks)
    seg, ft, scans = (widget.content for _, widget in docks)
    groups = [
        (seg.settings_group, seg.overlap.native),
        (ft.advanced_group, ft.lr_spin),
        (scans.options_group, scans.autosave_spin),
    ]
    for group, inside in groups:
        assert not group.expanded and not inside.isVisible()
        group.toggle.click()
        assert group.expanded and inside.isVisible()


def test_scans_table_shows_only_columns_that_fit(make_napari_viewer, qtbot, tmp_path):
    import numpy as np
    import SimpleITK as sitk

    (tmp_path / "scans").mkdir()
    for i in range(3):
        img = sitk.GetImageFromArray(np.zeros((4, 8, 8), np.int16))
        name = f"patient_with_a_long_name_{i:02d}_ct.nii.gz"
        sitk.WriteImage(img, str(tmp_path / "scans" / name))
    viewer = make_napari_viewer(show=True)
    dock, scans = viewer.window.add_plugin_dock_widget("napari-vnet", "Scans")
    scans.set_work_folder(tmp_path / "work")
    scans.set_scans_folder(tmp_path / "scans")
    qtbot.waitUntil(lambda: scans.table.rowCount() == 3, timeout=20_000)
    table = scans.table
    for width in (330, 420, 900):
        dock.setFixedWidth(width)
        qtbot.wait(30)
        header = table.horizontalHeader()
        shown = [c for c in range(table.columnCount()) if not table.isColumnHidden(c)]
        assert 0 in shown and 1 in shown  # scan name and status always
        used = sum(header.sectionSize(c) for c in shown)
        assert used <= table.viewport().width() + 1, (width, used, table.viewport().width())
        sizes = [header.sectionSize(c) for c in shown]
        assert header.sectionSize(0) >= 100, (width, sizes, table.viewport().width())
    assert len(shown) == table.columnCount()  # wide: every column
