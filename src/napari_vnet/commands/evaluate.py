"""`napari-vnet evaluate`: per-class Dice and HD95 (mm) of a prediction against a reference.

    napari-vnet evaluate pred.nii.gz labels.nii.gz --labels 5,1 --json

Both files must lie on the same voxel grid (shape, spacing, origin, direction); otherwise
the command refuses and says what differs, unless ``--resample`` puts the prediction on
the reference grid (nearest neighbour, in physical space - so a mask stored with a
flipped direction matrix still lands on the right anatomy). With ``--json`` the last line
is ``{"dice": {"5": ...}, "hd95_mm": {"5": ...}, ...}`` (label values as strings;
an HD95 that does not exist because one side is empty is ``null``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys

HELP = "per-class Dice and 95% Hausdorff distance (mm) between a prediction and a reference"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pred", metavar="PRED", help="predicted label file (or DICOM folder)")
    parser.add_argument("gt", metavar="GT", help="reference label file")
    parser.add_argument(
        "--labels",
        default=None,
        help="comma-separated label values to score (default: all non-zero values present)",
    )
    parser.add_argument(
        "--resample",
        action="store_true",
        help="resample PRED onto GT's grid (nearest) when the grids differ",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary as last line")


def _fail(message: str) -> int:
    print(f"napari-vnet evaluate: {message}", file=sys.stderr)
    return 1


def grid_differences(a, b) -> list[str]:
    """What differs between the voxel grids of two Volumes (empty when they match)."""
    import numpy as np

    diffs = []
    if tuple(a.shape) != tuple(b.shape):
        diffs.append(f"shape {tuple(a.shape)} vs {tuple(b.shape)}")
    if not np.allclose(a.spacing, b.spacing, rtol=1e-4, atol=1e-6):
        diffs.append(f"spacing {tuple(a.spacing)} vs {tuple(b.spacing)} mm")
    tol = 0.01 * float(min(min(a.spacing), min(b.spacing)))
    if not np.allclose(a.origin, b.origin, rtol=0, atol=tol):
        diffs.append(f"origin {tuple(a.origin)} vs {tuple(b.origin)} mm")
    if not np.allclose(np.asarray(a.direction), np.asarray(b.direction), atol=1e-4):
        da = np.round(np.asarray(a.direction), 4).tolist()
        db = np.round(np.asarray(b.direction), 4).tolist()
        diffs.append(f"direction {da} vs {db}")
    return diffs


def resample_like(vol, reference):
    """``vol`` (labels) resampled onto ``reference``'s grid, nearest neighbour, physical."""
    import numpy as np
    import SimpleITK as sitk

    from napari_vnet.io import Volume, volume_to_image

    moving = volume_to_image(Volume(vol.array, vol.spacing, vol.origin, vol.direction))
    ref = volume_to_image(
        Volume(
            np.zeros(reference.shape, np.uint8),
            reference.spacing,
            reference.origin,
            reference.direction,
        )
    )
    out = sitk.Resample(
        moving, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, moving.GetPixelID()
    )
    return reference.with_array(sitk.GetArrayFromImage(out))


def _number(x: float) -> float | None:
    return None if not math.isfinite(x) else round(float(x), 6)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from napari_vnet.io import VolumeReadError, read_volume
    from napari_vnet.metrics import dice_per_class, hd95_per_class, label_values

    try:
        pred = read_volume(args.pred)
        gt = read_volume(args.gt)
    except (VolumeReadError, FileNotFoundError) as exc:
        return _fail(str(exc))
    for name, vol in (("PRED", pred), ("GT", gt)):
        if vol.array.ndim != 3:
            return _fail(f"{vol.path}: {name} must be a 3-D label map, got shape {vol.shape}")
        if vol.array.dtype.kind not in "uib":
            return _fail(f"{vol.path}: {name} holds {vol.array.dtype} values, not integer labels")
    diffs = grid_differences(pred, gt)
    resampled = False
    if diffs:
        if not args.resample:
            return _fail(
                f"{args.pred} and {args.gt} are not on the same voxel grid ("
                + "; ".join(diffs)
                + "); pass --resample to resample PRED onto GT's grid"
            )
        pred = resample_like(pred, gt)
        resampled = True
    if args.labels:
        try:
            labels = [int(v) for v in str(args.labels).split(",") if v.strip()]
        except ValueError:
            return _fail(f"--labels {args.labels!r}: expected comma-separated integers, e.g. 5,1")
    else:
        labels = label_values(gt.array, pred.array)
    if not labels:
        return _fail("no non-zero labels in either file and none given with --labels")
    dice = dice_per_class(pred.array, gt.array, labels)
    hd95 = hd95_per_class(pred.array, gt.array, gt.spacing, labels)

    print(f"{'label':>6} {'Dice':>8} {'HD95 mm':>9}")
    for v in labels:
        h = hd95[v]
        print(
            f"{v:>6} {dice[v]:>8.4f} {h:>9.2f}"
            if math.isfinite(h)
            else f"{v:>6} {dice[v]:>8.4f}       inf"
        )
    summary = {
        "dice": {str(v): _number(dice[v]) for v in labels},
        "hd95_mm": {str(v): _number(hd95[v]) for v in labels},
        "mean_dice": _number(float(np.mean([dice[v] for v in labels]))),
        "resampled": resampled,
        "pred": str(args.pred),
        "gt": str(args.gt),
    }
    if args.json:
        print(json.dumps(summary))
    return 0
