"""Screenshot of the "Fine-tune model" dock after a real CPU run -> docs/finetune_widget.png.

The story a user lives through: a synthetic torso CT phantom is open; a few axial slices
are corrected by hand (here: the phantom's true labels painted into them through the
Labels layer API, so the dock's edit tracker sees real paint events); the dock trains on
just those slices in its thread worker while the loss and validation-Dice curve grows;
the new weights are selected in "Segment volume" and one click re-runs it.

Starts from the shipped phantom weights when they are installed (fine-tuning), else from
a new small 3D U-Net (training from the corrected slices only).

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshot_finetune.py
    python scripts/screenshot_finetune.py --minutes 1 --out /tmp/ft.png
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _wait(app, condition, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError(f"timed out waiting for {what}")
        app.processEvents()
        time.sleep(0.02)


def _mean_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    from napari_vnet.metrics import dice_per_class

    d = dice_per_class(pred, truth, sorted(set(np.unique(truth).tolist()) - {0}))
    return round(float(np.mean(list(d.values()))), 3)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "finetune_widget.png")
    ap.add_argument("--minutes", type=float, default=2.0, help="training time budget")
    ap.add_argument("--seed", type=int, default=3, help="phantom seed")
    ap.add_argument("--slices", type=int, default=8, help="axial slices corrected by hand")
    ap.add_argument("--base", type=Path, help="base weights (default: shipped phantom weights)")
    ap.add_argument(
        "--shift",
        type=float,
        default=80.0,
        help="HU offset (+10%% gain, noise) simulating another scanner, so the base model "
        "has something to learn; 0 for the phantom as is",
    )
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="finetune-shot-"))
    os.environ["NAPARI_VNET_CONFIG_DIR"] = str(tmp / "config")

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_vnet.io import volume_to_layer_kwargs
    from napari_vnet.phantoms import make_phantom

    image_vol, truth_vol, classes = make_phantom(args.seed)
    truth = truth_vol.array
    base = args.base
    if base is None:
        from napari_vnet.weights import shipped_weights

        shipped = shipped_weights()
        base = shipped.get("unet3d-phantom") or shipped.get("vnet-phantom")
    ct = image_vol.array.astype(np.float32)
    if args.shift:
        rng = np.random.default_rng(1)
        ct = (1.1 * ct + args.shift + rng.normal(0, 25, ct.shape)).astype(np.float32)

    viewer = napari.Viewer(title="napari-vnet: Fine-tune model")
    app = QApplication.instance()
    viewer.window._qt_window.resize(1600, 1000)
    image = viewer.add_image(
        ct,
        name="phantom CT",
        colormap="gray",
        contrast_limits=(-250, 350),
        **volume_to_layer_kwargs(image_vol),
    )
    _, seg = viewer.window.add_plugin_dock_widget("napari-vnet", "Segment volume")
    ft_dock, ft = viewer.window.add_plugin_dock_widget(
        "napari-vnet", "Fine-tune model", tabify=True
    )
    geometry = {k: v for k, v in volume_to_layer_kwargs(truth_vol).items() if k != "metadata"}

    if base is not None:  # segment with the base weights, then correct the prediction
        seg.select_weights(base)
        seg.set_image_layer(image)
        added = []
        seg.prediction_added.connect(added.append)
        seg.run()
        _wait(app, lambda: bool(added), 600, "the base prediction")
        labels = added[0]
        labels.name = "corrected"
        before = _mean_dice(np.asarray(labels.data), truth)
    else:
        labels = viewer.add_labels(np.zeros_like(truth), name="annotation", **geometry)
        before = None
    soft = [c.value for c in classes if c.value and c.name != "spine"]  # the organs
    organs = np.isin(truth, soft)
    z_with_organs = np.flatnonzero(organs.reshape(truth.shape[0], -1).any(1))
    picks = np.linspace(z_with_organs[0], z_with_organs[-1], args.slices).round().astype(int)
    for z in picks:  # "hand corrections": the true labels painted into these slices
        yy, xx = np.nonzero(truth[z] != np.asarray(labels.data[z]))
        labels.data_setitem((np.full(yy.shape, z), yy, xx), truth[z, yy, xx])
    ft._on_layers_changed()
    ft.image_combo.setCurrentText(image.name)
    ft.labels_combo.setCurrentText(labels.name)
    ft.add_pair(image, labels)
    if base is None:
        ft.new_model_radio.setChecked(True)
        ft.arch_combo.setCurrentText("unet3d")
        ft.class_names_edit.setText(", ".join(f"{c.value}={c.name}" for c in classes if c.value))
    ft.stop_combo.setCurrentText("minutes")
    ft.minutes_spin.setValue(args.minutes)
    ft.device_combo.setCurrentText("cpu")
    shown = int(picks[len(picks) // 2] + picks[len(picks) // 2 - 1]) // 2  # not corrected
    viewer.dims.set_point(0, image.data_to_world((shown, 0, 0))[0])

    done = []
    ft.weights_saved.connect(done.append)
    worker = ft.train()
    if worker is None:
        raise SystemExit("training refused; see the notification above")
    _wait(app, lambda: bool(done) and ft._worker is None, 60 * args.minutes + 600, "training")

    added = []
    seg.prediction_added.connect(added.append)
    ft.segment_with_new_weights()
    _wait(app, lambda: bool(added), 600, "the re-run with the new weights")
    after = _mean_dice(np.asarray(added[0].data), truth)
    labels.visible = False
    ft_dock.raise_()  # show the Fine-tune tab
    for _ in range(20):
        app.processEvents()
        time.sleep(0.05)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    viewer.window._qt_window.grab().save(str(args.out))
    n = len(ft.curve.losses)
    dice = ft.curve.val_dice[-1] if ft.curve.val_dice else None
    print(  # noqa: T201
        f"wrote {args.out}: {n} iterations, last val Dice {dice}, weights {done[0]}; "
        f"mean Dice vs truth over the whole volume: base {before}, fine-tuned {after} "
        f"(slice {shown} shown, not corrected; corrected slices {picks.tolist()})"
    )
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
