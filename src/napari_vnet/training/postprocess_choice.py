"""Post-processing chosen on validation data, as nnU-Net v2 chooses it (no Qt).

After training, the best model segments the validation cases; for each class, keeping
only its largest connected component (:func:`napari_vnet.inference.postprocess.keep_largest_component`,
scipy.ndimage, 26-connectivity) is adopted when it raises that class's validation Dice
(nnU-Net's ``determine_postprocessing``, per class). The choice is recorded in the model
card (``postprocess``) and :func:`napari_vnet.inference.predict` applies it.
"""

from __future__ import annotations

import logging

import numpy as np

from napari_vnet.inference.postprocess import keep_largest_component
from napari_vnet.metrics import dice_per_class
from napari_vnet.training.validation import predict_channels, validation_region

log = logging.getLogger(__name__)

__all__ = ["choose_postprocess"]

#: a class's Dice must rise by at least this much for the operation to be adopted
MIN_GAIN = 1e-4


def choose_postprocess(model, cases, patch, device, amp_dtype, classes) -> dict:
    """``{"largest_component": [label values], "validation_dice": {...}}`` for ``model``
    on the validation ``cases`` (channel-index targets, masks); empty classes list when
    nothing helps."""
    n = len(classes)
    preds, refs, valids = [], [], []
    for c in cases:
        lo, hi = validation_region(c, patch)
        preds.append(predict_channels(model, c.image[lo:hi], patch, device, amp_dtype))
        refs.append(c.target[lo:hi])
        valids.append(c.mask[lo:hi] if c.mask is not None else np.ones(refs[-1].shape, bool))

    def dice(maps) -> dict[int, float]:
        p = np.concatenate([m[v] for m, v in zip(maps, valids, strict=True)])
        r = np.concatenate([m[v] for m, v in zip(refs, valids, strict=True)])
        present = [ch for ch in range(1, n) if (p == ch).any() or (r == ch).any()]
        return dice_per_class(p, r, present) if present else {}

    before = dice(preds)
    chosen, after_all = [], dict(before)
    for ch in range(1, n):
        if ch not in before:
            continue
        cleaned = [keep_largest_component(p.copy(), [ch]) for p in preds]
        d = dice(cleaned).get(ch)
        if d is not None and d > before[ch] + MIN_GAIN:
            chosen.append(ch)
            after_all[ch] = d
    values = [int(classes[ch].value) for ch in chosen]
    result = {
        "largest_component": values,
        "chosen_on": "validation",
        "validation_dice": {
            str(classes[ch].value): {
                "without": round(float(before[ch]), 4),
                "with_largest_component": round(float(after_all[ch]), 4) if ch in chosen else None,
            }
            for ch in before
        },
    }
    log.info("post-processing chosen on validation: largest component for %s", values or "none")
    return result
