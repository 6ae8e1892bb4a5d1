"""Validation during training: the inference engine on held-out data, Dice from metrics."""

from __future__ import annotations

import numpy as np

from napari_vnet.inference.engine import sliding_window
from napari_vnet.inference.windows import pad_to_window
from napari_vnet.metrics import dice_per_class

__all__ = ["predict_channels", "validation_dice", "validation_region"]


def predict_channels(model, image: np.ndarray, patch, device, amp_dtype) -> np.ndarray:
    """Argmax channel map of a normalised ``(z, y, x)`` array by the inference engine,
    windows without overlap (an image smaller than the patch is padded as inference pads
    it, so validation sees the windows the model will see)."""
    shape = image.shape
    vol = pad_to_window(np.asarray(image, np.float32), patch)[None]
    n_classes = _out_channels(model)
    lut = np.arange(n_classes, dtype=np.uint8 if n_classes <= 256 else np.uint16)
    engine = sliding_window(
        vol, model, patch, lut, overlap=0.0, device=device, amp_dtype=amp_dtype,
        skip_uniform=False,
    )  # fmt: skip
    while True:
        try:
            next(engine)
        except StopIteration as end:
            labels = end.value.labels
            break
    return labels[: shape[0], : shape[1], : shape[2]]


def _out_channels(model) -> int:
    n = getattr(model, "out_channels", None)
    if n is None:
        n = getattr(getattr(model, "module", None), "out_channels", None)
    if n is None:
        raise ValueError("the model does not say its number of output channels")
    return int(n)


def validation_region(case, patch) -> tuple[int, int]:
    """The z range ``[lo, hi)`` that validation segments for ``case``: its annotated
    slices with half a window of context on each side, and at least one window of real
    slices where the case has them (a held-out slab at a case's end, cropped tight, would
    be padded with air: an input unlike the windows of a whole scan, on which the
    validation Dice of the real CT read 0.003 where the model scored 0.6)."""
    if case.mask is None:
        return 0, case.shape[0]
    zs = np.flatnonzero(case.mask.reshape(case.shape[0], -1).any(1))
    lo = max(int(zs[0]) - patch[0] // 2, 0)
    hi = min(int(zs[-1]) + 1 + patch[0] // 2, case.shape[0])
    short = patch[0] - (hi - lo)
    if short > 0:
        hi = min(hi + short, case.shape[0])
        lo = max(hi - patch[0], 0)
    return lo, hi


def validation_dice(model, cases, patch, device, amp_dtype, n_classes) -> float | None:
    """Mean foreground Dice over the annotated voxels of the validation cases, the voxels
    of all cases pooled per class (None when no class is present in either map)."""
    preds, refs = [], []
    for c in cases:
        lo, hi = validation_region(c, patch)
        pred = predict_channels(model, c.image[lo:hi], patch, device, amp_dtype)
        tgt = c.target[lo:hi]
        valid = c.mask[lo:hi] if c.mask is not None else np.ones(tgt.shape, bool)
        preds.append(pred[valid])
        refs.append(tgt[valid])
    pred, ref = np.concatenate(preds), np.concatenate(refs)
    present = [ch for ch in range(1, n_classes) if (pred == ch).any() or (ref == ch).any()]
    if not present:
        return None
    return float(np.mean(list(dice_per_class(pred, ref, present).values())))
