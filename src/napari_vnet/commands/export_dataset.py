"""`napari-vnet export-dataset` (placeholder until its issue lands)."""

from __future__ import annotations

import argparse
import sys

HELP = "write (image, labels) pairs as an nnU-Net/MSD style dataset folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    print("napari-vnet export-dataset: not implemented yet", file=sys.stderr)
    return 2
