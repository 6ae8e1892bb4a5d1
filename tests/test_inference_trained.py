"""A tiny V-Net trained in the test on a trivially separable volume: the engine's labels
must agree with the truth, and with themselves across AMP (bf16) and flip TTA.

Stated tolerance: >= 99% voxel agreement between plain fp32, bf16 autocast and 8-flip TTA
(differences can only sit on the object's boundary, where probabilities are near 0.5).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_vnet.inference import predict
from napari_vnet.models import ClassInfo, ModelCard, build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # fixture in conftest.py


def make_case(seed, shape=(24, 32, 28)):
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    center = [n / 2 + rng.uniform(-3, 3) for n in shape]
    radii = [rng.uniform(5, 8) for _ in shape]
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, center, radii, strict=True)) <= 1
    image = 100.0 + 40.0 * inside + rng.normal(0, 6, size=shape)
    labels = np.where(inside, 5, 0).astype(np.uint8)
    return image.astype(np.float32), labels


@pytest.fixture(scope="module")
def trained():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures start before the function-scoped one
    torch.manual_seed(0)
    card = ModelCard(
        arch="vnet",
        arch_kwargs={"channels": [4, 8], "kernel_size": 3},
        classes=[ClassInfo(0, "background"), ClassInfo(5, "liver")],
        normalization={"kind": "zscore"},
        spacing=(1.0, 1.0, 1.0),
        patch_size=(16, 16, 16),
    )
    model = build_model(card)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    image, labels = make_case(0)
    x = torch.from_numpy((image - image.mean()) / image.std())[None, None]
    y = torch.from_numpy((labels == 5).astype(np.int64))[None]
    rng = np.random.default_rng(1)
    for _ in range(40):
        z, r, c = (int(rng.integers(0, n - 16 + 1)) for n in image.shape)
        xs = x[..., z : z + 16, r : r + 16, c : c + 16]
        ys = y[..., z : z + 16, r : r + 16, c : c + 16]
        loss = torch.nn.functional.cross_entropy(model(xs), ys)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(before)
    return model.eval(), card


def dice(a, b):
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_trained_model_agrees_across_amp_and_tta(trained):
    model, card = trained
    image, truth = make_case(7)
    kw = dict(spacing=(1, 1, 1), overlap=0.5, batch_size=2)
    plain = predict(image, model, card, amp=False, **kw)
    bf16 = predict(image, model, card, amp="bf16", **kw)
    tta = predict(image, model, card, amp=False, tta=True, **kw)
    assert plain.amp is None and bf16.amp == "bf16" and tta.stats["tta_passes"] == 8
    assert dice(plain.labels == 5, truth == 5) > 0.9
    assert dice(tta.labels == 5, truth == 5) > 0.9
    assert np.mean(plain.labels == bf16.labels) >= 0.99
    assert np.mean(plain.labels == tta.labels) >= 0.99
    assert set(np.unique(plain.labels)) == {0, 5}


def test_trained_model_on_another_spacing(trained):
    """Same anatomy sampled at 2 x 1 x 1 mm: resampled to the card's 1 mm and back."""
    model, card = trained
    image, truth = make_case(11)
    coarse_img, coarse_truth = image[::2], truth[::2]
    pred = predict(coarse_img, model, card, spacing=(2.0, 1.0, 1.0), amp=False)
    assert pred.stats["resampled"] and pred.labels.shape == coarse_img.shape
    assert dice(pred.labels == 5, coarse_truth == 5) > 0.85
