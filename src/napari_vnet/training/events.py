"""Typed training events, as segmentation has them (no Qt).

:func:`~napari_vnet.training.finetune` yields a :class:`TrainingStep` per iteration and
returns a :class:`TrainingSummary`. Both are dataclasses (picklable, so they cross the
training child process) and also read like the dicts they replaced
(``event["loss"]``, ``event.get("val_dice")``, ``"val_dice" in event``: optional fields
count as present only when set), so scripts written against the dicts keep working.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TrainingStep", "TrainingSummary"]


class _ReadsLikeADict:
    """Mapping-style read access to a dataclass's fields (None optional fields absent)."""

    _optional: tuple[str, ...] = ()

    def keys(self) -> list[str]:
        return [
            f.name
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
            if not (f.name in self._optional and getattr(self, f.name) is None)
        ]

    def __getitem__(self, key: str) -> Any:
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def __iter__(self):
        return iter(self.keys())

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.keys()}


@dataclass
class TrainingStep(_ReadsLikeADict):
    """One iteration: loss (and its parts), learning rate, time; validation Dice and the
    checkpoint path at evaluation points where they apply."""

    iteration: int
    total: int
    loss: float
    losses: dict[str, float]
    lr: float
    seconds: float
    val_dice: float | None = None
    checkpoint: str | None = None

    _optional = ("val_dice", "checkpoint")


@dataclass
class TrainingSummary(_ReadsLikeADict):
    """The end of a run: where the kept weights are (``best_iteration``: the iteration
    they are from, ``val_dice``: its validation Dice) and what it learnt."""

    out: str
    iterations: int
    final_loss: float | None
    last_loss: float | None
    val_dice: float | None
    best_iteration: int
    seconds: float
    cancelled: bool
    resume_file: str | None
    device: str
    world_size: int
    rank: int
    classes: list[dict[str, Any]] = field(default_factory=list)
    spacing: list[float] = field(default_factory=list)
    patch_size: list[int] = field(default_factory=list)
    # which weights were kept and why (training/selection.py): "kept", "iteration",
    # "reason", "message" (one line for the user), the smoothed scores
    selection: dict[str, Any] | None = None
    # what it learnt from on edited slices (training/data.weighting_note): the voxels
    # corrected, those left as predicted, their weight, "message"
    voxels: dict[str, Any] | None = None

    _optional = ("selection", "voxels")
