"""The ``napari-vnet`` command line: the same core as the dock widgets, headless.

Usage: ``napari-vnet COMMAND [options]``; ``napari-vnet COMMAND --help`` for each one.
Also runnable as ``python -m napari_vnet.cli`` (which is what ``torchrun`` needs).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from napari_vnet import __version__
from napari_vnet.commands import COMMANDS


def _load(module_name: str):
    return importlib.import_module(f"napari_vnet.commands.{module_name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-vnet",
        description="3D medical image segmentation with V-Net, 3D U-Net and Vox2Vox: "
        "inference, evaluation, fine-tuning, and the napari demo.",
    )
    parser.add_argument("--version", action="version", version=f"napari-vnet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        try:
            module = _load(module_name)
        except ImportError as exc:  # a command whose optional dependency is missing
            sub.add_parser(name, help=f"(unavailable: {exc})")
            continue
        # argparse %-formats a command's help line, but not its description
        p = sub.add_parser(name, help=module.HELP.replace("%", "%%"), description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # file names that are not UTF-8 print as \xNN
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader of our output went away (`napari-vnet info x | head -1`): stop
        # quietly; stdout goes to devnull so the flush at exit does not raise again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as the shell reports a command killed by it


if __name__ == "__main__":
    sys.exit(main())
