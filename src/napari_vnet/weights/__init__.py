"""Weights shipped inside the package (made by the project's own `napari-vnet train`).

``shipped_weights()`` lists the ``*.pt`` files beside this module by name (file stem),
e.g. ``{"vnet-phantom": Path(...), "unet3d-phantom": ..., "vox2vox-phantom": ...}``.
``resolve_weights(name_or_path)`` turns what a user typed (a path, or a shipped name)
into a path, with an error listing the available names otherwise. No torch import here.

``load_weights(path)`` / ``read_weights_card(path)`` (:mod:`napari_vnet.weights.loading`,
imported with torch on first use) load any weights, a checkpoint file or a foreign weights
folder (nnU-Net v2 trained model, MONAI bundle): the callers' one door to both.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from napari_vnet.models.errors import WeightsNotFoundError

WEIGHTS_DIR = Path(__file__).resolve().parent

#: the weights the project ships, with what each was trained for
SHIPPED_NAMES: dict[str, str] = {
    "vnet-phantom": "V-Net trained on the synthetic abdominal phantoms",
    "unet3d-phantom": "3D U-Net trained on the synthetic abdominal phantoms",
    "vox2vox-phantom": "Vox2Vox (GAN) generator trained on the synthetic abdominal phantoms",
    "unet3d-ct-starter": "3D U-Net trained on one public abdominal CT (10 structures; "
    "the Segment dock's default for CT in HU)",
}

__all__ = [
    "SHIPPED_NAMES",
    "WEIGHTS_DIR",
    "WeightsNotFoundError",
    "load_weights",
    "read_weights_card",
    "resolve_weights",
    "shipped_weights",
]

_LOADING = ("load_weights", "read_weights_card")


def __getattr__(name: str) -> Any:
    if name in _LOADING:  # torch and the foreign adapters, only when weights are loaded
        from napari_vnet.weights import loading

        return getattr(loading, name)
    raise AttributeError(f"module 'napari_vnet.weights' has no attribute {name!r}")


def shipped_weights() -> dict[str, Path]:
    """Name -> path of every weights file installed with the package (sorted by name)."""
    return {p.stem: p for p in sorted(WEIGHTS_DIR.glob("*.pt")) if p.is_file()}


def resolve_weights(name_or_path: str | os.PathLike) -> Path:
    """The weights file meant by ``name_or_path``: an existing path (a file, or a folder
    of foreign weights: nnU-Net v2 trained model, MONAI bundle), or a shipped name
    (with or without ``.pt``). Raises WeightsNotFoundError (a CheckpointError and a
    FileNotFoundError) naming the available shipped weights otherwise."""
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if path.is_dir():  # foreign weights (nnU-Net / MONAI bundle folder): the loader checks
        return path
    if path.exists():  # a FIFO, socket or device: reading it could block forever
        from napari_vnet.models.errors import CheckpointError

        raise CheckpointError(f"{text}: not a regular file, not a weights file")
    shipped = shipped_weights()
    name = text[:-3] if text.endswith(".pt") else text
    if name in shipped:
        return shipped[name]
    available = ", ".join(shipped) or "none installed"
    if name in SHIPPED_NAMES:
        raise WeightsNotFoundError(
            f"shipped weights {name!r} are not installed (expected {WEIGHTS_DIR / (name + '.pt')}); "
            f"available: {available}"
        )
    raise WeightsNotFoundError(
        f"{text}: no such weights file, and not the name of shipped weights "
        f"(available: {available})"
    )
