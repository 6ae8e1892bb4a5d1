"""Does this image fit this model? Plain-language checks before a segmentation runs.

:func:`check_input` compares an image (its values, shape, spacing, channels) with a model
card and returns :class:`InputIssue` items. Heuristic findings (the values do not look
like Hounsfield units although the model was trained on CT, voxels 4x larger or smaller
than the model's, a 2D or 4D image) are *warnings*: they are said plainly and the run
goes ahead when the user wants it. Only facts the network cannot work around (the model
needs 2 input channels and the image has 1) are *refusals*.

:func:`demo_note` says when weights are a demonstration trained on synthetic phantoms
only (the shipped models), so the dock can say so before Run.

No napari import here (core): the Segment dock and ``napari-vnet predict`` both call it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_vnet.io.layers import looks_like_hu

log = logging.getLogger(__name__)

__all__ = [
    "InputIssue",
    "check_input",
    "demo_note",
    "expects_hu",
    "format_issues",
    "label_map_values",
]

#: image spacing / model spacing (or the inverse) above this along an axis is worth a word
SPACING_RATIO_WARN = 4.0
_MR_WORDS = re.compile(r"\b(mr|mri|t1|t2|flair|dwi|adc|pd)\b", re.I)
_CT_WORDS = re.compile(r"\b(ct|hounsfield|hu)\b", re.I)


@dataclass(frozen=True)
class InputIssue:
    level: str  # "warning" (run allowed) or "refusal" (the network cannot take this input)
    text: str

    @property
    def refuses(self) -> bool:
        return self.level == "refusal"


def _channel_names(card) -> list[str]:
    src = getattr(card, "source", None) or {}
    pre = getattr(card, "preprocessing", None) or {}
    names = src.get("channel_names") or pre.get("channel_names") or {}
    if isinstance(names, dict):
        return [str(v) for v in names.values()]
    if isinstance(names, list | tuple):
        return [str(v) for v in names]
    return []


def expects_hu(card) -> bool | None:
    """True when the model was trained on CT in Hounsfield units, False when on MR,
    None when its card does not say (e.g. a per-volume z-score on unknown data)."""
    names = " ".join(_channel_names(card))
    if names:
        if _CT_WORDS.search(names):
            return True
        if _MR_WORDS.search(names):
            return False
    pre = getattr(card, "preprocessing", None) or {}
    schemes = " ".join(str(s) for s in (pre.get("normalization_schemes") or []))
    if "CTNormalization" in schemes:
        return True
    norm = getattr(card, "normalization", None) or {}
    if str(norm.get("kind", "")).lower() == "window":
        low, high = float(norm.get("low", 0)), float(norm.get("high", 0))
        if low < -50 and high > 100:  # a HU window such as -200..400
            return True
    desc = getattr(card, "description", "") or ""
    if re.search(r"\bCT\b", desc) and not _MR_WORDS.search(desc):
        return True if norm.get("kind") in ("window",) else None
    return None


def _range_text(sample: np.ndarray) -> str:
    lo, hi = np.percentile(sample, (1, 99))
    return f"{lo:.4g} … {hi:.4g}"


def check_input(
    card,
    *,
    shape: tuple[int, ...],
    spacing: tuple[float, ...] | None = None,
    values: np.ndarray | None = None,
    channels: int = 1,
    modality: str = "",
) -> list[InputIssue]:
    """Issues with running ``card``'s model on an image (see the module docstring).

    ``shape``/``spacing`` are the spatial (z, y, x) ones, ``values`` the voxel values (any
    array or a subsample; None skips the value checks), ``channels`` the number of image
    channels given to the network, ``modality`` the DICOM modality if known.
    """
    issues = [
        *_channel_issues(card, channels),
        *_shape_issues(shape),
        *_spacing_issues(card, spacing),
    ]
    label_like = label_map_values(values) if values is not None else None
    if label_like is not None:
        issues.append(_label_map_issue(label_like))
    elif values is not None:
        issues.extend(_intensity_issues(card, values, modality))
    return issues


def _channel_issues(card, channels: int) -> list[InputIssue]:
    """A refusal when the image has another number of channels than the model takes."""
    need = int(getattr(card, "in_channels", 1) or 1)
    if channels == need:
        return []
    names = _channel_names(card)
    which = f" ({', '.join(names)})" if names else ""
    return [
        InputIssue(
            "refusal",
            f"This model takes {need} input channel{'s' * (need != 1)}{which}; the image "
            f"has {channels}. Choose weights made for this kind of image.",
        )
    ]


def _shape_issues(shape: tuple[int, ...]) -> list[InputIssue]:
    """A warning for a 2D image or one with more than three axes."""
    nd = len(shape)
    if nd == 2:
        return [
            InputIssue(
                "warning",
                f"The image is 2D ({shape[0]}×{shape[1]}); the model was trained on 3D "
                "volumes and sees one slice without its neighbours: expect a poor result.",
            )
        ]
    if nd > 3:
        return [
            InputIssue(
                "warning",
                f"The image is {nd}D ({'×'.join(map(str, shape))}); the model segments 3D "
                "volumes (z, y, x): the extra axis is not what it was trained on.",
            )
        ]
    return []


def _spacing_issues(card, spacing: tuple[float, ...] | None) -> list[InputIssue]:
    """A warning when the voxels are :data:`SPACING_RATIO_WARN` times larger or smaller
    than the model's along some axis."""
    model_spacing = getattr(card, "spacing", None)
    if spacing is None or model_spacing is None or len(spacing) != len(model_spacing):
        return []
    ratios = [
        max(a / b, b / a) for a, b in zip(spacing, model_spacing, strict=True) if a > 0 and b > 0
    ]
    worst = max(ratios, default=1.0)
    if worst <= SPACING_RATIO_WARN:
        return []
    img = " × ".join(f"{s:.3g}" for s in spacing)
    mod = " × ".join(f"{s:.3g}" for s in model_spacing)
    return [
        InputIssue(
            "warning",
            f"The voxels ({img} mm) are {worst:.0f}× larger or smaller than those the "
            f"model was trained on ({mod} mm) along one axis: it is resampled, but "
            "structures will look unlike its training data.",
        )
    ]


