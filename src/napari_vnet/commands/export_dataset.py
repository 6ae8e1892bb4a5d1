"""`napari-vnet export-dataset`: (image, labels) pairs -> an nnU-Net / MSD style folder.

Layout (nnU-Net v2 raw dataset, which is also the Medical Segmentation Decathlon layout)::

    DIR/imagesTr/case_000_0000.nii.gz   image of case 0, channel 0, the image's geometry
    DIR/labelsTr/case_000.nii.gz        its labels on the same grid, values 0..K
    DIR/dataset.json                    channel_names, labels (name -> value), numTraining,
                                        file_ending; plus the MSD "training" list and the
                                        original label values (napari_vnet_label_values)

nnU-Net needs consecutive label values, so selected values are renumbered 1..K in the
order given (``--classes 5=liver,1=spleen`` -> liver 1, spleen 2); the original values
are recorded in dataset.json. Values not selected become background. Voxels equal to
``--ignore-index`` become nnU-Net's "ignore" label (the highest value).

A multi-channel case: ``--image CASE_0000.nii.gz`` takes its siblings ``CASE_0001.nii.gz``...
too, or name the channel files joined by ``os.pathsep`` (``--image t2.nii.gz:adc.nii.gz``);
each is written as ``case_000_000<i>.nii.gz``. Channel names (dataset.json
``channel_names``): ``--channel-names 0=T2,1=ADC``, else the card of ``--weights``, else
the DICOM modality; a CT channel is named "CT" (nnU-Net's CT normalisation):
:func:`napari_vnet.workflows.dataset_export.dataset_channel_names`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "write (image, labels) pairs as an nnU-Net/MSD style dataset folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", action="append", required=True, metavar="PATH",
                        help="image file or DICOM folder; repeat for several cases")  # fmt: skip
    parser.add_argument("--labels", action="append", required=True, metavar="PATH",
                        help="label map of the preceding --image (resampled onto its grid if needed)")  # fmt: skip
    parser.add_argument("--out", required=True, metavar="DIR", help="dataset folder to create")
    parser.add_argument("--classes", metavar="V=NAME,...",
                        help="label values to export and their names (default: every value found)")  # fmt: skip
    parser.add_argument("--ignore-index", type=int, metavar="K",
                        help="label value meaning 'not annotated' (exported as nnU-Net's ignore label)")  # fmt: skip
    parser.add_argument("--name", default="napari-vnet", help="dataset name in dataset.json")
    parser.add_argument("--channel-name", default=None,
                        help="name of the image channel (default: the image modality, else 'image')")  # fmt: skip
    parser.add_argument("--channel-names", default=None, metavar="I=NAME,...",
                        help="names of the channels, e.g. 0=T2,1=ADC ('CT' gets nnU-Net's CT normalisation)")  # fmt: skip
    parser.add_argument("--weights", default=None, metavar="WEIGHTS",
                        help="take the channel names from these weights' model card")  # fmt: skip
    parser.add_argument(
        "--overwrite", action="store_true", help="write into an existing non-empty DIR"
    )


def run(args: argparse.Namespace) -> int:
    from napari_vnet.io import VolumeReadError
    from napari_vnet.models import CheckpointError
    from napari_vnet.training import TrainingError, TrainingPair
    from napari_vnet.weights import read_weights_card, resolve_weights
    from napari_vnet.workflows.batch_channels import image_channels
    from napari_vnet.workflows.dataset_export import export_pairs
    from napari_vnet.workflows.options import parse_class_names

    if len(args.image) != len(args.labels):
        print(f"error: {len(args.image)} --image but {len(args.labels)} --labels", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        print(f"error: {out} exists and is not empty (use --overwrite)", file=sys.stderr)
        return 2
    channels = [image_channels(img) for img in args.image]
    pairs = [
        TrainingPair(files[0], lab, name=str(files[0]))
        for files, lab in zip(channels, args.labels, strict=True)
    ]
    try:
        names = parse_class_names(args.channel_names, what="--channel-names")
        card = read_weights_card(resolve_weights(args.weights)) if args.weights else None
        # the training plan's rules: labels resampled onto the image grid, classes,
        # renumbering 1..K, the ignore label (as the Fine-tune dock's export)
        export_pairs(
            out,
            pairs,
            classes=args.classes,
            ignore_index=args.ignore_index,
            channels=channels,
            name=args.name,
            channel=args.channel_name or None,
            channel_names=names,
            card=card,
            sources=[files if len(files) > 1 else files[0] for files in channels],
        )
    except (VolumeReadError, TrainingError, CheckpointError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for i, files in enumerate(channels):
        print(f"case_{i:03d}: {', '.join(files)}", file=sys.stderr)
    print(f"wrote {len(pairs)} case(s) to {out}")
    return 0
