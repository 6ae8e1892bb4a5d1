"""Exceptions of the models package (no torch import, so the CLI and weights can use them)."""

from __future__ import annotations

from napari_vnet.errors import NapariVnetError


class CheckpointError(NapariVnetError):
    """A weights file cannot be used: missing, unreadable, unsafe, or inconsistent.

    The message always names the file and says what is wrong (and, where there is one,
    how to fix it).
    """


class WeightsNotFoundError(CheckpointError, FileNotFoundError):
    """Neither a file nor the name of shipped weights."""


class InvalidCardError(CheckpointError):
    """The model card of a weights file (or foreign folder) cannot be used or is unsafe;
    ``problems`` lists each reason in one line, ``where`` names the file."""

    def __init__(self, where: object, problems: list[str]) -> None:
        self.where = str(where)
        self.problems = list(problems)
        super().__init__(f"{where}: the model card cannot be used: " + "; ".join(problems))

    def lines(self) -> list[str]:
        """One line per problem, each naming the file."""
        return [f"{self.where}: {p}" for p in self.problems]
