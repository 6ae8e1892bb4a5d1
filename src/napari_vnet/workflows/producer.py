"""Run settings by default: the producer's own for foreign weights.

An nnU-Net v2 folder runs by default as ``nnUNetv2_predict`` runs it: mirrored over the
checkpoint's allowed mirroring axes (``inference_allowed_mirroring_axes``, all three by
default: 8 passes a window), with autocast on CUDA only (``nnUNetPredictor`` enters
``torch.autocast`` only for a CUDA device, i.e. float16) and plain float32 on a CPU or
an Apple GPU. A MONAI bundle runs without flips, with autocast on CUDA only when its
evaluator says ``amp`` (MONAI's evaluators autocast on CUDA only). napari-vnet's own
weights (and foreign ones fine-tuned here) keep napari-vnet's defaults: no flips, mixed
precision where fast (:func:`napari_vnet.runtime.resolve_amp`).

Both faces call :func:`run_defaults`: ``predict`` with ``--tta``/``--disable-tta``/``--fast``
/``--no-amp``, the Segment dock when weights are chosen (and it shows
:meth:`ProducerDefaults.describe`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ProducerDefaults", "producer_defaults", "run_defaults"]


@dataclass(frozen=True)
class ProducerDefaults:
    """How the weights' producer runs them: ``tta`` (mirroring), ``amp`` (False: float32,
    or "fp16"), ``passes`` (forward passes a window with mirroring)."""

    producer: str
    tta: bool
    amp: Any
    passes: int = 1

    def describe(self) -> str:
        """E.g. "nnU-Net default: mirroring on (8x slower), float32"."""
        mirror = f"mirroring on ({self.passes}x slower)" if self.tta else "mirroring off"
        precision = "float16 autocast" if self.amp else "float32"
        return f"{self.producer} default: {mirror}, {precision}"


def _device_type(device: Any) -> str:
    from napari_vnet.runtime import resolve_device

    try:
        return resolve_device(device).type
    except ValueError:  # an unusable device name is refused by predict itself
        return "cpu"


def producer_defaults(card, device: Any = "auto") -> ProducerDefaults | None:
    """The producer's own settings for ``card`` run on ``device``; None for napari-vnet's
    own weights and for foreign weights fine-tuned here."""
    source = card.source or {}
    if source.get("fine_tuned"):
        return None
    fmt = source.get("format")
    if fmt == "nnunet":
        axes = list((card.sliding_window or {}).get("mirror_axes") or [])
        cuda = _device_type(device) == "cuda"
        return ProducerDefaults("nnU-Net", bool(axes), "fp16" if cuda else False, 2 ** len(axes))
    if fmt == "monai_bundle":
        amp = "fp16" if source.get("amp") and _device_type(device) == "cuda" else False
        return ProducerDefaults("MONAI bundle", False, amp)
    return None


def run_defaults(
    card, device: Any = "auto", *, tta: bool | None = None, amp: Any = None, fast: bool = False
) -> dict[str, Any]:
    """``{"tta", "amp"}`` for a run: what is given, else the producer's default
    (:func:`producer_defaults`), else napari-vnet's (no flips, ``amp="auto"``). ``fast``:
    napari-vnet's fast defaults whatever the producer does (given values still win)."""
    own = None if fast else producer_defaults(card, device)
    return {
        "tta": tta if tta is not None else (own.tta if own else False),
        "amp": amp if amp is not None else (own.amp if own else "auto"),
    }
