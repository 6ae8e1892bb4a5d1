"""Less work for the same labels: the fast class arg-max, nnU-Net's way back a few
slices at a time, nnU-Net's crop to the non-zero region, and no engine output that has
no way back to the input grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_vnet.inference import predict, prepare
from napari_vnet.inference.predict import _wanted
from napari_vnet.models.card import ClassInfo, ModelCard
from napari_vnet.phantoms import make_phantom
from napari_vnet.runtime import class_argmax
from test_foreign_nnunet import FOLDER as NNUNET  # the tiny nnU-Net folder

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # fixture in conftest.py


@pytest.mark.parametrize("kind", ["normal", "ties", "nan"])
def test_class_argmax_gives_torch_argmax_indices(kind):
    """Same indices as torch.argmax (ties: the first; NaN: the first NaN), also along a
    middle axis and on a slab view that is not contiguous (as the stitcher holds it)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 9, 17, 23, generator=g)
    if kind == "ties":
        x = torch.randint(0, 3, x.shape, generator=g).float()  # most voxels tie
    elif kind == "nan":
        x.view(-1)[::13] = float("nan")
    for t in (x, x[:4, :5], x.transpose(0, 1)):
        for dim in (0, 1):
            assert torch.equal(class_argmax(t, dim), torch.argmax(t, dim=dim)), (dim, t.shape)


def _resample_argmax_whole(scores: np.ndarray, shape) -> np.ndarray:
    """The way back computed on the whole volume at once: every plane bilinear, then
    linear along z (the reference the slice-by-slice version must match bit for bit)."""
    import torch.nn.functional as F

    d, depth = scores.shape[1], shape[0]
    x = torch.from_numpy(scores).transpose(0, 1)
    x = F.interpolate(x, size=tuple(shape[1:]), mode="bilinear", align_corners=False)
    src = ((np.arange(depth) + 0.5) * (d / depth) - 0.5).clip(0, d - 1)
    lo = np.floor(src).astype(np.int64)
    w = torch.from_numpy((src - lo).astype(np.float32)).view(-1, 1, 1, 1)
    hi = np.minimum(lo + 1, d - 1)
    out = x[torch.from_numpy(lo)] * (1 - w) + x[torch.from_numpy(hi)] * w
    return torch.argmax(out, dim=1).numpy().astype(np.uint16)


@pytest.mark.parametrize(
    ("net", "out"),
    [((5, 11, 13), (17, 40, 37)), ((19, 12, 12), (7, 30, 25)), ((4, 8, 9), (4, 8, 9))],
)
def test_nnunet_way_back_slice_by_slice_matches_the_whole_volume(net, out):
    from napari_vnet.foreign.nnunet_preprocessing import linear_resample_argmax

    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=(4, *net)) * 2).astype(np.float32)  # with ties
    labels = linear_resample_argmax(scores, out)
    assert labels.shape == out and len(np.unique(labels)) == 4
    np.testing.assert_array_equal(labels, _resample_argmax_whole(scores, out))


def test_nnunet_computes_nothing_outside_the_non_zero_region():
    """As nnU-Net: the image is cropped to its non-zero box before anything else, so a
    zero frame around a scan adds no window and changes no label inside it."""
    from napari_vnet.weights import load_weights

    image, _, _ = make_phantom(7, shape=(24, 48, 48))  # air is -1000 HU: non-zero
    framed = np.pad(image.array, 6)  # a zero frame, e.g. outside a reconstruction circle
    model, card = load_weights(NNUNET)
    kw = dict(spacing=image.spacing, device="cpu", amp=False, tta=False)
    plain = predict(image.array, model, card, **kw)
    boxed = predict(framed, model, card, **kw)
    assert boxed.stats["model_grid_shape"] == plain.stats["model_grid_shape"]
    assert boxed.windows == plain.windows
    inner = (slice(6, -6),) * 3
    assert (plain.labels > 0).sum() > 500
    np.testing.assert_array_equal(boxed.labels[inner], plain.labels)
    boxed.labels[inner] = 0
    assert not boxed.labels.any()  # the frame is background


def test_no_engine_output_without_a_way_back():
    """Probabilities and the uncertainty map are computed only when the way back to the
    input grid carries them: never probabilities for an nnU-Net folder, and no map when
    its way back resamples the logits; napari-vnet's own cards carry both."""
    from napari_vnet.weights import read_weights_card

    card = read_weights_card(NNUNET)
    image, _, _ = make_phantom(9, shape=(10, 40, 44), spacing=(20.0, 4.0, 4.0))
    thick = prepare(image, card)  # 20 mm slices: resampled, and back from the logits
    assert thick.pre.needs_scores(thick.ctx)
    want = {"return_probabilities": False, "return_uncertainty": False}
    assert _wanted(thick.pre, thick.ctx, True, True) == want
    plan = prepare(image.array, card, spacing=None)  # at the plan's spacing: no resampling
    assert not plan.pre.needs_scores(plan.ctx)
    want = {"return_probabilities": False, "return_uncertainty": True}
    assert _wanted(plan.pre, plan.ctx, True, True) == want
    own = ModelCard(arch="tiny", classes=[ClassInfo(0, "background"), ClassInfo(1, "a")],
                    patch_size=(8, 8, 8), spacing=(2.0, 2.0, 2.0))  # fmt: skip
    ours = prepare(image.array, own, spacing=(1.0, 1.0, 1.0))
    want = {"return_probabilities": True, "return_uncertainty": True}
    assert _wanted(ours.pre, ours.ctx, True, True) == want
