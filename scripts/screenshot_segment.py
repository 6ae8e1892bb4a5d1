"""Screenshot of the "Segment volume" dock after a run, in a real napari window.

Opens the synthetic torso CT phantom (the plugin's sample data, else
``napari_vnet.phantoms.make_phantom``), docks "Segment volume" from the plugin's manifest,
chooses the shipped V-Net weights (``vnet-phantom``), runs the segmentation in the
dock's thread worker, waits for the Labels layer and grabs the whole window
(``viewer.screenshot(canvas_only=False)``) -> ``docs/segment_widget.png``.

Without shipped weights (a source tree before they were trained) a small V-Net is
trained on other phantoms for ``--train-minutes`` first, so the picture still shows a
real prediction; the dock's model card then says so.

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshot_segment.py
    python scripts/screenshot_segment.py --out /tmp/segment.png   # with a display
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _wait(app, condition, timeout=900.0, what="the Segment volume dock") -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError(f"timed out waiting for {what}")
        app.processEvents()
        time.sleep(0.02)


def _ensure_display():
    if os.environ.get("DISPLAY") or os.environ.get("QT_QPA_PLATFORM") == "offscreen":
        return None
    from pyvirtualdisplay import Display

    display = Display(visible=False, size=(1600, 1000), color_depth=24)
    display.start()
    return display


def _weights(tmp: Path, minutes: float) -> str | Path:
    from napari_vnet.weights import shipped_weights

    if "vnet-phantom" in shipped_weights():
        return "vnet-phantom"
    from napari_vnet.phantoms import make_phantom
    from napari_vnet.training import TrainConfig, TrainingPair, finetune

    sys.stdout.write(f"no shipped vnet-phantom weights: training a small V-Net for {minutes} min\n")
    pairs = []
    for seed in (11, 12, 13):
        image, labels, classes = make_phantom(seed)
        pairs.append(TrainingPair(image.array, labels.array, image.spacing))
    config = TrainConfig(
        arch="vnet",
        arch_kwargs={"channels": [8, 16, 32], "kernel_size": 3},
        classes=classes,
        iterations=None,
        minutes=minutes,
        patch_size=(32, 48, 48),
        lr=3e-3,
        augment=False,
        foreground_fraction=0.8,
        normalization={"kind": "window", "low": -200.0, "high": 300.0},
    )
    gen = finetune(pairs, config, out=tmp / "vnet-phantom-quick.pt")
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value["out"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "segment_widget.png")
    ap.add_argument("--train-minutes", type=float, default=3.0)
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="segment-shot-"))
    os.environ["NAPARI_VNET_CONFIG_DIR"] = str(tmp / "config")
    display = _ensure_display()
    weights = _weights(tmp, args.train_minutes)

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_vnet._sample_data import phantom_ct

    viewer = napari.Viewer(title="napari-vnet: Segment volume")
    app = QApplication.instance()
    viewer.window._qt_window.resize(1600, 1000)
    (img_data, img_kw, _), (_gt, _gt_kw, _) = phantom_ct()
    image = viewer.add_image(img_data, **img_kw)
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-vnet", "Segment volume")
    if not widget.select_weights(weights):
        raise SystemExit(f"the dock refused the weights {weights}")
    widget.set_image_layer(image)
    widget.post["fill_holes"].value = True  # (largest component would drop a kidney)
    added = []
    widget.prediction_added.connect(added.append)
    widget.run()
    _wait(app, lambda: added and widget.worker is None, what="the segmentation")
    labels = added[0]
    labels.opacity = 0.55
    viewer.layers.selection.active = labels

    # a slice through the liver, and the class name under the cursor in the status bar
    # (the slice showing the most classes, then the most liver)
    values = labels.data
    scores = [
        (len(set(np.unique(values[k])) - {0}), int((values[k] == 1).sum()), k)
        for k in range(values.shape[0])
    ]
    z = max(scores)[2]
    viewer.dims.set_current_step(0, z)
    viewer.reset_view()
    ys, xs = (values[z] == 1).nonzero()
    if len(ys):
        data_pos = (z, float(ys.mean()), float(xs.mean()))
        world = labels.data_to_world(data_pos)
        viewer.cursor.position = tuple(world)
        viewer.status = labels.get_status(world, world=True)
    for _ in range(30):
        app.processEvents()
        time.sleep(0.02)
    try:  # the "Segmented ..." toast would cover the canvas
        from napari._qt.dialogs.qt_notification import NapariQtNotification

        for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
            toast.close()
        app.processEvents()
    except ImportError:
        pass

    args.out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(args.out), canvas_only=False)
    sys.stdout.write(f"wrote {args.out} ({labels.name}, slice {z})\n")
    viewer.close()
    if display is not None:
        display.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
