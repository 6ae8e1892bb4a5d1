"""Screenshots of a real scan in napari at 1920x1080 for docs/ (run under Xvfb):

    xvfb-run -a -s "-screen 0 1920x1080x24" python scripts/screenshot_first_minutes.py [which]

which: ``ct`` (the shared CT, axial and coronal, soft-tissue window, named labels),
``mismatch`` (the shared MR with a CT model in the Segment dock), ``docks`` (the three
docks together). Default: all. Needs ../shared/data beside the project.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NAPARI_VNET_SHARED_DATA", ROOT.parent / "shared" / "data"))
DOCS = ROOT / "docs"
SIZE = (1920, 1080)


def _viewer():
    import napari

    viewer = napari.Viewer(title="napari-vnet")
    viewer.window._qt_window.showNormal()
    viewer.window.resize(*SIZE)
    viewer.window._qt_window.move(0, 0)
    return viewer


def _settle(viewer, ms: int = 800):
    from qtpy.QtCore import QCoreApplication, QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()
    QCoreApplication.processEvents()


def _save(viewer, name: str) -> Path:
    import imageio.v3 as iio

    shot = viewer.screenshot(canvas_only=False, flash=False)
    path = DOCS / name
    iio.imwrite(path, shot)
    print(path, shot.shape)  # noqa: T201 - a script reporting what it wrote
    return path


def _hover(viewer, layer, value: int):
    """Put the cursor on a voxel of class ``value`` (the status bar shows its name)."""
    idx = np.argwhere(np.asarray(layer.data) == value)
    z, y, x = idx[len(idx) // 2]
    viewer.dims.set_point(0, layer.data_to_world((z, y, x))[0])
    viewer.cursor.position = tuple(layer.data_to_world((z, y, x)))
    viewer.layers.selection.active = layer
    viewer.update_status_from_cursor()


def shot_ct():
    import imageio.v3 as iio

    from napari_vnet._widgets._display import set_window

    viewer = _viewer()
    root = DATA / "ct-dicom-patient-a"
    viewer.window.add_plugin_dock_widget("napari-vnet", "Scans")  # first use: no dialogs
    viewer.window.remove_dock_widget("all")
    (ct,) = viewer.open(str(root / "dicom"), plugin=None)
    (lab,) = viewer.open(str(root / "labels.nii.gz"), plugin=None)
    set_window(ct, "soft tissue")
    lab.opacity = 0.45
    names = lab.features.set_index("index")["class"]
    present = [v for v in np.unique(np.asarray(lab.data)) if v and v in names.index]
    big = sorted(present, key=lambda v: -int((np.asarray(lab.data) == v).sum()))[:6]
    viewer.text_overlay.visible = True
    viewer.text_overlay.font_size = 12
    viewer.text_overlay.color = "white"
    viewer.text_overlay.text = "labels.json: " + ", ".join(f"{v} {names[v]}" for v in big) + " …"
    viewer.scale_bar.visible = True
    viewer.axes.visible = True
    viewer.axes.labels = True
    viewer.reset_view()
    _hover(viewer, lab, 5)  # liver: its name in the status bar
    _settle(viewer)
    axial = _save(viewer, "ct_axial_labels.png")
    viewer.dims.order = (1, 0, 2)  # coronal
    viewer.dims.set_point(1, float(np.mean(viewer.dims.range[1][:2])))
    viewer.reset_view()
    viewer.camera.zoom *= 1.0
    _hover(viewer, lab, 5)
    viewer.dims.order = (1, 0, 2)
    _settle(viewer)
    coronal = _save(viewer, "ct_coronal_labels.png")
    # one figure: axial above coronal, each at half size
    a, c = iio.imread(axial), iio.imread(coronal)
    both = np.concatenate([a[::2, ::2], c[::2, ::2]], axis=1)
    iio.imwrite(DOCS / "ct_axial_coronal_labels.png", both)
    print(DOCS / "ct_axial_coronal_labels.png", both.shape)  # noqa: T201 - a script reporting what it wrote
    viewer.close()


def shot_mismatch():
    viewer = _viewer()
    _, segment = viewer.window.add_plugin_dock_widget("napari-vnet", "Segment volume")
    (mr,) = viewer.open(str(DATA / "mr" / "mr_small.nii.gz"), plugin=None)
    segment.select_weights("unet3d-phantom")
    segment.set_image_layer(mr)
    viewer.reset_view()
    _settle(viewer)
    _save(viewer, "mismatch_warning.png")
    viewer.close()


def shot_docks():
    viewer = _viewer()
    _, segment = viewer.window.add_plugin_dock_widget("napari-vnet", "Segment volume")
    _, finetune = viewer.window.add_plugin_dock_widget("napari-vnet", "Fine-tune model")
    _, scans = viewer.window.add_plugin_dock_widget("napari-vnet", "Scans")
    (ct,) = viewer.open(str(DATA / "ct-dicom-patient-a" / "dicom"), plugin=None)
    segment.select_weights("unet3d-phantom")
    segment.set_image_layer(ct)
    viewer.reset_view()
    _settle(viewer, 1500)
    _save(viewer, "three_docks.png")
    viewer.close()


def main(which: list[str]) -> int:
    from napari_vnet.reader_preferences import register_reader_preferences

    if not DATA.is_dir():
        print(f"no shared data at {DATA}", file=sys.stderr)  # noqa: T201 - a script reporting what it wrote
        return 1
    register_reader_preferences()
    shots = {"ct": shot_ct, "mismatch": shot_mismatch, "docks": shot_docks}
    for name in which or list(shots):
        shots[name]()
    return 0


if __name__ == "__main__":
    os.environ.setdefault(
        "NAPARI_CONFIG", str(Path("/tmp") / "napari-vnet-screenshots" / "settings.yaml")
    )
    sys.exit(main(sys.argv[1:]))
