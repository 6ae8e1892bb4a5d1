"""Uncertainty (napari_vnet.correct.uncertainty and predict(return_uncertainty=True)):
entropy values, the map from the engine against the one from full probabilities (also
through resampling and axis order), per-slice scores and the review queue."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from napari_vnet.correct import SliceQueue, entropy_map, slice_scores
from napari_vnet.inference import predict
from napari_vnet.models.card import ClassInfo, ModelCard

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def card(patch=(8, 8, 8), spacing=(1.0, 1.0, 1.0), **kw):
    classes = [ClassInfo(0, "background"), ClassInfo(1, "a"), ClassInfo(4, "b")]
    return ModelCard(arch="tiny", classes=classes, patch_size=patch, spacing=spacing,
                     normalization={"kind": "none"}, **kw)  # fmt: skip


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(3)
        self.a = nn.Conv3d(1, 3, 3, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))

    def forward(self, x):
        return self.a(x)


def test_entropy_map_values():
    p = np.zeros((3, 1, 1, 4), np.float16)
    p[0, 0, 0, 0] = 1.0  # certain
    p[:, 0, 0, 1] = 1 / 3  # uniform
    p[:2, 0, 0, 2] = 0.5  # two of three classes
    p[0, 0, 0, 3] = 1.0
    u = entropy_map(p)
    assert u.dtype == np.uint8
    assert u[0, 0].tolist() == [0, 255, round(255 * math.log(2) / math.log(3)), 0]
    assert entropy_map(np.ones((1, 2, 2, 2))).max() == 0  # one class: no uncertainty
    with pytest.raises(ValueError, match="C, z, y, x"):
        entropy_map(np.ones((2, 2, 2)))


@pytest.mark.parametrize(
    "spacing, extra",
    [((1.0, 1.0, 1.0), {}), ((1.5, 1.0, 0.8), {}),
     ((1.0, 1.0, 1.0), {"preprocessing": {"kind": "array_order", "axes": [2, 1, 0]}})],
)  # fmt: skip
def test_predict_uncertainty_matches_full_probabilities(spacing, extra):
    rng = np.random.default_rng(0)
    image = (8 * ndimage.gaussian_filter(rng.normal(size=(11, 13, 10)), 2)).astype(np.float32)
    c = card(**extra)
    net = Net()
    full = predict(image, net, c, spacing=spacing, device="cpu", amp=False,
                   return_probabilities=True)  # fmt: skip
    light = predict(image, net, c, spacing=spacing, device="cpu", amp=False,
                    return_uncertainty=True)  # fmt: skip
    assert light.probabilities is None and full.uncertainty is None
    assert light.uncertainty.shape == image.shape and light.uncertainty.dtype == np.uint8
    assert np.array_equal(light.labels, full.labels)
    expect = entropy_map(full.probabilities).astype(int)
    diff = np.abs(light.uncertainty.astype(int) - expect)
    if spacing == (1.0, 1.0, 1.0):
        assert diff.max() <= 1  # float16 probabilities vs float32 in the engine
    else:  # resampled: the map itself (linear), not the probabilities: close, not equal
        assert diff.mean() < 15
        r = np.corrcoef(light.uncertainty.ravel().astype(float), expect.ravel())[0, 1]
        assert r > 0.9
    assert light.uncertainty.max() > 50  # a random net is unsure somewhere


def test_slice_scores_and_queue_skip_reviewed():
    u = np.zeros((6, 4, 4), np.uint8)
    for z, v in enumerate([10, 200, 0, 120, 120, 50]):
        u[z] = v
    scores = slice_scores(u)
    assert scores == pytest.approx(np.array([10, 200, 0, 120, 120, 50]) / 255)
    assert slice_scores(u, axis=1).shape == (4,)
    q = SliceQueue(scores)
    assert q.ranking() == [1, 3, 4, 5, 0]  # slice 2 is certain: never proposed
    assert q.next() == 1
    assert q.next(reviewed={1}) == 3  # the user edited slice 1
    assert q.next(reviewed={1, 4}) == 5  # 4 was reviewed meanwhile
    assert q.previous(reviewed={1, 4}) == 3  # back, skipping the reviewed 1
    assert q.previous(reviewed={1, 4}) is None
    assert q.next(reviewed={1, 4}) == 5  # forward again through the visited ones
    assert q.next(reviewed={1, 4}) == 0
    assert q.next(reviewed={1, 4}) == 3  # all visited: a new round from the top
    assert q.remaining({1, 4}) == 3
    assert q.next(reviewed={0, 1, 3, 4, 5}) is None
