"""Weights written as a MONAI bundle: MONAI's networks and napari-vnet's own.

The bundle folder holds ``configs/metadata.json``, ``configs/inference.json`` and
``models/model.pt``, a plain state dict (tensors only: ``torch.load(...,
weights_only=True)`` reads it). MONAI's ``ConfigParser`` runs it: ``network_def``, the
``preprocessing`` Compose, the ``inferer`` and the ``postprocessing`` Compose.

* A MONAI network (card arch ``monai``): ``network_def`` names MONAI's class and its
  keywords.
* napari-vnet's own networks (V-Net, 3D U-Net, the Vox2Vox generator): ``network_def`` is
  :class:`napari_vnet.models.outputs.Probabilities` around the network, named by its
  class's import path (e.g. ``napari_vnet.models.vnet.VNet``) with the card's constructor
  keywords, so MONAI builds it where napari-vnet is installed (``metadata.json``'s
  ``required_packages_version`` names it). The network returns probabilities, so MONAI's
  inferer blends the windows as napari-vnet's engine does (probabilities, not logits)
  and the labels are napari-vnet's; ``model.pt`` holds the network's weights under
  ``network.``. The bundle refers to napari-vnet's classes by name only: it holds no
  code, no expression and no pickled object. The whole model card is kept in ``metadata.json`` (``napari_vnet_card``), so
  that napari-vnet reads the bundle back as the weights it came from (label values,
  colours, post-processing; :func:`napari_vnet.foreign.monai_bundle.load_monai_bundle`).

The preprocessing is the card's, as MONAI transforms in the order napari-vnet's engine
applies them: the intensities first (window: ``ScaleIntensityRange`` with clipping;
nnU-Net-style CT: ``ScaleIntensityRange`` mapping the clip range onto its z-scores;
z-score: ``NormalizeIntensity``, after two ``ThresholdIntensity`` for its clip range;
percentile: ``ScaleIntensityRangePercentiles``), then ``Spacing`` to the card's spacing.
There is no ``Orientation``: the engine feeds the voxels in their stored order. MONAI's
``LoadImage`` gives ``(x, y, z)`` arrays; napari-vnet's own networks learn on ``(z, y,
x)`` arrays, so their bundles end with ``Transposed`` (undone by ``Invertd`` on the way
back) and the inferer's ``roi_size`` is the card's ``(z, y, x)`` patch. The
post-processing is softmax (MONAI networks: they return logits), ``Invertd``
(probabilities back to the input grid), arg-max,
then ``MapLabelValued`` when the label values are not ``0..n-1`` and
``KeepLargestConnectedComponentd`` for the card's ``largest_component`` classes.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from napari_vnet.foreign.export_paths import (
    BUNDLE_LAYOUT,
    ExportError,
    check_target,
    publish,
    tmp_beside,
)
from napari_vnet.models.card import ModelCard

__all__ = [
    "NATIVE_CARD_KEY",
    "bundle_transforms",
    "export_monai_bundle",
    "inference_config",
    "native_targets",
    "probabilities_target",
]

#: the key of metadata.json holding the napari-vnet model card
NATIVE_CARD_KEY = "napari_vnet_card"
#: MONAI arrays are (C, x, y, z); napari-vnet's own networks see (C, z, y, x)
TO_ZYX = [0, 3, 2, 1]


def _path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def native_targets() -> dict[str, str]:
    """napari-vnet's own architectures -> their classes' import paths."""
    from napari_vnet.models.registry import ARCHITECTURES

    return {arch: _path(cls) for arch, cls in ARCHITECTURES.items()}


def probabilities_target() -> str:
    """The import path of :class:`napari_vnet.models.outputs.Probabilities`."""
    from napari_vnet.models.outputs import Probabilities

    return _path(Probabilities)


def _intensity_steps(norm: dict[str, Any]) -> list[dict[str, Any]]:
    kind = norm.get("kind", "zscore")
    if kind == "window":
        return [{"name": "ScaleIntensityRange", "a_min": norm["low"], "a_max": norm["high"],
                 "b_min": 0.0, "b_max": 1.0, "clip": True}]  # fmt: skip
    if kind == "ct":  # clip to [low, high], then (x - mean) / std: one linear map
        low, high, mean, std = (float(norm[k]) for k in ("low", "high", "mean", "std"))
        return [{"name": "ScaleIntensityRange", "a_min": low, "a_max": high,
                 "b_min": (low - mean) / std, "b_max": (high - mean) / std, "clip": True}]  # fmt: skip
    if kind == "percentile":
        return [{"name": "ScaleIntensityRangePercentiles", "lower": norm.get("low", 0.5),
                 "upper": norm.get("high", 99.5), "b_min": 0.0, "b_max": 1.0, "clip": True}]  # fmt: skip
    if kind == "zscore":
        clip = norm.get("clip")
        steps = []
        if clip is not None:
            low, high = float(clip[0]), float(clip[1])
            steps = [{"name": "ThresholdIntensity", "threshold": low, "above": True, "cval": low},
                     {"name": "ThresholdIntensity", "threshold": high, "above": False,
                      "cval": high}]  # fmt: skip
        return [*steps, {"name": "NormalizeIntensity"}]
    if kind == "none":
        return []
    raise ExportError(f"normalisation {norm} has no MONAI transform equivalent here")


def bundle_transforms(card: ModelCard) -> list[dict[str, Any]]:
    """The bundle's preprocessing transforms for ``card`` (after loading the image as a
    channel-first ``(C, x, y, z)`` array), as ``inference.json`` entries."""
    pre = card.preprocessing or {}
    if pre.get("kind") == "monai_bundle":
        steps = list(pre.get("transforms", []))
    elif pre.get("kind") not in (None, "array_order"):
        raise ExportError(f"preprocessing {pre.get('kind')!r} has no MONAI bundle equivalent")
    else:
        # napari-vnet normalises, then resamples; it never reorients (no Orientation)
        steps = _intensity_steps(card.normalization or {})
        if card.spacing:
            steps.append(
                {"name": "Spacing", "pixdim": list(card.spacing)[::-1], "mode": "bilinear"}
            )
        if card.arch in native_targets():
            steps.append({"name": "Transpose", "indices": TO_ZYX})
    out = []
    for s in steps:
        args = {k: v for k, v in s.items() if k != "name"}
        out.append({"_target_": s["name"] + "d", "keys": "image", **args})
    return out


def _network_def(card: ModelCard) -> dict[str, Any]:
    native = native_targets()
    if card.arch in native:  # probabilities: MONAI then blends windows as napari-vnet does
        network = {"_target_": native[card.arch], "in_channels": card.in_channels,
                   "out_channels": card.out_channels, **card.arch_kwargs}  # fmt: skip
        return {"_target_": probabilities_target(), "network": network}
    if card.arch != "monai":
        raise ExportError(
            f"only MONAI networks and napari-vnet's own ({', '.join(native)}) can be written "
            f"as a MONAI bundle; this is {card.arch!r}"
            + (" (write it with --format nnunet)" if card.arch == "nnunet" else "")
        )
    network_def = {"_target_": card.arch_kwargs["name"], "in_channels": card.in_channels,
                   "out_channels": card.out_channels, **card.arch_kwargs.get("network_kwargs", {})}  # fmt: skip
    network_def.setdefault("spatial_dims", 3)
    return network_def


def _postprocessing(card: ModelCard) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True},
    ] if card.arch not in native_targets() else []  # fmt: skip
    steps += [
        {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing",
         "orig_keys": "image", "nearest_interp": False, "to_tensor": True},
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
    ]  # fmt: skip
    values = card.label_values
    if values != list(range(len(values))):
        steps.append({"_target_": "MapLabelValued", "keys": "pred",
                      "orig_labels": list(range(len(values))), "target_labels": values})  # fmt: skip
    post = card.postprocess or {}
    if post.get("largest_region"):
        raise ExportError("the card's largest_region post-processing has no MONAI equivalent here")
    if post.get("largest_component"):
        steps.append({"_target_": "KeepLargestConnectedComponentd", "keys": "pred",
                      "applied_labels": [int(v) for v in post["largest_component"]],
                      "independent": True, "connectivity": 3})  # fmt: skip
    return steps


def inference_config(card: ModelCard) -> dict[str, Any]:
    """``configs/inference.json`` of the bundle of ``card``."""
    sw = card.sliding_window or {}
    return {
        "network_def": _network_def(card),
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image"},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                *bundle_transforms(card),
                {"_target_": "EnsureTyped", "keys": "image"},
            ],
        },
        "inferer": {
            "_target_": "SlidingWindowInferer",
            # a MONAI card's patch is in MONAI's (x, y, z) order, ours in (z, y, x): in
            # both, the order of the arrays the network sees
            "roi_size": list(card.patch_size),
            "sw_batch_size": 1,
            "overlap": float(sw.get("overlap", 0.5)),
            "mode": str(sw.get("mode", "gaussian")),
        },
        "postprocessing": {"_target_": "Compose", "transforms": _postprocessing(card)},
    }


def _metadata(card: ModelCard) -> dict[str, Any]:
    from napari_vnet import __version__

    native = card.arch in native_targets()
    name = card.arch_kwargs.get("name") if card.arch == "monai" else card.arch
    meta: dict[str, Any] = {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": "0.1.0",
        "name": card.source.get("name") or f"napari-vnet {name}",
        "description": card.description or f"{name} network exported by napari-vnet",
        "pytorch_version": torch.__version__.split("+")[0],
        "required_packages_version": {"napari-vnet": __version__} if native else {},
        "network_data_format": {
            "inputs": {"image": {"type": "image", "num_channels": card.in_channels}},
            "outputs": {
                "pred": {
                    "type": "image",
                    "num_channels": card.out_channels,
                    "channel_def": {str(i): c.name for i, c in enumerate(card.classes)},
                }
            },
        },
    }
    if native:
        meta[NATIVE_CARD_KEY] = card.to_dict()
    return meta


def export_monai_bundle(
    model: nn.Module, card: ModelCard, out: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """Write ``model`` (a MONAI network or one of napari-vnet's own) as a bundle folder
    MONAI's ``ConfigParser`` runs (see the module docstring); returns its path."""
    out = Path(out)
    inference, metadata = inference_config(card), _metadata(card)
    if card.arch in native_targets():
        from napari_vnet.models.outputs import Probabilities

        net: nn.Module = Probabilities(model)
    else:
        net = getattr(model, "net", model)
    check_target(out, overwrite, BUNDLE_LAYOUT)
    tmp = tmp_beside(out)
    try:
        (tmp / "configs").mkdir()
        (tmp / "models").mkdir()
        (tmp / "configs" / "inference.json").write_text(json.dumps(inference, indent=2))
        (tmp / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2))
        state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        torch.save(state, tmp / "models" / "model.pt")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return publish(tmp, out, overwrite, BUNDLE_LAYOUT)
