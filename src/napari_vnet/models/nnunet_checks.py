"""Checks of an nnU-Net v2 plan held in a model card, before nnU-Net's code sees it.

nnU-Net's own functions take ``plans.json`` on trust: a patch size ``"a"``, a spacing of
0, an unknown resampling function or a CT channel without intensity properties fail deep
inside them with a traceback, at prediction time. :func:`nnunet_preprocessing_problems`
and :func:`nnunet_network_problems` say each such problem in one line, naming the file it
comes from (``plans.json`` / ``dataset.json``), when the card is loaded. Plain Python (no
nnU-Net import).
"""

from __future__ import annotations

from typing import Any

from napari_vnet.models.card_checks import is_int, is_number, short

__all__ = ["nnunet_network_problems", "nnunet_preprocessing_problems"]

NORMALIZATION_SCHEMES = ("ZScoreNormalization", "CTNormalization", "NoNormalization",
                         "RescaleTo01Normalization", "RGBTo01Normalization")  # fmt: skip
_SPLINE = ("an order 0-5", lambda v: is_int(v) and 0 <= v <= 5)
_FLAG = ("true or false", lambda v: isinstance(v, bool))
_OPT_FLAG = ("true, false or null", lambda v: v is None or isinstance(v, bool))
_POS = ("a positive number", lambda v: is_number(v) and v > 0)
_MODE = ("an interpolation mode", lambda v: v in ("linear", "nearest", "nearest-exact", "area",
                                                  "bilinear", "trilinear", "bicubic"))  # fmt: skip
#: resampling functions of nnU-Net's that a plan may name, with their keyword arguments
RESAMPLING = {
    "resample_data_or_seg_to_shape": {"is_seg": _FLAG, "order": _SPLINE, "order_z": _SPLINE,
                                      "force_separate_z": _OPT_FLAG,
                                      "separate_z_anisotropy_threshold": _POS},
    "resample_torch_fornnunet": {"is_seg": _FLAG, "num_threads": _POS,
                                 "force_separate_z": _OPT_FLAG,
                                 "memefficient_seg_resampling": _FLAG,
                                 "separate_z_anisotropy_threshold": _POS, "mode": _MODE,
                                 "aniso_axis_mode": _MODE},
    "no_resampling_hack": {},
}  # fmt: skip
_CT_KEYS = ("mean", "std", "percentile_00_5", "percentile_99_5")


def _resolve(plans: dict[str, Any], name: Any) -> tuple[dict[str, Any] | None, str | None]:
    configs = plans.get("configurations")
    if not isinstance(configs, dict):
        return None, "plans.json has no 'configurations' object"
    chain: list[dict[str, Any]] = []
    if not isinstance(name, str):
        return None, f"the nnU-Net configuration {short(name)} is not a name (text)"
    while True:
        cfg = configs.get(name) if isinstance(name, str) else None
        if not isinstance(cfg, dict):
            return None, f"plans.json has no configuration {short(name)} (has {sorted(configs)})"
        if len(chain) > len(configs):
            return None, "plans.json configurations inherit in a circle"
        chain.append(cfg)
        name = cfg.get("inherits_from")
        if not name:
            break
    merged: dict[str, Any] = {}
    for cfg in reversed(chain):
        merged.update(cfg)
    return merged, None


def _triple(v: Any, positive_int: bool) -> bool:
    ok = (lambda x: is_int(x) and x >= 1) if positive_int else (lambda x: is_number(x) and x > 0)
    return isinstance(v, (list, tuple)) and len(v) == 3 and all(ok(x) for x in v)


def _permutation(v: Any) -> bool:
    return isinstance(v, list) and all(is_int(a) for a in v) and sorted(v) == [0, 1, 2]


def _resampling_problems(cfg: dict[str, Any], where: str) -> list[str]:
    out = []
    for what in ("data", "seg", "probabilities"):
        fn = cfg.get(f"resampling_fn_{what}")
        kwargs = cfg.get(f"resampling_fn_{what}_kwargs", {})
        spec = RESAMPLING.get(fn) if isinstance(fn, str) else None
        if spec is None:
            out.append(f"{where}: resampling_fn_{what} {short(fn)} is not one of nnU-Net's "
                       f"resampling functions ({', '.join(RESAMPLING)})")  # fmt: skip
            continue
        if not isinstance(kwargs, dict):
            out.append(
                f"{where}: resampling_fn_{what}_kwargs must be an object, got {short(kwargs)}"
            )
            continue
        for key, value in kwargs.items():
            if key not in spec:
                out.append(f"{where}: resampling_fn_{what}_kwargs {short(key)} is not an argument "
                           f"of {fn}")  # fmt: skip
            elif not spec[key][1](value):
                out.append(f"{where}: resampling_fn_{what}_kwargs {key!r} must be {spec[key][0]}, "
                           f"got {short(value)}")  # fmt: skip
    return out


