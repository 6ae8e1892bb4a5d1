"""MONAI weights: a bare network state dict with a user-given card, and bundle folders.

**Bare state dict** (:func:`wrap_monai_state_dict`): the weights of one of MONAI's
networks (``VNet``, ``UNet``, ``BasicUNet``, ``DynUNet``...) saved with
``torch.save(net.state_dict())``. Nothing in the file says which network or classes it
has, so the user gives the card (``napari-vnet import-weights --arch monai.VNet
--arch-kwargs ... --classes ... --normalization ... --spacing ...``); the result is a
napari-vnet weights file that rebuilds offline from its card. MONAI pipelines hold
volumes as ``(x, y, z)`` arrays, so the card's preprocessing is ``{"kind": "array_order",
"axes": [2, 1, 0]}``: napari-vnet's normalisation and resampling, then the axes reordered,
so that the network sees the axis order it was trained with.

**Bundle folder** (:func:`load_monai_bundle`): ``configs/metadata.json``,
``configs/inference.json`` and ``models/model.pt`` as MONAI's model zoo lays them out.
A bundle config may hold Python expressions (``"$..."``) that MONAI's own parser
evaluates; napari-vnet never evaluates them: it reads the network definition and the
preprocessing transforms as plain JSON (references ``"@name"`` to plain values are
resolved; an expression where a value is needed is refused with one line). The
preprocessing (``Orientationd``, ``Spacingd``, intensity transforms) is then applied with
MONAI's own array transforms on a ``MetaTensor`` built from the volume's geometry, and the
result is brought back to the input grid with MONAI's own inverse of those transforms
(as the bundle's ``Invertd`` does).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_vnet.foreign.networks import MONAI_NETWORKS, MonaiNetwork, require
from napari_vnet.foreign.safe_load import read_json_object, safe_torch_load
from napari_vnet.foreign.sizing import check_bundle_grid, check_class_count
from napari_vnet.models.card import ClassInfo, ModelCard
from napari_vnet.models.errors import CheckpointError
from napari_vnet.runtime import class_argmax

log = logging.getLogger(__name__)

__all__ = [
    "MonaiBundlePreprocessing",
    "UnsupportedBundleError",
    "load_monai_bundle",
    "monai_card",
    "wrap_monai_state_dict",
]

#: MONAI pipelines index volumes (x, y, z); ours are (z, y, x)
XYZ = [2, 1, 0]


class UnsupportedBundleError(CheckpointError):
    """A bundle napari-vnet cannot run exactly (expressions, unknown transforms...)."""


def _state_dict_of(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = obj
    else:
        inner = None
        if isinstance(obj, dict):
            inner = next(
                (obj[k] for k in ("state_dict", "model", "network", "net", "model_state_dict")
                 if isinstance(obj.get(k), dict)),
                None,
            )  # fmt: skip
        if not inner and isinstance(obj, dict) and any(
            isinstance(v, torch.Tensor) for v in obj.values()
        ):
            inner = obj  # a state dict with a stray entry: named below
        if not inner:
            raise CheckpointError(f"{path}: no network state dict in this file")
        state = inner
    out = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{path}: state dict entry {k!r} is not a tensor")
        for prefix in ("_orig_mod.", "module."):
            if k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    return out


def _load_into(net: MonaiNetwork, state: dict[str, torch.Tensor], path: Path) -> None:
    from napari_vnet.models.checkpoint import misfit

    parts = misfit(net.net.state_dict(), state, "network")
    if parts:
        raise CheckpointError(
            f"{path}: the weights do not fit MONAI {net.arch_kwargs['name']} with "
            f"{net.arch_kwargs['network_kwargs']}: " + "; ".join(parts)
        )
    net.net.load_state_dict(state)


def monai_card(
    name: str,
    network_kwargs: dict[str, Any],
    classes: list[ClassInfo],
    *,
    in_channels: int = 1,
    normalization: dict[str, Any] | None = None,
    spacing: tuple[float, float, float] | None = None,
    patch_size: tuple[int, int, int] = (96, 96, 96),
    source: dict[str, Any] | None = None,
) -> ModelCard:
    """The card of a bare MONAI network; ``spacing``/``patch_size`` given in (z, y, x).

    The network sees volumes in MONAI's ``(x, y, z)`` order: ``preprocessing`` says so
    (``{"kind": "array_order", "axes": [2, 1, 0]}``: napari-vnet's normalisation and
    resampling, then the axes reordered) and ``patch_size`` is stored in that order."""
    if name.startswith("monai."):
        name = name[len("monai.") :]
    if name not in MONAI_NETWORKS:
        raise ValueError(f"MONAI network {name!r} is not supported; supported: {MONAI_NETWORKS}")
    return ModelCard(
        arch="monai",
        arch_kwargs={"name": name, "network_kwargs": dict(network_kwargs)},
        classes=list(classes),
        in_channels=int(in_channels),
        normalization=dict(normalization or {"kind": "zscore"}),
        spacing=None if spacing is None else tuple(float(s) for s in spacing),
        patch_size=tuple(int(patch_size[a]) for a in XYZ),
        source=dict(source or {"format": "monai"}),
        preprocessing={"kind": "array_order", "axes": list(XYZ)},
    )


def wrap_monai_state_dict(
    path: str | os.PathLike, card: ModelCard
) -> tuple[MonaiNetwork, ModelCard]:
    """``(network, card)`` from a bare MONAI state dict file and the card describing it
    (see :func:`monai_card`). Raises CheckpointError when the weights do not fit."""
    from napari_vnet.models.registry import build_model

    path = Path(path)
    state = _state_dict_of(safe_torch_load(path), path)
    try:
        net = build_model(card)
    except ValueError as exc:
        raise CheckpointError(f"{path}: cannot build the network of the card: {exc}") from None
    _load_into(net, state, path)  # type: ignore[arg-type]
    src = dict(card.source)
    src.setdefault("file", path.name)
    card.source = src
    net.eval()
    return net, card  # type: ignore[return-value]


# --------------------------------------------------------------------------- bundles


def _plain(value: Any, config: dict[str, Any], where: str, depth: int = 0) -> Any:
    """``value`` with ``"@name"`` references to plain config entries resolved; an
    expression (``"$..."``) or a macro (``"%..."``, another file's entry) raises
    UnsupportedBundleError (it would need running code or reading other files)."""
    if depth > 20:
        raise UnsupportedBundleError(f"{where}: references nest too deeply")
    if isinstance(value, str):
        if value.startswith("$"):
            raise UnsupportedBundleError(
                f"{where} is a Python expression ({value[:60]!r}); napari-vnet does not run "
                "code from bundle configs"
            )
        if value.startswith("%"):
            raise UnsupportedBundleError(
                f"{where} is a macro ({value[:60]!r}); napari-vnet reads plain values only"
            )
        if value.startswith("@"):
            key = value[1:]
            if key not in config:
                raise UnsupportedBundleError(f"{where} refers to {value!r}, which is not defined")
            return _plain(config[key], config, f"{where} -> {value}", depth + 1)
        return value
    if isinstance(value, list):
        return [_plain(v, config, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _plain(v, config, f"{where}.{k}", depth + 1) for k, v in value.items()}
    return value


def _target(entry: Any) -> str:
    """The class name a config entry's ``_target_`` names: a bare name or one inside
    ``monai.`` (a bundle naming its own module's class is not MONAI's transform)."""
    if not isinstance(entry, dict):
        return ""
    target = entry.get("_target_", "")
    if not isinstance(target, str) or ("." in target and not target.startswith("monai.")):
        return ""
    return target.rsplit(".", 1)[-1]


#: bundle preprocessing transforms napari-vnet applies (with MONAI's array transforms,
#: built only from the allowlist of napari_vnet.models.card_checks)
GEOMETRIC = ("Orientationd", "Spacingd")
INTENSITY = (
    "ScaleIntensityRanged",
    "NormalizeIntensityd",
    "ScaleIntensityd",
    "ClipIntensityPercentilesd",
)
PASSIVE = ("LoadImaged", "LoadImage", "EnsureChannelFirstd", "EnsureTyped", "CastToTyped",
           "ToTensord", "AddChanneld", "EnsureType", "ToDeviced")  # fmt: skip
#: keys of a bundle's transform entry that are no arguments of the transform
_ENTRY_KEYS = ("_target_", "keys", "_desc_", "_disabled_")


def _evaluator_amp(config: dict) -> bool:
    """Whether the bundle's evaluator runs under autocast (MONAI's ``amp``, CUDA only)."""
    evaluator = config.get("evaluator")
    amp = evaluator.get("amp") if isinstance(evaluator, dict) else None
    if isinstance(amp, str) and amp.startswith("@"):  # a reference, e.g. "@amp"
        amp = config.get(amp[1:])
    return (config.get("amp") if amp is None else amp) is True


def _bundle_transforms(config: dict[str, Any], where: Path) -> list[dict[str, Any]]:
    from napari_vnet.models.card_checks import bundle_step_problems

    pre = config.get("preprocessing")
    if isinstance(pre, str) and pre.startswith("@"):
        pre = config.get(pre[1:])
    if not isinstance(pre, dict) or _target(pre) != "Compose":
        raise UnsupportedBundleError(f"{where}: no 'preprocessing' Compose of transforms")
    steps = pre.get("transforms", [])
    if isinstance(steps, str) and steps.startswith("@"):
        steps = _plain(steps, config, "preprocessing.transforms")
    if not isinstance(steps, list):
        raise UnsupportedBundleError(
            f"{where}: preprocessing transforms must be a list, got {str(steps)[:60]!r}"
        )
    out = []
    for i, t in enumerate(steps):
        if isinstance(t, str) and t.startswith("@"):
            t = _plain(t, config, f"preprocessing[{i}]")
        name = _target(t)
        if name in PASSIVE or (isinstance(t, dict) and t.get("_disabled_") is True):
            continue
        if name not in GEOMETRIC + INTENSITY:
            shown = name or (t.get("_target_") if isinstance(t, dict) else t)
            raise UnsupportedBundleError(
                f"{where}: preprocessing transform {i} {str(shown)[:60]!r} is not supported "
                f"(supported: {', '.join(GEOMETRIC + INTENSITY)})"
            )
        label = f"preprocessing transform {i} ({name})"
        args = {k: _plain(v, config, f"{label}: argument {k!r}") for k, v in t.items()
                if k not in _ENTRY_KEYS}  # fmt: skip
        problems = bundle_step_problems(name[:-1], args)
        if problems:
            raise UnsupportedBundleError(
                f"{where}: {label}: " + "; ".join(p.split(": ", 1)[-1] for p in problems)
            )
        out.append({**args, "name": name[:-1]})
    return out


def load_monai_bundle(path: str | os.PathLike) -> tuple[torch.nn.Module, ModelCard]:
    """``(network, card)`` of a MONAI bundle folder (see module docstring)."""
    config_path = Path(path) / "configs" / "inference.json"
    try:
        return _load_bundle(Path(path))
    except UnsupportedBundleError as exc:
        if str(config_path) in str(exc) or str(path) in str(exc):
            raise
        raise UnsupportedBundleError(f"{config_path}: {exc}") from None


def _whole(value: Any, what: str, root: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UnsupportedBundleError(
            f"{root}: configs/inference.json {what} must be a positive whole number, got "
            f"{str(value)[:60]!r}"
        )
    return value


def _load_bundle(root: Path) -> tuple[torch.nn.Module, ModelCard]:
    meta = read_json_object(root / "configs" / "metadata.json")
    config = read_json_object(root / "configs" / "inference.json")
    net_def = config.get("network_def")
    if not isinstance(net_def, dict):
        raise UnsupportedBundleError(f"{root}: configs/inference.json has no 'network_def'")
    from napari_vnet.foreign.bundle_export import probabilities_target

    if net_def.get("_target_") == probabilities_target():
        return _load_native_bundle(root, meta, config)
    name = _target(net_def)
    if name not in MONAI_NETWORKS:
        raise UnsupportedBundleError(
            f"{root}: bundle network {name!r} is not supported (supported: {', '.join(MONAI_NETWORKS)})"
        )
    kwargs = _plain({k: v for k, v in net_def.items() if k != "_target_"}, config, "network_def")
    in_ch = _whole(kwargs.pop("in_channels", 1), "network_def in_channels", root)
    out_ch = check_class_count(
        _whole(kwargs.pop("out_channels", 2), "network_def out_channels", root), root
    )
    outputs = (meta.get("network_data_format") or {}).get("outputs") or {}
    first = next(iter(outputs.values()), {}) if outputs else {}
    channel_def = first.get("channel_def") or {}
    classes = [ClassInfo(i, str(channel_def.get(str(i), "background" if i == 0 else f"class {i}")))
               for i in range(out_ch)]  # fmt: skip
    inferer = _plain(config.get("inferer") or {}, config, "inferer")
    if not isinstance(inferer, dict):
        raise UnsupportedBundleError(f"{root}: configs/inference.json 'inferer' is not an object")
    roi = inferer.get("roi_size") or [96, 96, 96]
    if not (isinstance(roi, list) and len(roi) == 3):
        raise UnsupportedBundleError(
            f"{root}: configs/inference.json inferer roi_size must be three sizes (the patch "
            f"size), got {str(roi)[:60]!r}"
        )
    roi = [_whole(r, "inferer roi_size", root) for r in roi]
    transforms = _bundle_transforms(config, root / "configs" / "inference.json")
    weights = root / "models" / "model.pt"
    if not weights.is_file():
        raise CheckpointError(f"{root}: no models/model.pt in this bundle")
    card = ModelCard(
        arch="monai",
        arch_kwargs={"name": name, "network_kwargs": kwargs},
        classes=classes,
        in_channels=in_ch,
        normalization={"kind": "none"},
        spacing=None,
        patch_size=tuple(int(r) for r in roi),  # in the bundle's (x, y, z) array order
        description=str(meta.get("description", "")),
        source={
            "format": "monai_bundle",
            "path": str(root),
            "name": str(meta.get("name", root.name)),
            "version": str(meta.get("version", "")),
            "amp": _evaluator_amp(config),
        },  # fmt: skip
        preprocessing={"kind": "monai_bundle", "transforms": transforms},
        sliding_window={
            "blend": "softmax",
            "mode": str(inferer.get("mode", "constant")),
            "overlap": float(inferer.get("overlap", 0.25)),
            "sigma_scale": float(inferer.get("sigma_scale", 0.125)),
        },
    )
    from napari_vnet.models.card import card_problems
    from napari_vnet.models.errors import InvalidCardError

    problems = card_problems(card)  # before anything is built from it
    if problems:
        raise InvalidCardError(root / "configs" / "inference.json", problems)
    net, card = wrap_monai_state_dict(weights, card)
    return net, card


def _load_native_bundle(root: Path, meta: dict, config: dict) -> tuple[torch.nn.Module, ModelCard]:
    """napari-vnet's own network as :func:`~napari_vnet.foreign.bundle_export.export_monai_bundle`
    writes it: rebuilt from the model card kept in ``metadata.json``, once the bundle's
    ``network_def`` and ``preprocessing`` are found to be what the export writes for that
    card (a bundle edited since runs in MONAI only: napari-vnet would not run it as MONAI
    does)."""
    from napari_vnet.foreign.bundle_export import (
        NATIVE_CARD_KEY,
        inference_config,
        native_targets,
    )
    from napari_vnet.models.checkpoint import card_from_dict, fit_weights
    from napari_vnet.models.outputs import Probabilities
    from napari_vnet.models.registry import build_model

    meta_path = root / "configs" / "metadata.json"
    if not isinstance(meta.get(NATIVE_CARD_KEY), dict):
        raise UnsupportedBundleError(
            f"{meta_path}: network_def names napari-vnet's network, but there is no "
            f"{NATIVE_CARD_KEY} (the model card napari-vnet writes beside it)"
        )
    card = card_from_dict(meta_path, meta[NATIVE_CARD_KEY])
    if card.arch not in native_targets():
        raise UnsupportedBundleError(
            f"{meta_path}: {NATIVE_CARD_KEY} names the network {card.arch!r}, not one of "
            f"napari-vnet's own ({', '.join(native_targets())})"
        )
    expected = json.loads(json.dumps(inference_config(card)))
    for key in ("network_def", "preprocessing"):
        if config.get(key) != expected[key]:
            raise UnsupportedBundleError(
                f"{root}: configs/inference.json {key} is not what napari-vnet writes for the "
                f"model card in metadata.json; napari-vnet runs its own networks' bundles only "
                "as exported (MONAI runs this one)"
            )
    weights = root / "models" / "model.pt"
    state = _state_dict_of(safe_torch_load(weights), weights)
    net = Probabilities(build_model(card))
    fit_weights(weights, f"{card.arch} network", net, state)
    card.source = {"format": "monai_bundle", "path": str(root),
                   "name": str(meta.get("name", root.name)), "version": str(meta.get("version", ""))}  # fmt: skip
    return net.network.eval(), card


@dataclass
class BundleContext:
    tensor: Any  # the preprocessed MetaTensor (holds the applied operations)
    transforms: Any  # the MONAI Compose to invert
    pad_before: tuple[int, int, int] = (0, 0, 0)
    shape: tuple[int, int, int] = (0, 0, 0)  # the preprocessed grid, before padding
    nonfinite_replaced: int = 0  # MONAI's transforms see the input as it is
    resampled: bool | None = None  # as the bundle's Spacingd decides (the grid shape says)
    input_spacing: tuple[float, float, float] | None = None  # post-processing: the caller's


def _affine_ras(spacing, origin, direction) -> np.ndarray:
    """The RAS voxel->world affine of a (x, y, z)-indexed array from ITK geometry."""
    sp = np.asarray(spacing, float)[::-1]  # (x, y, z)
    d = np.asarray(direction, float).reshape(3, 3)  # ITK direction, columns = x, y, z axes
    aff = np.eye(4)
    aff[:3, :3] = d * sp[None, :]
    aff[:3, 3] = np.asarray(origin, float)[::-1] if len(origin) == 3 else 0.0
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])  # LPS -> RAS
    return flip @ aff


class MonaiBundlePreprocessing:
    """A bundle's preprocessing with MONAI's array transforms, and its inverse."""

    prepares_training = False  # fine-tuned through napari-vnet's own data pipeline
    restores_probabilities = False  # the inverse gives labels only

    def __init__(self, card: ModelCard) -> None:
        require("monai", "monai", "MONAI bundles")
        import monai.transforms as mt

        from napari_vnet.models.card_checks import preprocessing_problems

        problems = preprocessing_problems(card)  # never build a class the allowlist lacks
        if problems:
            raise ValueError("the model card cannot be used: " + "; ".join(problems))
        steps = []
        for t in card.preprocessing.get("transforms", []):
            args = {k: v for k, v in t.items() if k != "name"}
            steps.append(getattr(mt, t["name"])(**args))
        self.compose = mt.Compose(steps)
        self.patch_size = tuple(int(p) for p in card.patch_size)

    def preprocess(
        self, channels: np.ndarray, spacing, geometry=None
    ) -> tuple[np.ndarray, BundleContext]:
        """``(C, z, y, x)`` -> ``(C, X', Y', Z')`` float32 in the bundle's array order."""
        from monai.data import MetaTensor

        sp = spacing if spacing is not None else (1.0, 1.0, 1.0)
        origin = getattr(geometry, "origin", (0.0, 0.0, 0.0))
        direction = getattr(geometry, "direction", None)
        if direction is None:
            direction = np.eye(3).ravel()
        check_bundle_grid(self.compose, np.shape(channels), sp, self.patch_size)
        xyz = np.ascontiguousarray(np.asarray(channels, np.float32).transpose(0, 3, 2, 1))
        t = MetaTensor(
            torch.from_numpy(xyz), affine=torch.from_numpy(_affine_ras(sp, origin, direction))
        )
        out = self.compose(t)
        data = out.detach().cpu().numpy().astype(np.float32, copy=False)
        shape = tuple(int(s) for s in data.shape[1:])
        # smaller than a window: zeros split evenly on both sides, as MONAI's
        # sliding_window_inference pads (never the engine's own way)
        short = [max(0, p - s) for p, s in zip(self.patch_size, shape, strict=True)]
        before = tuple(q // 2 for q in short)
        if any(short):
            data = np.pad(data, [(0, 0)] + [(b, q - b) for b, q in zip(before, short, strict=True)])
        ctx = BundleContext(out, self.compose, before, shape)  # type: ignore[arg-type]
        return np.ascontiguousarray(data), ctx

    def needs_scores(self, ctx: BundleContext) -> bool:
        return True  # the inverse resamples probabilities, then arg-max

    def restore(
        self, ctx: BundleContext, *, labels=None, probabilities=None, scores=None
    ) -> tuple[np.ndarray, None]:
        """Labels on the input grid: the network-grid scores (probabilities) inverted
        through the preprocessing with MONAI's inverse, then arg-maxed (as ``Invertd``
        followed by ``AsDiscreted(argmax=True)``)."""
        from monai.data import MetaTensor

        if scores is None:
            raise ValueError("inverting a bundle's preprocessing needs the probabilities")
        keep = tuple(slice(b, b + s) for b, s in zip(ctx.pad_before, ctx.shape, strict=True))
        scores = np.asarray(scores)[(slice(None), *keep)]
        pred = MetaTensor(
            torch.from_numpy(np.asarray(scores, np.float32)), affine=ctx.tensor.affine
        )
        pred.applied_operations = list(ctx.tensor.applied_operations)
        inv = ctx.transforms.inverse(pred)
        labels_xyz = class_argmax(inv.as_tensor().detach().cpu(), 0).numpy()
        return np.ascontiguousarray(labels_xyz.transpose(2, 1, 0)).astype(np.uint8), None

    def restore_uncertainty(self, ctx: BundleContext, uncertainty: np.ndarray) -> None:
        """None: the way back inverts probabilities, a map has none."""
        return None

    def prepare_training(self, image, labels, mask, spacing):
        raise NotImplementedError("a bundle's pairs are prepared by the training data pipeline")
