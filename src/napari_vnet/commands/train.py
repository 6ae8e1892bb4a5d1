"""`napari-vnet train` (placeholder until its issue lands)."""

from __future__ import annotations

import argparse
import sys

HELP = "train or fine-tune a model on (image, labels) pairs; runs under torchrun for DDP"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    print("napari-vnet train: not implemented yet", file=sys.stderr)
    return 2
