"""What makes a model card unusable or unsafe, said before anything is built or run.

:func:`card_problems` is the one check of a card: ``info`` reports its problems (one line
each), loading a weights file or a foreign folder refuses a card that has any, ``predict``
and training refuse it before preprocessing, and ``save_checkpoint`` refuses to write one
(so that a bad card is never passed on in a new file).

A card's ``preprocessing`` may name a producer's transforms (a MONAI bundle's
``Spacing``, ``ScaleIntensityRange``...). They are built only from
:data:`BUNDLE_TRANSFORMS`: an allowlist of transform classes, each with the argument names
it may take and the plain-data type of each (a bool, a finite number, a short list of
numbers, or a string from a fixed set). No key replaces the class, and no argument is a
dotted name, a callable, a reader or a ``_target_``/``@``/``$``/``%`` reference, so nothing
in a card or a bundle can make napari-vnet (or MONAI) locate and call code.

This module is plain Python (no torch, MONAI or nnU-Net import).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, TypeGuard

__all__ = [
    "BUNDLE_TRANSFORMS",
    "bundle_step_problems",
    "card_problems",
    "preprocessing_problems",
]

Check = tuple[str, Callable[[Any], bool]]


def is_number(v: Any) -> TypeGuard[float]:
    """A finite int or float (not a bool)."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def is_int(v: Any) -> bool:
    """A whole number (int or numpy integer, not a bool)."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _numbers(v: Any, low: int = 1, high: int = 3) -> bool:
    return isinstance(v, list) and low <= len(v) <= high and all(is_number(x) for x in v)


def _one_of(*choices: str) -> Check:
    return (
        "one of " + ", ".join(repr(c) for c in choices),
        lambda v: isinstance(v, str) and v in choices,
    )


def _axcodes(v: Any) -> bool:
    if not isinstance(v, str) or len(v) != 3:
        return False
    axes = [{"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}.get(c) for c in v.upper()]
    return None not in axes and sorted(axes) == [0, 1, 2]  # type: ignore[type-var]


def _axis_labels(v: Any) -> bool:
    pairs = [["L", "R"], ["P", "A"], ["I", "S"]]
    return v is None or (isinstance(v, list) and sorted(sorted(p) for p in v if
                         isinstance(p, list)) == sorted(sorted(p) for p in pairs))  # fmt: skip


BOOL: Check = ("true or false", lambda v: isinstance(v, bool))
NUMBER: Check = ("a finite number", is_number)
OPT_NUMBER: Check = ("a finite number or null", lambda v: v is None or is_number(v))
POSITIVE: Check = ("a positive number or null", lambda v: v is None or (is_number(v) and v > 0))
NUMBERS: Check = ("a number or a list of 1-3 numbers", lambda v: is_number(v) or _numbers(v))
OPT_NUMBERS: Check = (
    "null, a number or a list of numbers",
    lambda v: v is None or is_number(v) or _numbers(v, 1, 64),
)
PERCENT: Check = (
    "a number in [0, 100] or null",
    lambda v: v is None or (is_number(v) and 0 <= v <= 100),
)
DTYPE: Check = (
    "null or one of 'float16', 'float32', 'float64'",
    lambda v: v is None or (isinstance(v, str) and v in ("float16", "float32", "float64")),
)
INTERP: Check = (
    "one of 'nearest', 'bilinear', 'bicubic' or a spline order 0-5",
    lambda v: (
        (isinstance(v, str) and v in ("nearest", "bilinear", "bicubic"))
        or (is_int(v) and 0 <= v <= 5)
    ),
)
PADDING = _one_of("zeros", "border", "reflection", "reflect", "grid-mirror", "constant",
                  "grid-constant", "nearest", "mirror", "grid-wrap", "wrap")  # fmt: skip
AXCODES: Check = ("three axis letters such as 'RAS', or null", lambda v: v is None or _axcodes(v))
AXIS_LABELS: Check = ("null or the pairs [['L', 'R'], ['P', 'A'], ['I', 'S']]", _axis_labels)

#: the transforms a card or bundle may name (MONAI array transforms, by class name), each
#: with its allowed arguments and their types; the class is never taken from the data
BUNDLE_TRANSFORMS: dict[str, dict[str, Check]] = {
    "Orientation": {"axcodes": AXCODES, "as_closest_canonical": BOOL, "labels": AXIS_LABELS,
                    "lazy": BOOL},
    "Spacing": {"pixdim": NUMBERS, "diagonal": BOOL, "mode": INTERP, "padding_mode": PADDING,
                "align_corners": BOOL, "dtype": DTYPE, "scale_extent": BOOL,
                "recompute_affine": BOOL, "min_pixdim": OPT_NUMBERS, "max_pixdim": OPT_NUMBERS,
                "lazy": BOOL},
    "ScaleIntensityRange": {"a_min": NUMBER, "a_max": NUMBER, "b_min": OPT_NUMBER,
                            "b_max": OPT_NUMBER, "clip": BOOL, "dtype": DTYPE},
    "NormalizeIntensity": {"subtrahend": OPT_NUMBERS, "divisor": OPT_NUMBERS, "nonzero": BOOL,
                           "channel_wise": BOOL, "dtype": DTYPE},
    "ScaleIntensity": {"minv": OPT_NUMBER, "maxv": OPT_NUMBER, "factor": OPT_NUMBER,
                       "channel_wise": BOOL, "dtype": DTYPE},
    "ClipIntensityPercentiles": {"lower": PERCENT, "upper": PERCENT, "sharpness_factor": POSITIVE,
                                 "channel_wise": BOOL, "return_clipping_values": BOOL,
                                 "dtype": DTYPE},
}  # fmt: skip
_REQUIRED = {"Spacing": ("pixdim",), "ScaleIntensityRange": ("a_min", "a_max"),
             "ClipIntensityPercentiles": ("lower", "upper")}  # fmt: skip


def bundle_step_problems(name: Any, args: dict[str, Any]) -> list[str]:
    """Why the transform ``name`` (a MONAI array transform's class name) with ``args``
    may not be built (empty when it may): a class outside :data:`BUNDLE_TRANSFORMS`, an
    argument it does not allow, or a value that is not plain data of the allowed type."""
    spec = BUNDLE_TRANSFORMS.get(name) if isinstance(name, str) else None
    if spec is None:
        return [f"transform {short(name)} is not allowed (allowed: {', '.join(BUNDLE_TRANSFORMS)})"]
    out = []
    for key, value in args.items():
        if key not in spec:
            out.append(
                f"transform {name}: argument {short(key)} is not allowed (allowed: "
                f"{', '.join(spec)})"
            )
        elif not spec[key][1](value):
            out.append(
                f"transform {name}: argument {key!r} must be {spec[key][0]}, got {short(value)}"
            )
    missing = [k for k in _REQUIRED.get(name, ()) if k not in args]
    if missing:
        out.append(f"transform {name}: needs {', '.join(missing)}")
    return out


def _bundle_problems(pre: dict[str, Any]) -> list[str]:
    steps = pre.get("transforms", [])
    if not isinstance(steps, list):
        return [f"preprocessing transforms must be a list, got {short(steps)}"]
    out = []
    for i, step in enumerate(steps):
        if not isinstance(step, dict):
            out.append(f"preprocessing transform {i} is not an object: {short(step)}")
            continue
        args = {k: v for k, v in step.items() if k != "name"}
        out += [f"preprocessing {p}" for p in bundle_step_problems(step.get("name"), args)]
    return out


def _array_order_problems(pre: dict[str, Any]) -> list[str]:
    axes = pre.get("axes", [0, 1, 2])
    if not (isinstance(axes, list) and all(is_int(a) for a in axes) and sorted(axes) == [0, 1, 2]):
        return [f"array_order axes must be a permutation of 0, 1, 2, got {short(axes)}"]
    return []


def preprocessing_problems(card: Any) -> list[str]:
    """Problems of ``card.preprocessing`` (a producer's own pre/post-processing)."""
    pre = card.preprocessing
    if not pre:
        return []
    if not isinstance(pre, dict):
        return [f"preprocessing must be an object, got {short(pre)}"]
    kind = pre.get("kind")
    if kind == "array_order":
        return _array_order_problems(pre)
    if kind == "monai_bundle":
        return _bundle_problems(pre)
    if kind == "nnunet":
        from napari_vnet.models.nnunet_checks import nnunet_preprocessing_problems

        return nnunet_preprocessing_problems(pre)
    return [
        f"preprocessing kind {short(kind)} is unknown (known: array_order, monai_bundle, nnunet)"
    ]


def _class_problems(card: Any) -> list[str]:
    classes = card.classes
    if not classes:
        return ["the card lists no classes"]
    values = [c.value for c in classes]
    if not all(is_int(v) for v in values):
        return [f"label values must be whole numbers, got {short(values)}"]
    out = []
    if min(values) < 0 or max(values) > 65535:
        out.append(f"label values must be in [0, 65535], got {values}")
    dup = sorted({v for v in values if values.count(v) > 1})
    if dup:
        out.append(f"label values must differ; repeated: {', '.join(map(str, dup))}")
    return out


def _bounds(kind: str, norm: dict[str, Any], strict: bool = True) -> list[str]:
    low, high = norm.get("low"), norm.get("high")
    if not (is_number(low) and is_number(high)):
        return [f"{kind} normalization bounds are not finite numbers: {short(norm)}"]
    if not (high > low if strict else high >= low):
        order = "<" if strict else "<="
        return [f"{kind} normalization needs finite low {order} high, got {low}, {high}"]
    return []


def normalization_problems(norm: Any) -> list[str]:
    """Problems of a card's ``normalization`` (what ``normalize_intensity`` would refuse)."""
    from napari_vnet.transforms import NORMALIZATION_KINDS

    if not isinstance(norm, dict):
        return [f"normalization must be an object, got {short(norm)}"]
    kind = norm.get("kind", "zscore")
    if not isinstance(kind, str) or kind.lower() not in NORMALIZATION_KINDS:
        return [
            f"normalization kind {short(kind)} is unknown (known: {', '.join(NORMALIZATION_KINDS)})"
        ]
    kind = kind.lower()
    need = {"window": ("low", "high"), "ct": ("low", "high", "mean", "std")}.get(kind, ())
    missing = [k for k in need if k not in norm]
    if missing:
        return [f"{kind} normalization needs {', '.join(need)}; missing {', '.join(missing)}"]
    if kind in ("window", "ct"):
        out = _bounds(kind, norm, strict=kind == "window")  # ct: a constant foreground
        if kind == "ct" and not (
            is_number(norm["mean"]) and is_number(norm["std"]) and norm["std"] > 0
        ):
            out.append(f"ct normalization needs a finite mean and std > 0, got {short(norm)}")
        return out
    if kind == "percentile":
        q = {"low": norm.get("low", 0.5), "high": norm.get("high", 99.5)}
        if not all(is_number(v) and 0 <= v <= 100 for v in q.values()):
            return [
                "percentile normalization needs low and high in [0, 100], got "
                f"{q['low']}, {q['high']}"
            ]
        return _bounds(kind, q)
    clip = norm.get("clip")
    if clip is not None and not (_numbers(clip, 2, 2) and clip[0] <= clip[1]):
        return [f"zscore clip must be [low, high] with low <= high, got {short(clip)}"]
    return []


def _geometry_problems(card: Any) -> list[str]:
    out = []
    patch = card.patch_size
    if not (
        isinstance(patch, (list, tuple))
        and len(patch) == 3
        and all(is_int(p) and p >= 1 for p in patch)
    ):
        out.append(f"patch size must be three positive sizes, got {short(patch)}")
    sp = card.spacing
    if sp is not None and not (
        isinstance(sp, (list, tuple)) and len(sp) == 3 and all(is_number(s) and s > 0 for s in sp)
    ):
        out.append(f"spacing must be three positive finite values (mm), got {short(sp)}")
    if not (is_int(card.in_channels) and card.in_channels >= 1):
        out.append(f"in_channels must be a positive whole number, got {short(card.in_channels)}")
    mirror = (card.sliding_window or {}).get("mirror_axes", [])
    if not (isinstance(mirror, list) and all(is_int(a) and 0 <= a <= 2 for a in mirror)):
        out.append(f"sliding_window mirror_axes must list axes 0-2, got {short(mirror)}")
    return out


def card_problems(card: Any) -> list[str]:
    """What makes ``card`` unusable or unsafe (empty when it is fine): every check
    ``predict`` applies, so that ``info``, loading and saving say the same."""
    out = _geometry_problems(card) + _class_problems(card)
    out += normalization_problems(card.normalization)
    out += preprocessing_problems(card)
    if card.arch == "nnunet":
        from napari_vnet.models.nnunet_checks import nnunet_network_problems

        out += nnunet_network_problems(card.arch_kwargs)
    return out