def _label_map_issue(label_like: list[float]) -> InputIssue:
    """The warning for an image that looks like a label map (its distinct values)."""
    shown = ", ".join(f"{v:g}" for v in label_like[:8]) + (", …" if len(label_like) > 8 else "")
    return InputIssue(
        "warning",
        f"This looks like a label map, not a scan: only {len(label_like)} whole "
        f"values ({shown}). Choose the CT/MR image these labels belong to; a model "
        "run on a label map gives nothing meaningful.",
    )


def _intensity_issues(card, values, modality: str) -> list[InputIssue]:
    """A warning when the values are not Hounsfield units and the model was trained on
    CT, or look like CT and it was trained on MR."""
    want_hu = expects_hu(card)
    if want_hu is None:
        return []
    sample = np.asarray(values)
    if sample.dtype.kind == "f":
        sample = sample[np.isfinite(sample)]
    if not sample.size:
        return []
    is_hu = looks_like_hu(sample) and modality.upper() not in ("MR", "PT", "NM")
    if want_hu and not is_hu:
        if modality and modality.upper() != "CT":
            what = f"this is {modality} data (values {_range_text(sample)})"
        else:
            what = (
                f"these values ({_range_text(sample)}) are not Hounsfield units "
                "(no air at about -1000 HU)"
            )
        text = (
            f"This model was trained on CT in Hounsfield units, but {what}. Its "
            "result is probably meaningless for this image."
        )
        return [InputIssue("warning", text)]
    if want_hu is False and is_hu:
        return [
            InputIssue(
                "warning",
                "This model was trained on MR; these values look like CT in "
                f"Hounsfield units ({_range_text(sample)}).",
            )
        ]
    return []


#: at most this many distinct whole values (0 among them) make an image label-like
LABEL_MAP_MAX_VALUES = 32


def label_map_values(values: Any) -> list[float] | None:
    """The distinct values when ``values`` look like an integer label map (whole
    numbers >= 0 with 0 among them, 2 to :data:`LABEL_MAP_MAX_VALUES` distinct values),
    else None. A scan has hundreds of distinct values (noise alone gives them)."""
    sample = np.asarray(values)
    if sample.size == 0 or sample.dtype.kind not in "biuf":
        return None
    if sample.dtype.kind == "f":
        sample = sample[np.isfinite(sample)]
        if sample.size == 0 or not np.array_equal(sample, np.round(sample)):
            return None
    distinct = np.unique(sample)
    if not 2 <= distinct.size <= LABEL_MAP_MAX_VALUES or distinct[0] != 0:
        return None
    return [float(v) for v in distinct]


def demo_note(card) -> str | None:
    """A plain note when the weights are a demo trained only on synthetic phantoms, or a
    starter trained on a single real CT."""
    if str((getattr(card, "source", None) or {}).get("kind", "")) == "real-ct-starter":
        return (
            "Starter model: trained on one public abdominal CT. Expect errors on your scans; "
            "correct them and fine-tune (Fine-tune model dock) to adapt it."
        )
    desc = str(getattr(card, "description", "") or "")
    data = str((getattr(card, "history", None) or {}).get("training_data", ""))
    if re.search(r"synthetic", desc, re.I) or re.search(r"synthetic|phantom", data, re.I):
        return (
            "Demo model: trained on synthetic torso phantoms only. It shows how napari-vnet "
            "works; on real scans its result is not meaningful without fine-tuning."
        )
    return None


def format_issues(issues: list[InputIssue]) -> list[str]:
    """One line per issue, refusals first, for a terminal or a log."""
    order = sorted(issues, key=lambda i: not i.refuses)
    return [f"{'refused' if i.refuses else 'warning'}: {i.text}" for i in order]


def value_sample(array: Any, max_values: int = 500_000) -> np.ndarray | None:
    """A strided subsample of an in-memory array (None for lazy arrays: never computed)."""
    if not isinstance(array, np.ndarray):
        return None
    from napari_vnet.io.layers import _sample

    return np.asarray(_sample(array, max_values))
