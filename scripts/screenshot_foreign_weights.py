"""Screenshot: the Segment dock running an nnU-Net v2 model folder on the shared real CT.

Opens the shared abdominal CT DICOM series (``../shared/data/ct-dicom-patient-a/dicom``)
with the plugin's reader, docks "Segment volume", chooses an nnU-Net v2 trained-model
folder (default: the small one the tests use, made by nnU-Net's own planner and trainer
on synthetic phantoms, liver + spine), runs it in the dock's thread worker and grabs the
whole window -> ``docs/foreign_weights_segment.png``. The dock's card shows where the
weights come from and their classes. The test model was trained on phantoms at 8 x 4.6 x
4.6 mm for a few minutes: its masks on a real CT are rough; the picture documents the
route, not a clinical model (pass ``--weights`` for a real nnU-Net folder).

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshot_foreign_weights.py
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
CT = ROOT.parent / "shared" / "data" / "ct-dicom-patient-a" / "dicom"
FOLDER = ROOT / "tests/data/nnunet/Dataset901_TinyPhantom/nnUNetTrainer__nnUNetPlans__3d_fullres"


def _wait(app, condition, timeout=900.0, what="the segmentation") -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError(f"timed out waiting for {what}")
        app.processEvents()
        time.sleep(0.02)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "foreign_weights_segment.png")
    ap.add_argument("--weights", type=Path, default=FOLDER)
    ap.add_argument("--image", type=Path, default=CT)
    args = ap.parse_args(argv)
    if not args.image.exists():
        raise SystemExit(f"{args.image}: not found (the shared real CT is beside the project)")

    tmp = Path(tempfile.mkdtemp(prefix="foreign-shot-"))
    os.environ["NAPARI_VNET_CONFIG_DIR"] = str(tmp / "config")
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(title="napari-vnet: an nnU-Net v2 model folder")
    app = QApplication.instance()
    viewer.window._qt_window.resize(1600, 1000)
    layers = viewer.open(str(args.image), plugin="napari-vnet")
    image = layers[0]
    image.contrast_limits = (-160.0, 240.0)  # soft-tissue window
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-vnet", "Segment volume")
    if not widget.select_weights(args.weights):
        raise SystemExit(f"the dock refused the weights {args.weights}")
    widget.set_image_layer(image)
    added = []
    widget.prediction_added.connect(added.append)
    widget.run()
    _wait(app, lambda: added and widget.worker is None)
    labels = added[0]
    labels.opacity = 0.5
    values = np.asarray(labels.data)
    z = int(np.argmax([(values[k] > 0).sum() for k in range(values.shape[0])]))
    viewer.dims.set_current_step(0, z)
    viewer.reset_view()
    for _ in range(30):
        app.processEvents()
        time.sleep(0.02)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(args.out), canvas_only=False)
    counts = {int(v): int((values == v).sum()) for v in np.unique(values)}
    sys.stdout.write(f"wrote {args.out} ({labels.name}, slice {z}, voxels per label {counts})\n")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
