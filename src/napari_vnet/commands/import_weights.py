"""`napari-vnet import-weights STATE_DICT --arch monai.VNet ... --out NEW.pt`.

A bare MONAI state dict (``torch.save(net.state_dict(), ...)``) says nothing about its
network, classes or preprocessing; give them here and napari-vnet writes a weights file
that rebuilds offline from its card (then ``predict``/``train``/the docks use it)::

    napari-vnet import-weights vnet.pt --arch monai.VNet \\
        --arch-kwargs '{"dropout_prob": 0.0}' --classes background,liver,spleen \\
        --normalization window:-200:300 --spacing 2 1.5 1.5 --patch-size 64 96 96 \\
        --out vnet-liver.pt

The file is read safely (``torch.load(weights_only=True)``); MONAI is the ``[monai]`` extra.
An existing ``--out`` is replaced only with ``--overwrite``, and the STATE_DICT itself never
(whatever spelling of its path ``--out`` uses).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HELP = "wrap a bare MONAI state dict (VNet, UNet, BasicUNet, DynUNet) with a model card"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("state_dict", metavar="STATE_DICT", help="torch.save(net.state_dict())")
    parser.add_argument(
        "--arch", required=True, metavar="monai.NAME",
        help="monai.VNet, monai.UNet, monai.BasicUNet, monai.DynUNet, ...",
    )  # fmt: skip
    parser.add_argument(
        "--arch-kwargs", metavar="JSON", default="{}",
        help="the network's other constructor keywords, e.g. "
        "'{\"channels\": [16,32,64,128], \"strides\": [2,2,2]}'",
    )  # fmt: skip
    parser.add_argument(
        "--classes", required=True, metavar="NAMES",
        help="output channels in order: background,liver,spleen (label values 0,1,2) or "
        "0=background,6=liver,1=spleen (label value per channel)",
    )  # fmt: skip
    parser.add_argument("--in-channels", type=int, default=1, metavar="N")
    parser.add_argument(
        "--normalization", default="zscore", metavar="KIND[:LOW:HIGH]",
        help="how the network was fed: zscore, window:-200:300, percentile:0.5:99.5, none, "
        "or a JSON object",
    )  # fmt: skip
    parser.add_argument(
        "--spacing", type=float, nargs=3, metavar=("Z", "Y", "X"),
        help="training voxel spacing in mm (default: none, the image is used as it is)",
    )  # fmt: skip
    parser.add_argument(
        "--patch-size", type=int, nargs=3, default=(96, 96, 96), metavar=("Z", "Y", "X"),
        help="sliding-window size (default 96 96 96)",
    )  # fmt: skip
    parser.add_argument("--out", required=True, metavar="NEW.pt", help="weights file to write")
    parser.add_argument(
        "--overwrite", action="store_true",
        help="replace an existing --out file (never the STATE_DICT being imported)",
    )  # fmt: skip


def parse_class_list(text: str):
    """``background,liver`` or ``0=background,6=liver`` -> ClassInfo per channel."""
    from napari_vnet.models import ClassInfo
    from napari_vnet.training.config import parse_value_names

    classes = [
        ClassInfo(v, n) for v, n in parse_value_names(text, what="--classes", bare_names=True)
    ]
    if len(classes) < 2:
        raise ValueError(f"--classes {text!r}: give every output channel (background first)")
    return classes


def out_problem(state_dict: str, out_arg: str, overwrite: bool) -> str | None:
    """Why ``--out`` must not be written: it is the input file itself (any spelling: a
    link, a relative path, a hard link), or it exists and ``--overwrite`` was not given."""
    from napari_vnet.io.paths import same_file

    out = Path(out_arg)
    if same_file(out, state_dict):
        return f"--out {out} is the STATE_DICT being imported; choose another file name"
    if os.path.lexists(out) and not overwrite:
        return f"--out {out} exists; pass --overwrite to replace it (or choose another name)"
    return None


def run(args: argparse.Namespace) -> int:
    from napari_vnet.foreign.monai_bundle import monai_card, wrap_monai_state_dict
    from napari_vnet.models import CheckpointError, save_checkpoint
    from napari_vnet.workflows.options import parse_normalization

    problem = out_problem(args.state_dict, args.out, args.overwrite)
    if problem:
        print(f"napari-vnet import-weights: error: {problem}", file=sys.stderr)
        return 2
    try:
        kwargs = json.loads(args.arch_kwargs)
        if not isinstance(kwargs, dict):
            raise ValueError("--arch-kwargs must be a JSON object")
        card = monai_card(
            args.arch,
            kwargs,
            parse_class_list(args.classes),
            in_channels=args.in_channels,
            normalization=parse_normalization(args.normalization),
            spacing=tuple(args.spacing) if args.spacing else None,
            patch_size=tuple(args.patch_size),
        )
        model, card = wrap_monai_state_dict(args.state_dict, card)
        out = save_checkpoint(model, card, args.out)
    except (ValueError, CheckpointError, OSError) as exc:
        print(f"napari-vnet import-weights: error: {exc}", file=sys.stderr)
        return 1
    print(f"{out}: {card.origin()}, {len(card.classes)} classes")
    return 0
