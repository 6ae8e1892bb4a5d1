"""Any weights, a file or a folder: the one place that tells them apart.

* a file is a napari-vnet checkpoint (weights and model card,
  :func:`napari_vnet.models.load_checkpoint`), possibly of a network of another program
  fine-tuned here (a card whose ``arch`` is ``nnunet`` or ``monai``);
* a folder is an nnU-Net v2 trained-model folder or a MONAI bundle
  (:func:`napari_vnet.foreign.load_foreign`).

Importing this module registers the nnU-Net and MONAI networks with the architecture
registry (:mod:`napari_vnet.foreign.networks`), so every card these functions return can be
rebuilt, saved and fine-tuned.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

import napari_vnet.foreign.networks  # noqa: F401 (registers the nnU-Net and MONAI networks)
from napari_vnet.foreign import foreign_kind, load_foreign, read_foreign_card
from napari_vnet.models.card import ModelCard
from napari_vnet.models.checkpoint import load_checkpoint, read_card

__all__ = ["foreign_kind", "load_weights", "read_weights_card"]


def load_weights(
    path: str | os.PathLike,
    map_location: Any = None,
    *,
    folds: Any = None,
    checkpoint: str | None = None,
) -> tuple[nn.Module, ModelCard]:
    """``(model, card)`` of the weights at ``path`` (a checkpoint file or a foreign weights
    folder), the model in eval mode on ``map_location`` (CPU by default). ``folds`` and
    ``checkpoint`` choose inside an nnU-Net folder (:func:`napari_vnet.foreign.load_foreign`).
    Raises CheckpointError naming the file or folder and the problem."""
    path = Path(path)
    if path.is_dir():
        model, card = load_foreign(path, folds=folds, checkpoint=checkpoint)
        return (model if map_location is None else model.to(map_location)), card
    if folds is not None or checkpoint is not None:
        from napari_vnet.models.errors import CheckpointError

        raise CheckpointError(f"{path}: folds and checkpoint choose inside an nnU-Net folder")
    return load_checkpoint(path, map_location)


def read_weights_card(path: str | os.PathLike) -> ModelCard:
    """Only the model card of the weights at ``path`` (file or folder), reading as little
    as possible; no network is built."""
    if Path(path).is_dir():
        return read_foreign_card(path)
    return read_card(path)
