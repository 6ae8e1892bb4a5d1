"""Fine-tuning nnU-Net v2 folders: training sees a case in the layout prediction sees."""

from __future__ import annotations

from pathlib import Path

import nnunetv2  # noqa: F401  (installed by scripts/setup.sh)
import numpy as np

from napari_vnet.foreign import preprocessing_for
from napari_vnet.phantoms import make_phantom
from napari_vnet.weights import load_weights

FOLDER = (
    Path(__file__).parent
    / "data/nnunet/Dataset901_TinyPhantom/nnUNetTrainer__nnUNetPlans__3d_fullres"
)


def test_thin_training_case_is_padded_as_prediction_pads_it():
    """A case thinner than the window at the plan's spacing (a few CT slices) is padded
    for training exactly as for prediction (zeros split evenly on both sides), and the
    padding carries no annotation; another padding makes the fine-tuned network fail at
    prediction, because instance normalisation sees the padding."""
    _, card = load_weights(FOLDER)
    pre = preprocessing_for(card)
    # 24 slices of 2 mm: about 6 slices at the plan's 8.2 mm, the window has 16
    image, labels, _ = make_phantom(3, shape=(24, 48, 48), spacing=(2.0, 4.5, 4.5))
    spacing = image.spacing
    lab = np.zeros(labels.array.shape, np.uint8)
    lab[labels.array == 1] = 1
    annotated = np.zeros(lab.shape, bool)
    annotated[4:20] = True
    img = image.array.astype(np.float32)

    net_input, ctx = pre.preprocess(img[None], spacing)
    data, seg, mask = pre.prepare_training(img, lab, annotated, spacing)
    assert ctx.network_shape[0] < pre.patch_size[0]  # the case is thinner than the window
    assert data.shape == net_input.shape[1:] == seg.shape == mask.shape
    assert np.array_equal(data, net_input[0])  # same values, same place
    z0, n = ctx.pad_before[0], ctx.network_shape[0]
    assert z0 > 0
    pad = np.ones(data.shape[0], bool)
    pad[z0 : z0 + n] = False
    assert not mask[pad].any() and not seg[pad].any() and not data[pad].any()
    assert mask[~pad].any() and (seg[~pad] == 1).any()

    # without an annotated mask the real slices are annotated and the padding is not
    _, seg2, mask2 = pre.prepare_training(img, lab, None, spacing)
    assert mask2 is not None and mask2[~pad].all() and not mask2[pad].any()
    assert np.array_equal(seg2[pad], np.zeros_like(seg2[pad]))
