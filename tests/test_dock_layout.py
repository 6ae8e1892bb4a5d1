"""All three docks fit a 1920x1080 screen together: each asks napari for a small minimum
height and scrolls its content; the dock objects still act as the widgets inside."""

from __future__ import annotations

import pytest

from napari_vnet._widgets._docking import DOCK_MIN_HEIGHT, ScrollDock

DOCKS = ("Segment volume", "Fine-tune model", "Scans")


def test_three_docks_fit_1080p(make_napari_viewer, qtbot):
    from qtpy.QtWidgets import QApplication

    from napari_vnet._widgets._session import Session
    from napari_vnet._widgets.finetune import FinetuneWidget
    from napari_vnet._widgets.scans import ScansWidget
    from napari_vnet._widgets.segment import SegmentWidget

    viewer = make_napari_viewer(show=True)
    widgets = {name: viewer.window.add_plugin_dock_widget("napari-vnet", name) for name in DOCKS}
    for name, (dock, widget) in widgets.items():
        assert isinstance(widget, ScrollDock), name
        # the content alone is taller than a third of the screen (Fine-tune ~930 px) ...
        assert widget.content.minimumSizeHint().height() > 0
        # ... but the dock asks for little and scrolls (its primary actions pinned below)
        footer = widget.content.footer.minimumSizeHint().height()
        assert dock.minimumSizeHint().height() <= DOCK_MIN_HEIGHT + footer + 40, name
        assert footer <= 160, name
        assert widget.minimumSizeHint().width() <= 520, name
    total = sum(d.minimumSizeHint().height() for d, _ in widgets.values())
    assert total < 1080 - 200  # room left for the menu bar, titles and status bar
    window = viewer.window._qt_window
    window.resize(1920, 1080)
    QApplication.processEvents()
    qtbot.wait(50)
    assert window.height() <= 1080 and window.minimumSizeHint().height() <= 1080
    # the dock objects pass through to the widgets inside
    seg = widgets["Segment volume"][1]
    assert seg.select_weights("unet3d-phantom") and seg.current_weights is not None
    session = Session.of(viewer)
    assert isinstance(session.segment, SegmentWidget)
    assert isinstance(session.finetune, FinetuneWidget)
    assert isinstance(session.scans, ScansWidget)
    with pytest.raises(AttributeError):
        seg.no_such_attribute  # noqa: B018


def test_demo_window_fits_the_screen(make_napari_viewer):
    from napari_vnet.commands.demo import fit_to_screen, launch_demo

    viewer = make_napari_viewer(show=True)
    demo = launch_demo(viewer)
    window = viewer.window._qt_window
    window.resize(1920, 2000)
    fit_to_screen(viewer)
    avail = window.screen().availableGeometry()
    assert window.height() <= avail.height() and window.width() <= avail.width()
    assert demo.segment.current_weights is not None
