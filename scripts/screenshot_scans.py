"""Screenshot of the "Scans" dock in a real napari window -> docs/scans_widget.png.

Builds a small worklist in a temporary folder (synthetic phantom CTs as NIfTI, MHA and
NRRD, the shared real CT DICOM series and MR volume when ../shared/data is present, and a
corrupt file), opens the dock from the plugin's manifest, walks through a few scans the
way a user would (one corrected, one reviewed), loads the DICOM series with its label map
and grabs the whole window.

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshot_scans.py
    python scripts/screenshot_scans.py --out /tmp/scans.png   # with a display
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NAPARI_VNET_SHARED_DATA", ROOT.parent / "shared" / "data"))


def _wait(app, condition, timeout=60.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError("timed out waiting for the Scans dock")
        app.processEvents()
        time.sleep(0.02)


def make_worklist(folder: Path) -> None:
    from napari_vnet.io import write_volume
    from napari_vnet.phantoms import make_phantom

    for seed, name in enumerate(
        ["case001.nii.gz", "case002.mha", "case003.nrrd", "case004.nii.gz"]
    ):
        image, _labels, _classes = make_phantom(seed)
        write_volume(image, folder / name)
    (folder / "case005_corrupt.nii.gz").write_bytes(b"\x1f\x8b truncated download" * 10)
    ct = SHARED / "ct-dicom-patient-a" / "dicom"
    if ct.is_dir():
        shutil.copytree(ct, folder / "patient-a" / "ct")
    mr = SHARED / "mr" / "mr_small.nii.gz"
    if mr.is_file():
        shutil.copy(mr, folder / "mr_small.nii.gz")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "scans_widget.png")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="scans-shot-"))
    os.environ["NAPARI_VNET_CONFIG_DIR"] = str(tmp / "config")
    scans, work = tmp / "scans", tmp / "work"
    scans.mkdir()
    make_worklist(scans)

    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(title="napari-vnet: Scans")
    app = QApplication.instance()
    viewer.window._qt_window.resize(1600, 1000)
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-vnet", "Scans")
    widget.set_work_folder(work)
    widget.set_scans_folder(scans)
    _wait(app, lambda: widget._discovery is None and widget.entries)

    def load(which):
        loaded = []
        widget.scan_loaded.connect(loaded.append)
        widget.load_scan(which)
        _wait(app, lambda: loaded)
        widget.scan_loaded.disconnect(loaded.append)

    # case001: corrected by hand (a few painted voxels), case002: reviewed
    load("case001.nii.gz")
    image = viewer.layers[0]
    labels = viewer.add_labels(
        np.zeros(image.data.shape, np.uint8),
        name="liver",
        scale=image.scale,
        translate=image.translate,
    )
    z = image.data.shape[0] // 2
    labels.data_setitem((np.full(9, z), np.arange(40, 49), np.arange(40, 49)), 1)
    load("case002.mha")
    widget.mark_reviewed()

    names = [e.name for e in widget.entries if e.kind == "dicom" and not e.broken]
    if names:  # the real CT with its (TotalSegmentator) label map as the "prediction"
        from napari.layers import Labels

        from napari_vnet.io import read_volume, volume_to_layer_kwargs

        load(names[0])
        lab = read_volume(SHARED / "ct-dicom-patient-a" / "labels.nii.gz")
        viewer.add_layer(
            Labels(
                lab.array, name="labels (reference)", **volume_to_layer_kwargs(lab, is_label=True)
            )
        )
        viewer.dims.set_point(
            0,
            viewer.dims.range[0].start
            + 0.55 * (viewer.dims.range[0].stop - viewer.dims.range[0].start),
        )
    viewer.reset_view()
    for _ in range(20):
        app.processEvents()
        time.sleep(0.05)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(args.out), canvas_only=False, flash=False)
    sys.stdout.write(f"wrote {args.out}\n")
    widget.autosave()
    viewer.close()
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
