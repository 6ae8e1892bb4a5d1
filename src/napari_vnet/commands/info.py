"""`napari-vnet info` (placeholder until its issue lands)."""

from __future__ import annotations

import argparse
import sys

HELP = "print the model card of a weights file (--json for machines)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    print("napari-vnet info: not implemented yet", file=sys.stderr)
    return 2
