"""Exceptions of the models package (no torch import, so the CLI and weights can use them)."""

from __future__ import annotations


class CheckpointError(Exception):
    """A weights file cannot be used: missing, unreadable, unsafe, or inconsistent.

    The message always names the file and says what is wrong (and, where there is one,
    how to fix it).
    """


class WeightsNotFoundError(CheckpointError, FileNotFoundError):
    """Neither a file nor the name of shipped weights."""
