"""A network as a runtime model: ONNX or TorchScript, with its model card beside it as JSON.

* :func:`onnx_bytes` converts a loaded network to an ONNX graph in memory (the
  ``onnxruntime`` and ``openvino`` backends of :mod:`napari_vnet.inference.backends` run
  it); :func:`torchscript_module` traces it for TorchScript.
* :func:`export_runtime` writes either into a folder ``OUT``: ``OUT/model.onnx`` (or
  ``OUT/model.ts``, TorchScript) and ``OUT/model.json``, the card's preprocessing, classes,
  patch size, spacing and window style (:func:`runtime_card`): what another program needs
  to reproduce napari-vnet's result with the model file.

The graph takes one float32 input ``image`` of shape ``(batch, C, *patch)`` and returns
``logits`` ``(batch, classes, *patch)``; the batch axis is dynamic, the spatial size is the
card's patch (the sliding window feeds nothing else). An nnU-Net ensemble of folds is one
graph that averages its members' logits, as napari-vnet and nnU-Net run it.

ONNX: torch's TorchScript-based exporter is tried first (every shipped network, nnU-Net's
and MONAI's networks export with it, 2-10x faster than the ``torch.export`` one here);
when it fails (or a later torch drops it), the ``torch.export``-based exporter (needs
``onnxscript``). The folder is written beside OUT and renamed into place
(:mod:`napari_vnet.foreign.export_paths`), so a failed export leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from napari_vnet.foreign.export_paths import ExportError, check_target, publish, tmp_beside
from napari_vnet.foreign.networks import ensemble_members
from napari_vnet.inference.preprocess import blend_for
from napari_vnet.inference.windows import GAUSSIAN_MIN, GAUSSIAN_SIGMA_SCALE
from napari_vnet.models.card import ModelCard

__all__ = [
    "MODEL_FILES",
    "RUNTIME_FORMATS",
    "export_runtime",
    "onnx_bytes",
    "runtime_card",
    "torchscript_module",
]

RUNTIME_FORMATS = ("onnx", "torchscript")
#: the model file of each format inside OUT (the card is ``model.json`` beside it)
MODEL_FILES = {"onnx": "model.onnx", "torchscript": "model.ts"}
CARD_FILE = "model.json"
#: what a runtime export writes (an earlier one of either format may be overwritten)
RUNTIME_LAYOUT = re.compile(r"model\.(onnx|ts|json)")
INPUT_NAME, OUTPUT_NAME = "image", "logits"
ONNX_OPSET = 17
EXPORT_BATCH = 2  # the batch of the traced example (the batch axis stays dynamic)
EXPORTERS = ("auto", "legacy", "dynamo")


def example_input(card: ModelCard, batch: int = EXPORT_BATCH) -> torch.Tensor:
    """A float32 ``(batch, C, *patch)`` input of the card's patch size (fixed values)."""
    gen = torch.Generator().manual_seed(0)
    shape = (batch, int(card.in_channels), *(int(p) for p in card.patch_size))
    return torch.randn(shape, generator=gen)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence what tracing a network with a fixed patch says (shape checks turned into
    constants are expected) and torch's notes on its deprecated tracers."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*instance_norm.*", category=UserWarning)
            yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _for_tracing(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode, contiguous memory format, no autograd; its mode restored."""
    was_training = model.training
    model.eval()
    model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    try:
        with torch.no_grad(), _quiet():
            yield model
    finally:
        model.train(was_training)


def _legacy_onnx(model: nn.Module, x: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    torch.onnx.export(
        model,
        (x,),
        buf,  # type: ignore[arg-type]  # the TorchScript-based exporter writes to a file object
        dynamo=False,
        opset_version=ONNX_OPSET,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
    )
    return buf.getvalue()


def _dynamo_onnx(model: nn.Module, x: torch.Tensor) -> bytes:
    program = torch.onnx.export(
        model,
        (x,),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        verbose=False,
    )
    if program is None:  # pragma: no cover - dynamo=True always returns the program
        raise ExportError("torch.onnx.export returned no program")
    return program.model_proto.SerializeToString()


def onnx_bytes(model: nn.Module, card: ModelCard, *, exporter: str = "auto") -> bytes:
    """``model`` (on the CPU) as a serialised ONNX graph (see the module text);
    ``exporter``: "auto" (TorchScript-based, else ``torch.export``-based), "legacy" or
    "dynamo". ExportError saying why when no exporter converts it."""
    if exporter not in EXPORTERS:
        raise ExportError(f"unknown ONNX exporter {exporter!r}; expected one of {EXPORTERS}")
    order = {
        "auto": (_legacy_onnx, _dynamo_onnx),
        "legacy": (_legacy_onnx,),
        "dynamo": (_dynamo_onnx,),
    }[exporter]
    problems = []
    with _for_tracing(model):
        for convert in order:
            try:
                return convert(model, example_input(card))
            except Exception as exc:  # noqa: BLE001 - said below, then the next exporter
                problems.append(f"{convert.__name__.strip('_')}: {type(exc).__name__}: {exc}")
    raise ExportError(
        f"the {card.arch!r} network cannot be converted to ONNX ({'; '.join(problems)})"
    )


def torchscript_module(model: nn.Module, card: ModelCard) -> torch.jit.ScriptModule:
    """``model`` traced with a ``(2, C, *patch)`` example (TorchScript)."""
    with _for_tracing(model):
        try:
            return torch.jit.trace(model, example_input(card), check_trace=False)
        except Exception as exc:  # noqa: BLE001 - any tracing failure, said
            raise ExportError(
                f"the {card.arch!r} network cannot be traced for TorchScript "
                f"({type(exc).__name__}: {exc})"
            ) from exc


def _steps(card: ModelCard, window: dict[str, Any]) -> list[str]:
    """What napari-vnet does around the network, in words (the fields say it exactly)."""
    pre = card.preprocessing or {}
    if pre.get("kind") not in (None, "array_order"):
        first = [
            f"the producer's preprocessing: 'preprocessing' ({pre.get('kind')}) says "
            "how (axis order, normalisation, resampling)"
        ]
    else:
        first = [
            "NaN/infinite voxels replaced by the smallest finite value",
            f"intensities normalised as 'normalization' says ({card.normalization.get('kind')})",
            "resampled (linear) to 'spacing' (z, y, x mm) when the image's spacing differs",
        ]
        if pre.get("kind") == "array_order":
            first.append(f"array axes reordered to {pre.get('axes')} for the network")
    patch = "x".join(str(int(p)) for p in card.patch_size)
    return [
        *first,
        "padded at the high end with the image minimum to at least one patch",
        f"windows of {patch} voxels, overlap {window['overlap']} ({window['steps']} steps), "
        f"batched along the dynamic batch axis",
        f"each window's {window['blend']} weighted by a Gaussian (sigma = patch x "
        f"{GAUSSIAN_SIGMA_SCALE}, floor {GAUSSIAN_MIN}) and summed",
        "argmax over the channels -> 'classes' value of that channel",
        "labels resampled (nearest) back to the input grid when resampled",
    ]


def runtime_card(card: ModelCard, fmt: str, model: nn.Module | None = None) -> dict[str, Any]:
    """The JSON written beside an exported model: its input/output, the classes and
    everything napari-vnet does around the network (with the full model card)."""
    from napari_vnet import __version__

    n_members = 1 if model is None else len(ensemble_members(model))
    inference = card.history.get("inference", {}) if isinstance(card.history, dict) else {}
    style = dict(card.sliding_window or {})
    window = {
        "overlap": float((inference or {}).get("overlap", 0.5)),
        "steps": str(style.get("steps", "fixed")),
        "blend": blend_for(card),
        "center": str(style.get("center", "mid")),
        "mode": str(style.get("mode", "gaussian")),
        "sigma_scale": GAUSSIAN_SIGMA_SCALE,
        "gaussian_min": GAUSSIAN_MIN,
        "mirror_axes": style.get("mirror_axes"),
    }
    patch = [int(p) for p in card.patch_size]
    return {
        "format": fmt,
        "model_file": MODEL_FILES[fmt],
        "written_by": f"napari-vnet {__version__}",
        "input": {
            "name": INPUT_NAME,
            "dtype": "float32",
            "shape": ["batch", int(card.in_channels), *patch],
            "axes": "batch, channel, then the image array's own axes (z, y, x: "
            "slices first, as SimpleITK's GetArrayFromImage gives them)",
        },
        "output": {
            "name": OUTPUT_NAME,
            "dtype": "float32",
            "shape": ["batch", len(card.classes), *patch],
            "meaning": "logits, one channel per entry of 'classes'",
        },
        "classes": [
            {"channel": i, "value": int(c.value), "name": c.name}
            for i, c in enumerate(card.classes)
        ],
        "patch_size": patch,
        "spacing": None if card.spacing is None else [float(s) for s in card.spacing],
        "normalization": dict(card.normalization),
        "preprocessing": dict(card.preprocessing or {}),
        "sliding_window": window,
        "postprocess": dict(card.postprocess or {}),
        "ensemble": {
            "members": n_members,
            "how": "the graph averages the members' logits" if n_members > 1 else "one network",
        },
        "steps": _steps(card, window),
        "model_card": card.to_dict(),
    }


def export_runtime(
    model: nn.Module,
    card: ModelCard,
    out: str | os.PathLike,
    fmt: str,
    *,
    overwrite: bool = False,
    exporter: str = "auto",
) -> tuple[Path, Path]:
    """Write ``model`` as ``OUT/model.onnx`` or ``OUT/model.ts`` (``fmt`` "onnx" or
    "torchscript") with ``OUT/model.json`` (:func:`runtime_card`); returns the paths of
    the two files. An existing OUT is replaced only with ``overwrite`` and only when it
    holds nothing but an earlier export's files."""
    if fmt not in RUNTIME_FORMATS:
        raise ExportError(f"unknown format {fmt!r}; expected one of {RUNTIME_FORMATS}")
    out = Path(out)
    check_target(out, overwrite, RUNTIME_LAYOUT)
    if fmt == "onnx":
        data = onnx_bytes(model, card, exporter=exporter)
    else:
        traced = torchscript_module(model, card)
    tmp = tmp_beside(out)
    try:
        target = tmp / MODEL_FILES[fmt]
        if fmt == "onnx":
            target.write_bytes(data)
        else:
            with _quiet():
                torch.jit.save(traced, str(target))
        (tmp / CARD_FILE).write_text(json.dumps(runtime_card(card, fmt, model), indent=2))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish(tmp, out, overwrite, RUNTIME_LAYOUT)
    return out / MODEL_FILES[fmt], out / CARD_FILE
