"""Other runtimes for the network inside the same sliding window: ONNX Runtime, OpenVINO.

``napari-vnet predict --backend onnxruntime`` (a ``"backend"`` setting of
:meth:`napari_vnet.workflows.segment.Segmenter.segment`) runs the loaded torch network
through another CPU runtime: :func:`runtime_model` converts it once to ONNX in memory
(:func:`napari_vnet.inference.backend_export.onnx_bytes`) and returns a
:class:`RuntimeModule`, an ``nn.Module`` the engine calls like the torch network (float32
tensor ``(B, C, *patch)`` in, logits tensor out). Everything else - preprocessing, window
positions, flips for test-time augmentation, Gaussian blending, the way back - stays
napari-vnet's, so the labels differ from the torch backend's only by float rounding.
From Python: ``predict(image, runtime_model(model, card, "onnxruntime", "cpu"), card,
device="cpu", amp=False)``, or :func:`for_backend` to set ``predict``'s keywords too.

* float32 only, on the CPU (a CUDA or MPS device is refused: use the torch backend there);
  OpenVINO is told ``INFERENCE_PRECISION_HINT=f32`` (it would pick bf16 on a CPU that
  has it);
* threads: the runtime is (re)built with torch's intra-op thread count at the time of
  the call, so the count :mod:`napari_vnet.workflows.threads` chose holds for both
  (ONNX Runtime ``intra_op_num_threads``, OpenVINO ``INFERENCE_NUM_THREADS``);
* the conversion is kept per network (weakly, and redone when its weights change), so a
  folder of scans converts once;
* a missing package says which extra installs it (``napari-vnet[onnx]``,
  ``napari-vnet[openvino]``).
"""

from __future__ import annotations

import importlib
import weakref
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_vnet.errors import NapariVnetError
from napari_vnet.models.card import ModelCard

__all__ = [
    "BACKENDS",
    "BackendError",
    "RuntimeModule",
    "backend_device",
    "check_backend",
    "for_backend",
    "runtime_model",
]

BACKENDS = ("torch", "onnxruntime", "openvino")
#: backend -> (the module it imports, the extra that installs it)
_PACKAGES = {"onnxruntime": ("onnxruntime", "onnx"), "openvino": ("openvino", "openvino")}


class BackendError(NapariVnetError, ValueError):
    """The asked backend cannot run here (unknown, not installed, not on this device)."""


def backend_device(backend: str, device: Any) -> Any:
    """The device to resolve for ``backend``: "auto" means the CPU for the CPU runtimes."""
    return "cpu" if backend != "torch" and device in (None, "auto") else device


def _import(backend: str) -> Any:
    module, extra = _PACKAGES[backend]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BackendError(
            f"the {backend} backend needs the {module!r} package, which is not installed "
            f"({exc}); install it with: pip install 'napari-vnet[{extra}]'"
        ) from None


def check_backend(backend: str, device: torch.device | None = None) -> None:
    """BackendError when ``backend`` is unknown, its package is missing, or ``device`` is
    not the CPU for a CPU runtime."""
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "torch":
        return
    if device is not None and torch.device(device).type != "cpu":
        raise BackendError(
            f"the {backend} backend runs on the CPU only, not on {device}; use --device cpu "
            "or the torch backend"
        )
    _import(backend)


class RuntimeModule(nn.Module):
    """An ONNX graph run by ONNX Runtime or OpenVINO, called like the torch network.

    The runtime is built on the first call, and again when torch's thread count changed
    since (it then uses the new count)."""

    def __init__(self, backend: str, onnx: bytes) -> None:
        super().__init__()
        check_backend(backend, None)
        self.backend = backend
        self.onnx = onnx
        #: the ONNX Runtime session or OpenVINO compiled model (None before the first call)
        self.runtime: Any = None
        self.threads = 0  # the intra-op threads it was built with

    def _build(self, threads: int) -> None:
        if self.backend == "onnxruntime":
            ort = _import("onnxruntime")
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            self.runtime = ort.InferenceSession(self.onnx, opts, providers=["CPUExecutionProvider"])
        else:
            ov = _import("openvino")
            core = ov.Core()
            config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
            self.runtime = core.compile_model(core.read_model(self.onnx), "CPU", config)
        self.threads = threads

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self.backend == "onnxruntime":
            session = self.runtime
            return session.run(None, {session.get_inputs()[0].name: x})[0]
        # share_outputs=False: a fresh array per call (the engine keeps one while it runs
        # the next flip)
        return self.runtime(x, share_inputs=True, share_outputs=False)[self.runtime.output(0)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        threads = torch.get_num_threads()
        if self.runtime is None or threads != self.threads:
            self._build(threads)
        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(np.asarray(self._run(arr), dtype=np.float32))


#: torch network -> (weights stamp, {backend: RuntimeModule})
_CONVERTED: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, dict[str, RuntimeModule]]] = (
    weakref.WeakKeyDictionary()
)


def _stamp(model: nn.Module) -> tuple:
    """Changes when a weight of ``model`` is replaced or changed in place."""
    return tuple((t.data_ptr(), t._version) for t in (*model.parameters(), *model.buffers()))


def runtime_model(model: nn.Module, card: ModelCard, backend: str, device: Any) -> nn.Module:
    """``model`` for ``backend`` on ``device``: itself for "torch" (or when it already is
    a :class:`RuntimeModule` of that backend), else its conversion (kept while the
    weights are unchanged). BackendError when the backend cannot run here."""
    check_backend(backend, device)
    if backend == "torch" or (isinstance(model, RuntimeModule) and model.backend == backend):
        return model
    if isinstance(model, RuntimeModule):
        raise BackendError(f"a {model.backend} model cannot run on the {backend} backend")
    from napari_vnet.inference.backend_export import onnx_bytes

    stamp = _stamp(model)
    known = _CONVERTED.get(model)
    if known is None or known[0] != stamp:
        known = (stamp, {})
        _CONVERTED[model] = known
    if backend not in known[1]:
        known[1][backend] = RuntimeModule(backend, onnx_bytes(model, card))
    return known[1][backend]


def for_backend(model: nn.Module, card: ModelCard, backend: str, settings: dict) -> nn.Module:
    """The network to give :func:`~napari_vnet.inference.predict` for ``backend``, with
    its keyword arguments ``settings`` set for it in place (a CPU runtime: ``device``
    "auto" -> "cpu", ``amp`` off); ``model`` itself for "torch"."""
    if backend == "torch":
        return model
    from napari_vnet.runtime import resolve_device

    settings["device"] = backend_device(backend, settings.get("device", "auto"))
    settings["amp"] = False
    return runtime_model(model, card, backend, resolve_device(settings["device"]))
