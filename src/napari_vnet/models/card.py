"""The model card: everything a checkpoint needs to rebuild and use its network.

A card is saved inside every checkpoint (as plain JSON-compatible data, so that loading
never unpickles code). Conventions shared by the whole package:

* spatial tuples (``spacing``, ``patch_size``) are in numpy / napari order ``(z, y, x)``;
* ``classes`` lists the output channels in order; channel 0 is background (label value 0).
  Each class maps an output channel to the label value written in label maps (so a model
  trained on TotalSegmentator labels can keep ``5 = liver``) and a display name/colour;
* ``normalization`` says how raw intensities become network input, e.g.
  ``{"kind": "window", "low": -200.0, "high": 300.0}`` (clip then scale to [0, 1]),
  ``{"kind": "zscore"}`` (per-volume mean/std over finite voxels), or
  ``{"kind": "percentile", "low": 0.5, "high": 99.5}`` (clip to per-volume percentiles,
  scale to [0, 1]).

Weights from other programs (see :mod:`napari_vnet.foreign`) carry three more fields:

* ``source``: where the weights come from, e.g. ``{"format": "nnunet", "dataset":
  "Dataset501_Liver", "configuration": "3d_fullres", "folds": ["0", "1"], ...}``; empty
  for napari-vnet's own. :meth:`ModelCard.origin` turns it into one line for the dock;
* ``preprocessing``: a producer's own pre/post-processing that replaces ``normalization``
  and the spacing resampling, e.g. ``{"kind": "nnunet", "plans": {...}, "configuration":
  "3d_fullres", "dataset_json": {...}}`` (everything needed, so the card rebuilds offline);
* ``sliding_window``: how the producer blends windows, e.g. ``{"blend": "logits",
  "steps": "even", "center": "floor", "mirror_axes": [0, 1, 2]}`` (nnU-Net) or
  ``{"mode": "constant", "overlap": 0.25}`` (a MONAI bundle's inferer); empty for
  napari-vnet's defaults (softmax blend, Gaussian, MONAI's window grid).

For foreign cards ``patch_size`` is in the axis order of the network's grid (the
producer's preprocessing may reorder axes, e.g. MONAI's ``(x, y, z)``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

CARD_FORMAT_VERSION = 1


@dataclass
class ClassInfo:
    """One output channel of a segmentation network."""

    value: int  # label value written into label maps for this channel
    name: str
    color: tuple[float, ...] | None = None  # RGBA (or RGB) in [0, 1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": int(self.value),
            "name": str(self.name),
            "color": None if self.color is None else [float(c) for c in self.color],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassInfo:
        if not isinstance(d, dict):
            raise ValueError(f"a class must be an object with value and name, got {d!r:.60}")
        if isinstance(d.get("value"), (str, bool)):
            raise ValueError(
                f"a class's label value must be a whole number, got {d['value']!r:.60}"
            )
        color = d.get("color")
        return cls(
            value=int(d["value"]),
            name=str(d["name"]),
            color=None if color is None else tuple(float(c) for c in color),
        )


@dataclass
class ModelCard:
    """Typed description of a trained (or untrained) network, stored in its checkpoint."""

    arch: str  # registry name: "vnet", "unet3d" or "vox2vox"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)  # constructor kwargs
    classes: list[ClassInfo] = field(
        default_factory=lambda: [ClassInfo(0, "background"), ClassInfo(1, "foreground")]
    )
    in_channels: int = 1
    normalization: dict[str, Any] = field(default_factory=lambda: {"kind": "zscore"})
    spacing: tuple[float, ...] | None = None  # training voxel spacing (z, y, x) mm
    patch_size: tuple[int, ...] = (64, 64, 64)  # recommended sliding-window patch (z, y, x)
    history: dict[str, Any] = field(default_factory=dict)  # iterations, data, final metrics...
    description: str = ""
    source: dict[str, Any] = field(default_factory=dict)  # origin of foreign weights
    preprocessing: dict[str, Any] = field(default_factory=dict)  # producer's own pre/post
    sliding_window: dict[str, Any] = field(default_factory=dict)  # producer's window blend
    # label clean-up chosen on validation and applied by predict, e.g.
    # {"largest_component": [5, 1], "chosen_on": "validation", "validation_dice": {...}}
    postprocess: dict[str, Any] = field(default_factory=dict)
    format_version: int = CARD_FORMAT_VERSION

    @property
    def out_channels(self) -> int:
        return len(self.classes)

    @property
    def label_values(self) -> list[int]:
        """Label value of each output channel, in channel order."""
        return [c.value for c in self.classes]

    @property
    def class_names(self) -> dict[int, str]:
        """Label value -> class name."""
        return {c.value: c.name for c in self.classes}

    def origin(self) -> str:
        """One line saying where foreign weights come from, e.g. "nnU-Net v2,
        Dataset501_Liver, 3d_fullres, folds 0-4"; "" for napari-vnet's own weights."""
        src = self.source or {}
        fmt = src.get("format")
        if fmt == "nnunet":
            folds = [str(f) for f in src.get("folds", [])]
            if len(folds) > 1 and all(f.isdigit() for f in folds):
                nums = sorted(int(f) for f in folds)
                contiguous = nums == list(range(nums[0], nums[-1] + 1))
                fold_text = f"folds {nums[0]}-{nums[-1]}" if contiguous else "folds " + ",".join(folds)
            else:
                fold_text = f"fold {folds[0]}" if folds else "no fold"
            parts = ["nnU-Net v2", src.get("dataset", "?"), src.get("configuration", "?"), fold_text]
        elif fmt == "monai_bundle":
            parts = ["MONAI bundle", src.get("name", "?"), src.get("version", "")]
        elif fmt == "monai":
            parts = ["MONAI " + str(self.arch_kwargs.get("name", "network")), src.get("file", "")]
        elif fmt:
            parts = [str(fmt)]
        else:
            return ""
        if src.get("fine_tuned"):
            parts.append("fine-tuned")
        return ", ".join(str(p) for p in parts if p)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": int(self.format_version),
            "arch": self.arch,
            "arch_kwargs": dict(self.arch_kwargs),
            "classes": [c.to_dict() for c in self.classes],
            "in_channels": int(self.in_channels),
            "normalization": dict(self.normalization),
            "spacing": None if self.spacing is None else [float(s) for s in self.spacing],
            "patch_size": [int(p) for p in self.patch_size],
            "history": dict(self.history),
            "description": self.description,
            **({"source": dict(self.source)} if self.source else {}),
            **({"preprocessing": dict(self.preprocessing)} if self.preprocessing else {}),
            **({"sliding_window": dict(self.sliding_window)} if self.sliding_window else {}),
            **({"postprocess": dict(self.postprocess)} if self.postprocess else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelCard:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"model card has unknown fields {sorted(unknown)}")
        if "arch" not in d:
            raise ValueError("model card has no 'arch' field")
        version = int(d.get("format_version", CARD_FORMAT_VERSION))
        if version > CARD_FORMAT_VERSION:
            raise ValueError(
                f"model card format version {version} is newer than this napari-vnet "
                f"understands ({CARD_FORMAT_VERSION}); upgrade napari-vnet"
            )
        for key in ("arch_kwargs", "normalization", "history", "source", "preprocessing",
                    "sliding_window", "postprocess"):  # fmt: skip
            if d.get(key) is not None and not isinstance(d[key], dict):
                raise ValueError(f"model card {key} must be an object, got {d[key]!r:.60}")
        if not isinstance(d.get("classes", []), list):
            raise ValueError(f"model card classes must be a list, got {d['classes']!r:.60}")
        spacing = d.get("spacing")
        return cls(
            arch=str(d["arch"]),
            arch_kwargs=dict(d.get("arch_kwargs", {})),
            classes=[ClassInfo.from_dict(c) for c in d.get("classes", [])],
            in_channels=int(d.get("in_channels", 1)),
            normalization=dict(d.get("normalization", {"kind": "zscore"})),
            spacing=None if spacing is None else tuple(float(s) for s in spacing),
            patch_size=tuple(int(p) for p in d.get("patch_size", (64, 64, 64))),
            history=dict(d.get("history", {})),
            description=str(d.get("description", "")),
            source=dict(d.get("source") or {}),
            preprocessing=dict(d.get("preprocessing") or {}),
            sliding_window=dict(d.get("sliding_window") or {}),
            postprocess=dict(d.get("postprocess") or {}),
            format_version=version,
        )


def card_problems(card: ModelCard) -> list[str]:
    """What makes ``card`` unusable or unsafe (empty when it is fine): the checks that
    ``predict`` applies, so ``info``, loading and saving say the same (see
    :mod:`napari_vnet.models.card_checks`)."""
    from napari_vnet.models.card_checks import card_problems as problems

    return problems(card)
