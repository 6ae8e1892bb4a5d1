"""`napari-vnet export-weights WEIGHTS --format FORMAT OUT`: hand weights on.

WEIGHTS is a napari-vnet weights file (a shipped name such as ``vnet-phantom``, an
nnU-Net model fine-tuned here) or a foreign folder. ``--format nnunet`` writes an nnU-Net
v2 trained-model folder that ``nnUNetv2_predict`` / ``nnUNetPredictor`` load;
``--format monai-bundle`` writes a MONAI bundle folder (configs/, models/model.pt);
``--format onnx`` / ``torchscript`` write the network as ``OUT/model.onnx`` /
``OUT/model.ts`` with ``OUT/model.json`` beside it (classes, preprocessing, patch size,
spacing, window style: :mod:`napari_vnet.inference.backend_export`). The paths written
are printed, one a line.
"""

from __future__ import annotations

import argparse
import sys

HELP = (
    "write weights as an nnU-Net v2 model folder, a MONAI bundle, or an ONNX / TorchScript "
    "model with its card as JSON"
)
FORMATS = ("nnunet", "monai-bundle", "onnx", "torchscript")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("weights", metavar="WEIGHTS", help="weights file (.pt) or folder")
    parser.add_argument(
        "out",
        metavar="OUT",
        help="folder to write (nnunet: the <Trainer>__<Plans>__<configuration> folder, or "
        "the folder to create it in; onnx/torchscript: the folder for model.onnx or "
        "model.ts and model.json)",
    )
    parser.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")


def run(args: argparse.Namespace) -> int:
    from napari_vnet.foreign.export import ExportError, export_monai_bundle, export_nnunet
    from napari_vnet.models import CheckpointError
    from napari_vnet.weights import load_weights, resolve_weights

    try:
        model, card = load_weights(resolve_weights(args.weights), map_location="cpu")
        if args.format in ("onnx", "torchscript"):
            from napari_vnet.inference.backend_export import export_runtime

            written = export_runtime(model, card, args.out, args.format, overwrite=args.overwrite)
        else:
            write = export_nnunet if args.format == "nnunet" else export_monai_bundle
            written = (write(model, card, args.out, overwrite=args.overwrite),)
    except (CheckpointError, ExportError, OSError) as exc:
        print(f"napari-vnet export-weights: error: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0
