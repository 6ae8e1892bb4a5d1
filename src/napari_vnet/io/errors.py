"""Specific exceptions of the IO core; every message names the file and the problem."""

from __future__ import annotations

import os

from napari_vnet.errors import NapariVnetError
from napari_vnet.io.paths import printable


class VolumeReadError(NapariVnetError):
    """A file or folder could not be read as a medical volume.

    ``str(err)`` is ``"cannot read <path>: <problem>"``; ``err.path`` and
    ``err.problem`` hold the two parts.
    """

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = printable(path)
        self.problem = problem
        super().__init__(f"cannot read {self.path}: {problem}")

    def __reduce__(self):  # keep pickling (e.g. across worker processes) working
        return (type(self), (self.path, self.problem))


class VolumeWriteError(NapariVnetError):
    """A volume could not be written (bad extension, geometry, or it would overwrite its source)."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = printable(path)
        self.problem = problem
        super().__init__(f"cannot write {self.path}: {problem}")

    def __reduce__(self):
        return (type(self), (self.path, self.problem))
