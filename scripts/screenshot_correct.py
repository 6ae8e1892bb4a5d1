"""Screenshot of the uncertainty layer and the "Correct" dock on the shared real CT, at
1920 x 1080 -> docs/correct_widget.png.

Opens the shared CT DICOM series (``../shared/data/ct-dicom-patient-a``), docks "Segment
volume" from the plugin's manifest, chooses shipped weights (``unet3d-ct-starter`` by
default), ticks "Uncertainty layer", runs the segmentation in the dock's thread worker
and waits for the result and its uncertainty layer. Then it closes the Segment dock (its
job is done: the picture is about correcting), docks "Correct" on the result (label: the
liver), presses **Next uncertain** (the viewer jumps to the most uncertain slice) and grabs
the whole window (``viewer.screenshot(canvas_only=False)``): canvas, layer list and dock.

    xvfb-run -a -s "-screen 0 1920x1080x24" python scripts/screenshot_correct.py
    python scripts/screenshot_correct.py --weights vnet-phantom --out /tmp/correct.png
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NAPARI_VNET_SHARED_DATA", ROOT.parent / "shared" / "data"))
CT = SHARED / "ct-dicom-patient-a" / "dicom"
WIDTH, HEIGHT = 1920, 1080

sys.path.insert(0, str(ROOT / "scripts"))
from screenshot_segment import _wait  # noqa: E402  (the sibling script's event-loop wait)


def _settle(app, seconds: float = 1.0) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)


def _close_toasts(viewer, app) -> None:
    """Notifications would cover the canvas."""
    try:
        from napari._qt.dialogs.qt_notification import NapariQtNotification
    except ImportError:
        return
    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()
    app.processEvents()


def _segment(viewer, app, image, weights: str):
    """Run the Segment dock with the uncertainty layer on; (labels, uncertainty layer)."""
    from napari_vnet._widgets._uncertainty_layer import find_uncertainty

    _dock, seg = viewer.window.add_plugin_dock_widget("napari-vnet", "Segment volume")
    if not seg.select_weights(weights):
        raise SystemExit(f"the Segment dock refused the weights {weights}")
    seg.set_image_layer(image)
    seg._settings.uncertainty.value = True
    added = []
    seg.prediction_added.connect(added.append)
    if seg.run() is None:
        raise SystemExit("the Segment dock did not start (see the notification)")
    _wait(app, lambda: added and seg.worker is None, what="the segmentation")
    labels = added[0]
    uncertainty = find_uncertainty(viewer, labels)
    if uncertainty is None:
        raise SystemExit(f"{weights}: no uncertainty layer came with the result")
    viewer.window.remove_dock_widget(_dock)
    return labels, uncertainty


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "correct_widget.png")
    ap.add_argument("--weights", default="unet3d-ct-starter")
    ap.add_argument("--label", default="liver", help="the class the Correct dock works on")
    args = ap.parse_args(argv)
    if not CT.is_dir():
        raise SystemExit(f"{CT}: the shared CT is missing (see ../shared/data/README.md)")

    tmp = Path(tempfile.mkdtemp(prefix="correct-shot-"))
    os.environ["NAPARI_VNET_CONFIG_DIR"] = str(tmp / "config")

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_vnet.io import read_volume, volume_to_layer_kwargs

    viewer = napari.Viewer(title="napari-vnet: Correct")
    app = QApplication.instance()
    window = viewer.window._qt_window
    window.resize(WIDTH, HEIGHT)
    window.move(0, 0)
    vol = read_volume(CT)
    image = viewer.add_image(vol.array, name="patient-a CT", **volume_to_layer_kwargs(vol))
    image.contrast_limits = (-160, 240)  # abdominal window
    labels, uncertainty = _segment(viewer, app, image, args.weights)
    labels.opacity = 0.35
    labels.contour = 2  # outlines: the uncertainty shows through
    uncertainty.opacity = 0.9

    _dock, correct = viewer.window.add_plugin_dock_widget("napari-vnet", "Correct")
    correct.labels.value = labels
    correct.image.value = image
    names = {name: value for value, name in _class_values(labels)}
    if args.label in names:
        correct.label.value = names[args.label]
        labels.selected_label = names[args.label]  # the brush paints that class too
    viewer.layers.selection.active = labels
    viewer.reset_view()
    _settle(app, 0.5)
    z = correct.next_uncertain()
    if z is None:
        raise SystemExit("Next uncertain found no slice")
    _settle(app, 1.5)
    _close_toasts(viewer, app)
    if (window.width(), window.height()) != (WIDTH, HEIGHT):
        sys.stdout.write(f"note: the window is {window.width()} x {window.height()}\n")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(args.out), canvas_only=False, flash=False)
    sys.stdout.write(f"wrote {args.out} ({labels.name}, most uncertain slice {z}: "
                     f"{correct.look_note.text()})\n")  # fmt: skip
    viewer.close()
    return 0


def _class_values(labels) -> list[tuple[int, str]]:
    """(value, name) of the result's classes, from its features table."""
    features = labels.features
    if "class" not in features or "index" not in features:
        return []
    return [(int(v), str(n)) for v, n in zip(features["index"], features["class"], strict=True)]


if __name__ == "__main__":
    sys.exit(main())
