"""`napari-vnet evaluate` (placeholder until its issue lands)."""

from __future__ import annotations

import argparse
import sys

HELP = "per-class Dice and 95% Hausdorff distance (mm) between a prediction and a reference"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    print("napari-vnet evaluate: not implemented yet", file=sys.stderr)
    return 2
