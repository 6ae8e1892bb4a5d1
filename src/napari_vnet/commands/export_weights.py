"""`napari-vnet export-weights WEIGHTS --format nnunet|monai-bundle OUT`: hand weights back.

WEIGHTS is a napari-vnet weights file (e.g. an nnU-Net model fine-tuned here) or a foreign
folder. ``--format nnunet`` writes an nnU-Net v2 trained-model folder that
``nnUNetv2_predict`` / ``nnUNetPredictor`` load; ``--format monai-bundle`` writes a MONAI
bundle folder (configs/, models/model.pt).
"""

from __future__ import annotations

import argparse
import sys

HELP = "write weights back as an nnU-Net v2 model folder or a MONAI bundle"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("weights", metavar="WEIGHTS", help="weights file (.pt) or folder")
    parser.add_argument(
        "out",
        metavar="OUT",
        help="folder to write (nnunet: the <Trainer>__<Plans>__<configuration> folder, or "
        "the folder to create it in)",
    )
    parser.add_argument(
        "--format", required=True, choices=("nnunet", "monai-bundle"), help="what to write"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")


def run(args: argparse.Namespace) -> int:
    from napari_vnet.foreign.export import ExportError, export_monai_bundle, export_nnunet
    from napari_vnet.models import CheckpointError
    from napari_vnet.weights import load_weights, resolve_weights

    try:
        model, card = load_weights(resolve_weights(args.weights), map_location="cpu")
        write = export_nnunet if args.format == "nnunet" else export_monai_bundle
        out = write(model, card, args.out, overwrite=args.overwrite)
    except (CheckpointError, ExportError, OSError) as exc:
        print(f"napari-vnet export-weights: error: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0