def _normalization_problems(plans, cfg, channels: int, where: str) -> list[str]:
    schemes = cfg.get("normalization_schemes")
    known = isinstance(schemes, list) and all(s in NORMALIZATION_SCHEMES for s in schemes)
    if not (known and len(schemes) == channels):
        return [
            f"{where}: normalization_schemes must list one of {', '.join(NORMALIZATION_SCHEMES)} "
            f"per input channel ({channels}), got {short(schemes)}"
        ]
    mask = cfg.get("use_mask_for_norm", [False] * channels)
    if not (
        isinstance(mask, list) and len(mask) == channels and all(isinstance(m, bool) for m in mask)
    ):
        return [
            f"{where}: use_mask_for_norm must list true/false per input channel, got {short(mask)}"
        ]
    props = plans.get("foreground_intensity_properties_per_channel")
    out = []
    for i, scheme in enumerate(schemes):
        if scheme != "CTNormalization":
            continue
        p = props.get(str(i)) if isinstance(props, dict) else None
        bad = [k for k in _CT_KEYS if not (isinstance(p, dict) and is_number(p.get(k)))]
        if bad:
            out.append(f"plans.json: CT normalisation of channel {i} needs "
                       f"foreground_intensity_properties_per_channel[{str(i)!r}] with numbers "
                       f"{', '.join(_CT_KEYS)}; missing or not a number: "
                       f"{', '.join(bad)}")  # fmt: skip
    return out


def _label_problems(dataset_json: Any) -> tuple[list[str], int]:
    if not isinstance(dataset_json, dict):
        return ["dataset.json must be an object"], 1
    labels = dataset_json.get("labels")
    if not isinstance(labels, dict) or not labels:
        return [f"dataset.json labels must be an object of name: value, got {short(labels)}"], 1
    bad = {k: v for k, v in labels.items() if not (is_int(v) or isinstance(v, list))}
    out = [f"dataset.json label values must be whole numbers, got {short(bad)}"] if bad else []
    channels = dataset_json.get("channel_names", dataset_json.get("modality", {"0": "?"}))
    if not isinstance(channels, dict) or not channels:
        out.append(f"dataset.json channel_names must be an object, got {short(channels)}")
        return out, 1
    return out, len(channels)


def nnunet_preprocessing_problems(pre: dict[str, Any]) -> list[str]:
    """Problems of a card's ``{"kind": "nnunet", "plans": ..., "configuration": ...,
    "dataset_json": ...}`` that nnU-Net's preprocessing would trip over."""
    plans = pre.get("plans")
    if not isinstance(plans, dict):
        return [f"plans.json must be an object, got {short(plans)}"]
    out, channels = _label_problems(pre.get("dataset_json"))
    cfg, problem = _resolve(plans, pre.get("configuration"))
    if cfg is None:
        return [*out, str(problem)]
    where = f"plans.json configuration {pre.get('configuration')!r}"
    if not _triple(cfg.get("patch_size"), True):
        out.append(f"{where}: patch_size must be three positive whole numbers, got "
                   f"{short(cfg.get('patch_size'))}")  # fmt: skip
    if not _triple(cfg.get("spacing"), False):
        out.append(f"{where}: spacing must be three positive finite numbers (mm), got "
                   f"{short(cfg.get('spacing'))}")  # fmt: skip
    for key in ("transpose_forward", "transpose_backward"):
        if not _permutation(plans.get(key, [0, 1, 2])):
            out.append(f"plans.json: {key} must be a permutation of 0, 1, 2, got "
                       f"{short(plans.get(key))}")  # fmt: skip
    out += _resampling_problems(cfg, where)
    out += _normalization_problems(plans, cfg, channels, where)
    return out


def _positive(x: Any) -> bool:
    return is_int(x) and x >= 1


def _size(x: Any) -> bool:
    """One positive size or three (z, y, x)."""
    return _positive(x) or (isinstance(x, list) and len(x) == 3 and all(map(_positive, x)))


def _stage_problems(kw: dict[str, Any], n: int) -> list[str]:
    """Per-stage lists whose length is not ``n_stages`` (one line for all of them), and
    entries that are not positive sizes (one line each)."""
    stages = (
        ("features_per_stage", n, _positive),
        ("kernel_sizes", n, _size),
        ("strides", n, _size),
        ("n_conv_per_stage", n, _positive),
        ("n_blocks_per_stage", n, _positive),
        ("n_conv_per_stage_decoder", n - 1, _positive),
    )
    where = "plans.json architecture"
    lengths, out = [], []
    for key, count, item in stages:
        v = kw.get(key)
        if key not in kw or item(v):
            continue
        if isinstance(v, list) and len(v) != count:
            lengths.append(f"{key} has {len(v)} (needs {count})")
        elif not (isinstance(v, list) and all(item(x) for x in v)):
            out.append(f"{where}: {key} must be positive whole numbers, got {short(v)}")
    if lengths:
        out.insert(0, f"{where}: stage counts disagree with n_stages {n}: " + ", ".join(lengths))
    return out


def nnunet_network_problems(arch_kwargs: Any) -> list[str]:
    """Problems of an nnU-Net card's network (the plan's ``architecture``): stage counts
    that do not agree, feature counts or sizes that are not positive whole numbers."""
    if not isinstance(arch_kwargs, dict):
        return [f"arch_kwargs must be an object, got {short(arch_kwargs)}"]
    where = "plans.json architecture"
    kw = arch_kwargs.get("network_kwargs")
    if not isinstance(kw, dict):
        return [f"{where}: arch_kwargs must be an object, got {short(kw)}"]
    out = []
    members = arch_kwargs.get("members", 1)
    if not (is_int(members) and members >= 1):
        out.append(
            f"the card's ensemble members must be a positive whole number, got {short(members)}"
        )
    n = kw.get("n_stages")
    if n is None:
        return out
    if not (is_int(n) and n >= 1):
        return [*out, f"{where}: n_stages must be a positive whole number, got {short(n)}"]
    return out + _stage_problems(kw, n)
