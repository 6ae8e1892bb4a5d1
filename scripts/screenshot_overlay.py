"""Open the shared CT DICOM series and its label map in a real napari window, screenshot.

The label map is stored with flipped rows (direction diag(1, -1, 1)); the organs only
sit on the anatomy if the reader honours direction cosines. Run headless with:

    xvfb-run -a python scripts/screenshot_overlay.py [--data ../shared/data] [--out docs/overlay_ct_labels.png]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "overlay_ct_labels.png")
    ap.add_argument("--slice", type=int, default=None, help="axial slice (default: most liver)")
    args = ap.parse_args()

    import napari
    import numpy as np

    case = args.data / "ct-dicom-patient-a"
    if not (case / "dicom").is_dir():
        print(f"shared data not found at {case}", file=sys.stderr)  # noqa: T201
        return 2
    viewer = napari.Viewer(show=True)
    (ct,) = viewer.open(str(case / "dicom"), plugin="napari-vnet")
    (labels,) = viewer.open(str(case / "labels.nii.gz"), plugin="napari-vnet")
    labels.opacity = 0.45
    k = args.slice
    if k is None:  # the slice with the most liver (label 5)
        k = int(np.argmax((np.asarray(labels.data) == 5).sum(axis=(1, 2))))
    z_world = float(ct.data_to_world((k, 0, 0))[0])
    viewer.dims.set_point(0, z_world)
    viewer.window._qt_window.resize(1100, 900)
    viewer.reset_view()
    with warnings.catch_warnings():  # text_overlay/camera: renamed in napari 0.9
        warnings.simplefilter("ignore", DeprecationWarning)
        viewer.camera.zoom *= 1.35
        viewer.text_overlay.visible = True
        viewer.text_overlay.font_size = 9
        viewer.text_overlay.position = "top_left"
        viewer.text_overlay.text = (
            f"CT '{ct.name}' (DICOM, 20 slices)\n"
            f"+ labels.nii.gz (rows flipped in the file)\nz = {z_world:.1f} mm (LPS)"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(args.out), canvas_only=True, flash=False)
    msg = f"wrote {args.out} (slice {k}; CT scale {tuple(map(float, ct.scale))}, "
    print(msg + f"labels scale {tuple(map(float, labels.scale))})")  # noqa: T201
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
