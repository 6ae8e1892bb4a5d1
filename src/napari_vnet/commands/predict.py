"""`napari-vnet predict`: segment a volume headless, write the mask on the input's grid.

    napari-vnet predict CT.nii.gz --weights vnet-phantom --out mask.nii.gz --json
    napari-vnet predict dicom_folder/ --weights my.pt --out mask.nrrd --tta --postprocess

With ``--json`` the last line of stdout is one JSON object: ``seconds`` (inference, incl.
pre/post-processing, excluding file reading/writing), ``total_seconds``, ``voxels``,
``device``, ``output``, ``amp``, ``windows``, ``labels`` (value -> voxel count).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

HELP = "segment a volume (file or DICOM folder) and write the mask with the input's geometry"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="INPUT", help="image file or DICOM folder")
    parser.add_argument(
        "--weights",
        "-w",
        required=True,
        help="checkpoint path or the name of shipped weights (e.g. vnet-phantom)",
    )
    parser.add_argument(
        "--out",
        "-o",
        required=True,
        help="output label file (.nii.gz, .nii, .nrrd, .mha, .mhd)",
    )
    parser.add_argument(
        "--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps"
    )
    parser.add_argument(
        "--overlap", type=float, default=0.5, help="window overlap in [0, 1) (default 0.5)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="windows per forward pass (default: auto)"
    )
    parser.add_argument("--tta", action="store_true", help="average the 8 axis-flipped passes")
    parser.add_argument(
        "--no-amp", action="store_true", help="plain fp32 (default: mixed precision where fast)"
    )
    parser.add_argument(
        "--postprocess",
        nargs="?",
        const="all",
        default=None,
        metavar="OPS",
        help="clean the mask: 'all' (default when given) or comma list of "
        "largest_component, fill_holes",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT file")
    parser.add_argument("--json", action="store_true", help="print a JSON summary as last line")


def _fail(message: str) -> int:
    print(f"napari-vnet predict: {message}", file=sys.stderr)
    return 1


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from napari_vnet.inference import InferenceMemoryError, predict
    from napari_vnet.io import VolumeReadError, VolumeWriteError, read_volume, write_volume
    from napari_vnet.models import CheckpointError, load_checkpoint
    from napari_vnet.postprocess import parse_operations
    from napari_vnet.weights import resolve_weights

    t_start = time.perf_counter()
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        return _fail(f"{out}: exists (use --overwrite to replace it)")
    try:
        post = parse_operations(args.postprocess) if args.postprocess else None
    except ValueError as exc:
        return _fail(str(exc))
    try:
        weights = resolve_weights(args.weights)
        model, card = load_checkpoint(weights, map_location="cpu")
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        return _fail(str(exc))
    try:
        vol = read_volume(args.input)
    except (VolumeReadError, FileNotFoundError) as exc:
        return _fail(str(exc))
    log.info("read %s: shape %s, spacing %s mm", args.input, vol.shape, vol.spacing)

    last = {"t": 0.0}

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if done == total or now - last["t"] > 2.0:
            last["t"] = now
            log.info("windows %d/%d", done, total)

    try:
        pred = predict(
            vol.array,
            model,
            card,
            spacing=vol.spacing,
            device=args.device,
            overlap=args.overlap,
            batch_size=args.batch_size,
            amp=False if args.no_amp else "auto",
            tta=args.tta,
            postprocess=post,
            progress=progress,
        )
    except (ValueError, InferenceMemoryError) as exc:
        return _fail(f"{args.input}: {exc}")
    try:
        written = write_volume(pred.labels, out, like=vol, is_label=True)
    except (VolumeWriteError, OSError, ValueError) as exc:
        return _fail(str(exc))

    values, counts = np.unique(pred.labels, return_counts=True)
    summary = {
        "input": str(args.input),
        "output": str(written),
        "weights": str(weights),
        "arch": card.arch,
        "seconds": round(pred.seconds, 3),
        "total_seconds": round(time.perf_counter() - t_start, 3),
        "voxels": int(np.prod(vol.shape)),
        "shape": list(vol.shape),
        "spacing": [float(s) for s in vol.spacing],
        "device": pred.device,
        "amp": pred.amp,
        "windows": pred.windows,
        "tta": bool(args.tta),
        "postprocess": post or [],
        "labels": {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)},
    }
    names = card.class_names
    print(
        f"{written}: {vol.shape} in {pred.seconds:.1f} s on {pred.device}"
        f" ({pred.windows} windows, amp {pred.amp or 'off'})"
    )
    for v, c in zip(values, counts, strict=True):
        print(f"  {int(v):>5} {names.get(int(v), '?'):<20} {int(c):>12} voxels")
    if args.json:
        print(json.dumps(summary))
    return 0
