"""`napari-vnet predict` (placeholder until its issue lands)."""

from __future__ import annotations

import argparse
import sys

HELP = "segment a volume (file or DICOM folder) and write the mask with the input's geometry"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    print("napari-vnet predict: not implemented yet", file=sys.stderr)
    return 2
