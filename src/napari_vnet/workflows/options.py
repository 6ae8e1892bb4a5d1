"""Settings as the command line and the docks parse and show them, one way each (no Qt).

* class names ``VALUE=NAME,...`` (:func:`parse_class_names`, on
  :func:`napari_vnet.training.config.parse_value_names`);
* a patch size ``"48"`` / ``"32,64,64"`` / ``"32x64x64"`` (:func:`parse_patch`);
* an intensity normalisation ``KIND[:LOW:HIGH]`` or a JSON object (:func:`parse_normalization`);
* annotated slices ``Z,Z,...`` or ``all`` (:func:`parse_slices`);
* durations ``m:ss`` / ``h:mm:ss`` (:func:`format_seconds`);
* the defaults of :class:`~napari_vnet.training.config.TrainConfig` (:func:`train_defaults`).

Architecture names (registry name -> menu name) are
:data:`napari_vnet.models.names.DISPLAY_NAMES`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

from napari_vnet.training.config import TrainConfig, parse_value_names

__all__ = [
    "format_seconds",
    "parse_class_names",
    "parse_normalization",
    "parse_patch",
    "parse_slices",
    "train_defaults",
]


def parse_class_names(text: str | None, what: str = "class name") -> dict[int, str]:
    """``"3=kidney, 4=spleen"`` -> ``{3: "kidney", 4: "spleen"}`` (empty text: ``{}``).

    ``ValueError`` names the entry that is not ``VALUE=NAME`` (``what``: the field or
    option it came from, e.g. ``--class-names``)."""
    return dict(parse_value_names(text or "", what=what))


def parse_patch(text: str) -> tuple[int, int, int]:
    """``"48"`` -> (48, 48, 48); ``"32,64,64"`` / ``"32x64x64"`` -> (32, 64, 64) (z, y, x)."""
    nums = [int(t) for t in re.split(r"[,x\s]+", text.strip()) if t]
    if len(nums) == 1:
        nums *= 3
    if len(nums) != 3 or min(nums) < 8:
        raise ValueError(f"patch size '{text}' must be one or three integers >= 8 (z, y, x)")
    return (nums[0], nums[1], nums[2])


def parse_normalization(text: str | None, flag: str = "--normalization") -> dict | None:
    """``zscore``, ``window:-200:300``, ``percentile:0.5:99.5``, ``none`` or a JSON object
    -> the normalisation dict of a model card (None for no text)."""
    if text is None:
        return None
    text = text.strip()
    if text.startswith("{"):
        return json.loads(text)
    kind, *vals = text.split(":")
    norm: dict[str, Any] = {"kind": kind}
    if vals:
        if len(vals) != 2:
            raise ValueError(f"{flag} {text!r}: expected KIND:LOW:HIGH")
        norm["low"], norm["high"] = float(vals[0]), float(vals[1])
    return norm


def parse_slices(text: str | None) -> list[int] | dict | None:
    """``"3,7,12"`` -> [3, 7, 12]; ``"all"`` or nothing -> None (every slice counts); the
    path of a ``.json`` file -> the edit record in it (``{"axis", "slices", "edits",
    "reviewed"}``, alone or under ``"annotated_slices"``: what the docks record)."""
    if text is None or text.strip().lower() in ("", "all"):
        return None
    if text.strip().lower().endswith(".json"):
        from pathlib import Path

        try:
            data = json.loads(Path(text.strip()).expanduser().read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read the edit record {text.strip()}: {exc}") from None
        record = data.get("annotated_slices", data) if isinstance(data, dict) else None
        if not isinstance(record, dict) or "slices" not in record:
            raise ValueError(f"{text.strip()} holds no edit record (axis, slices, edits)")
        return record
    return [int(v) for v in text.replace(" ", "").split(",") if v]


def format_seconds(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour on (negative durations show as 0:00)."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def train_defaults() -> dict[str, Any]:
    """Field name -> default of :class:`TrainConfig` (what a setting left alone means)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(TrainConfig):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out
