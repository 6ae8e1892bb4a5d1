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

from napari_vnet.correct import SliceQueue, entropy_map, scan_score, slice_scores
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


def test_scan_score_is_the_mean_uncertainty_in_the_foreground_box():
    """From probabilities: the entropy map, then the mean inside the predicted foreground's
    bounding box (background far away, certain, does not dilute it)."""
    probs = np.zeros((2, 6, 20, 20), np.float32)
    probs[0] = 1.0  # certain background everywhere ...
    probs[:, 2:4, 5:10, 5:10] = 0.5  # ... but a box where both classes are equally likely
    probs[:, 2:4, 5:10, 5] = [[[0.1]], [[0.9]]]  # its first column: fairly sure of class 1
    labels = probs.argmax(0).astype(np.uint8)
    u = entropy_map(probs)
    box = (slice(2, 4), slice(5, 10), slice(5, 6))
    assert labels[box].all() and labels.sum() == labels[box].size  # the foreground's box
    expected = u[box].mean() / 255
    assert scan_score(u, labels) == pytest.approx(expected)
    assert 0.4 < expected < 0.5  # entropy of (0.1, 0.9) / log 2 = 0.469
    # no foreground: the whole volume's mean; without labels too
    assert scan_score(u, np.zeros_like(labels)) == pytest.approx(u.mean() / 255)
    assert scan_score(u) == pytest.approx(u.mean() / 255)
    # a wider uncertain region in the box makes the scan less certain
    more = probs.copy()
    more[:, 2:4, 5:10, 5:8] = 0.5
    more[1, 2:4, 5:10, 5:8] += 1e-3  # argmax: class 1 there (the same box)
    assert scan_score(entropy_map(more), more.argmax(0)) > scan_score(u, labels)
    assert scan_score(np.zeros((3, 4, 4), np.uint8), np.ones((3, 4, 4))) == 0.0
    with pytest.raises(ValueError, match="differ"):
        scan_score(u, labels[:3])
    with pytest.raises(ValueError, match="3-D"):
        scan_score(u[0])


def test_predict_with_uncertainty_gives_the_scan_score():
    """The Segment workflow's outcome carries the scan score (cheap: from the uint8 map
    the engine computes slab by slab), and the result layer's record holds it."""
    from napari_vnet.workflows.segment import JobDone, Segmenter, result_info

    img = np.random.default_rng(0).normal(0, 1, (10, 12, 12)).astype(np.float32)
    seg = Segmenter(Net(), card())
    done = seg.segment(img, name="x", spacing=(1.0, 1.0, 1.0),
                       settings={"device": "cpu", "return_uncertainty": True})  # fmt: skip
    assert isinstance(done, JobDone) and done.uncertainty is not None
    assert done.uncertainty_score == pytest.approx(scan_score(done.uncertainty, done.labels))
    assert 0.0 < done.uncertainty_score < 1.0
    info = result_info(card(), "tiny", "w.pt", {}, (1.0, 1.0, 1.0), done)
    assert info["uncertainty_score"] == pytest.approx(done.uncertainty_score, abs=1e-5)
    plain = seg.segment(img, name="x", spacing=(1.0, 1.0, 1.0), settings={"device": "cpu"})
    assert plain.uncertainty_score is None
    assert np.array_equal(plain.labels, done.labels)  # the map changes no label
    assert "uncertainty_score" not in result_info(card(), "tiny", "w", {}, None, plain)
