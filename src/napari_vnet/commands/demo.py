"""`napari-vnet demo` (placeholder until its issue lands)."""

from __future__ import annotations

import argparse
import sys

HELP = "open napari with the sample phantom, both dock widgets and the shipped V-Net"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    print("napari-vnet demo: not implemented yet", file=sys.stderr)
    return 2
