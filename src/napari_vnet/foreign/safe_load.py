"""Loading checkpoints made by other programs without running code from them.

nnU-Net and MONAI save their checkpoints with ``torch.save`` of dicts that, besides
tensors, hold a few plain values pickled as Python objects: ``torch.device``, numpy
scalars (``np.float64`` Dice values in nnU-Net's training log) and their dtypes. PyTorch's
restricted unpickler (``torch.load(weights_only=True)``) refuses every global it does not
know; :func:`safe_torch_load` widens it by exactly the plain types listed in
:data:`ALLOWED_GLOBALS`, for this one call (``torch.serialization.safe_globals``), and
refuses anything else with one line naming the type. Nothing from the file is ever
imported or called. Like our own checkpoints, the archive's unpacked size (read from its
zip directory) must fit in the available memory before anything is unpacked.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_vnet.models.errors import CheckpointError

__all__ = ["ALLOWED_GLOBALS", "UnsafeCheckpointError", "read_json_object", "safe_torch_load"]


class UnsafeCheckpointError(CheckpointError):
    """The file pickles a Python object outside the allowlist (it could run code)."""


def _numpy_globals() -> list[Any]:
    """numpy's scalar reconstructor, ``np.dtype`` and the dtype classes of numbers/bools."""
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import scalar
    kinds = [np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16]
    kinds += [np.uint32, np.uint64, np.float16, np.float32, np.float64]
    dtype_classes = [type(np.dtype(k)) for k in kinds]
    return [scalar, np.dtype, *dtype_classes]


#: the only non-tensor globals a foreign checkpoint may contain
ALLOWED_GLOBALS: list[Any] = [torch.device, *_numpy_globals()]


def _names(objs: list[Any]) -> str:
    return ", ".join(f"{getattr(o, '__module__', '?')}.{getattr(o, '__name__', o)}" for o in objs)


def safe_torch_load(path: str | os.PathLike, map_location: Any = "cpu", *, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` that also accepts the plain types of
    :data:`ALLOWED_GLOBALS` (``mmap``: tensor data mapped, not read - fast when only the
    other entries are needed). Raises :class:`UnsafeCheckpointError` naming the first
    refused type, or :class:`CheckpointError` for a missing/unreadable file."""
    path = Path(path)
    if not path.is_file():
        reason = "not a regular file" if path.exists() else "no such file"
        raise CheckpointError(f"{path}: {reason}")
    from napari_vnet.models.checkpoint import _check_archive_memory

    _check_archive_memory(path, mmap=mmap)  # a small deflated archive can unpack to GiBs
    try:
        with torch.serialization.safe_globals(ALLOWED_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        match = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if match:
            raise UnsafeCheckpointError(
                f"{path}: refused to load: it contains the Python object "
                f"{match.group(1)}, which is not among the plain types a checkpoint may "
                f"hold ({_names(ALLOWED_GLOBALS)}) and loading it could run code"
            ) from None
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({_first(exc)})"
        ) from None
    except Exception as exc:  # untrusted bytes can fail anywhere inside the unpickler
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({_first(exc)})"
        ) from None


def _first(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= 160 else line[:157] + "..."


def read_json_object(path: Path) -> dict[str, Any]:
    """A producer's JSON file (``plans.json``, ``dataset.json``, a bundle's configs) as a
    dict; :class:`CheckpointError` naming the file when it is unreadable or not an object.
    Plain JSON only: nothing in it is evaluated."""
    if path.exists() and not path.is_file():  # a FIFO or a device would block or never end
        raise CheckpointError(f"{path}: not a regular file")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable JSON ({exc})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: unreadable JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data
