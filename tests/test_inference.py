"""The sliding-window engine: geometry, stitching against a direct reference, resampling,
cancellation, progress, non-finite input, OOM retry, device/AMP policy."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from torch import nn

from napari_vnet.inference import (
    InferenceMemoryError,
    Prediction,
    PredictionCancelled,
    importance_map,
    predict,
    resolve_amp,
    resolve_device,
    sliding_window_starts,
)
from napari_vnet.io.volume import Volume
from napari_vnet.models.card import ClassInfo, ModelCard

CLASSES = [ClassInfo(0, "background"), ClassInfo(5, "liver"), ClassInfo(7, "tumour")]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # fixture in conftest.py


def make_card(patch=(16, 16, 16), spacing=(1.0, 1.0, 1.0), classes=CLASSES, norm=None):
    return ModelCard(
        arch="tiny",
        classes=list(classes),
        patch_size=patch,
        spacing=spacing,
        normalization=norm or {"kind": "none"},
    )


class TinyNet(nn.Module):
    """Two 3x3x3 convolutions: position-dependent near window borders (zero padding),
    so a stitching error shows."""

    def __init__(self, n_classes=3, width=4, seed=0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.a = nn.Conv3d(1, width, 3, padding=1)
        self.b = nn.Conv3d(width, n_classes, 3, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.7)
        self.calls = 0
        self.batch_sizes: list[int] = []

    def forward(self, x):
        self.calls += 1
        self.batch_sizes.append(int(x.shape[0]))
        return self.b(torch.tanh(self.a(x)))


class ThresholdNet(nn.Module):
    """Background logit 0, foreground logit 20 * (x - 0.5): labels = image > 0.5."""

    def forward(self, x):
        return torch.cat([torch.zeros_like(x), 20.0 * (x - 0.5)], dim=1)


def reference_predict(image, model, patch, overlap):
    """Direct full-volume Gaussian-weighted sliding window (no slab, no padding tricks)."""
    img = torch.from_numpy(image.astype(np.float32))[None, None]
    shape = image.shape
    starts = [sliding_window_starts(s, p, overlap) for s, p in zip(shape, patch, strict=True)]
    axes = []
    for p in patch:
        sigma = p / 8
        x = np.arange(p) - (p - 1) / 2
        axes.append(np.exp(-0.5 * (x / sigma) ** 2))
    w3 = np.einsum("i,j,k->ijk", *axes)
    w = torch.from_numpy(np.maximum(w3, max(w3.min(), 1e-3))).float()
    num = torch.zeros((3, *shape))
    den = torch.zeros(shape)
    with torch.no_grad():
        for z in starts[0]:
            for y in starts[1]:
                for x in starts[2]:
                    sl = (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
                    prob = torch.softmax(model(img[(..., *sl)]), dim=1)[0]
                    num[(slice(None), *sl)] += prob * w
                    den[sl] += w
    return (num / den).numpy()


@pytest.mark.parametrize("patch", [(64, 64, 64), (32, 48, 48), (5, 7, 2), (1, 16, 16)])
def test_importance_map_is_a_floored_gaussian(patch):
    w = importance_map(patch).numpy()
    assert w.shape == patch and w.dtype == np.float32
    assert w.min() >= 1e-3 - 1e-9  # no voxel without weight
    centre = tuple(p // 2 for p in patch)
    assert w[centre] == w.max()
    np.testing.assert_allclose(w, w[::-1, ::-1, ::-1], rtol=1e-6)  # symmetric
    if min(patch) >= 32:  # sigma = patch / 8: the corners are clipped to the floor
        assert w[0, 0, 0] == pytest.approx(1e-3)


@pytest.mark.parametrize("patch", [(64, 64, 64), (32, 48, 40)])
def test_importance_map_equals_monai(patch):
    """Same blending as MONAI's sliding_window_inference(mode="gaussian") (oracle: MONAI is
    in the testing extra)."""
    import monai.data.utils as monai_utils

    ref = monai_utils.compute_importance_map(patch, mode="gaussian", sigma_scale=0.125)
    np.testing.assert_allclose(importance_map(patch).numpy(), ref.numpy(), rtol=1e-5)


@pytest.mark.parametrize("shape", [(21, 37, 19), (16, 16, 16), (33, 17, 40)])
@pytest.mark.parametrize("overlap", [0.0, 0.5])
def test_stitching_matches_direct_reference(shape, overlap):
    rng = np.random.default_rng(1)
    image = rng.normal(size=shape).astype(np.float32)
    model = TinyNet()
    card = make_card()
    pred = predict(
        image,
        model,
        card,
        spacing=(1, 1, 1),
        overlap=overlap,
        batch_size=3,
        return_probabilities=True,
        amp=False,
    )
    ref = reference_predict(image, model, (16, 16, 16), overlap)
    assert isinstance(pred, Prediction)
    assert pred.labels.shape == shape and pred.labels.dtype == np.uint8
    assert pred.probabilities.shape == (3, *shape)
    np.testing.assert_allclose(pred.probabilities.astype(np.float32), ref, atol=2e-3)
    expected = np.asarray([0, 5, 7], np.uint8)[np.argmax(ref, axis=0)]
    # argmax ties at float16 precision aside, the label maps are the same
    assert np.mean(pred.labels == expected) > 0.999
    assert pred.windows == math.prod(len(sliding_window_starts(s, 16, overlap)) for s in shape)


def test_small_image_is_padded_and_cropped_back():
    image = np.random.default_rng(0).normal(size=(5, 9, 3)).astype(np.float32)
    pred = predict(image, TinyNet(), make_card(), spacing=(1, 1, 1), return_probabilities=True)
    assert pred.labels.shape == (5, 9, 3)
    assert pred.windows == 1
    np.testing.assert_allclose(pred.probabilities.astype(np.float32).sum(0), 1.0, atol=3e-3)


def sphere(shape, spacing, radius_mm, center_mm=None):
    grids = np.meshgrid(
        *[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij"
    )
    if center_mm is None:
        center_mm = [(n - 1) * s / 2 for n, s in zip(shape, spacing, strict=True)]
    r2 = sum((g - c) ** 2 for g, c in zip(grids, center_mm, strict=True))
    return r2 <= radius_mm**2


@pytest.mark.parametrize(
    "in_spacing, shape", [((3.0, 0.8, 0.8), (13, 41, 45)), ((1.0, 1.0, 1.0), (31, 30, 29))]
)
def test_resampling_round_trip_keeps_geometry(in_spacing, shape):
    """Anisotropic input at another spacing than the card: the labels come back on the
    input grid and still match the object."""
    truth = sphere(shape, in_spacing, radius_mm=11.0)
    image = np.where(truth, 1.0, 0.0).astype(np.float32)
    card = make_card(spacing=(1.5, 1.5, 1.5), classes=CLASSES[:2])
    pred = predict(image, ThresholdNet(), card, spacing=in_spacing, return_probabilities=True)
    assert pred.labels.shape == shape
    assert pred.probabilities.shape == (2, *shape)
    assert pred.stats["resampled"] == (tuple(in_spacing) != (1.5, 1.5, 1.5))
    assert set(np.unique(pred.labels)) <= {0, 5}
    inter = np.count_nonzero((pred.labels == 5) & truth)
    dice = 2 * inter / (np.count_nonzero(pred.labels == 5) + np.count_nonzero(truth))
    assert dice > 0.9, dice


def test_volume_input_uses_its_spacing():
    shape, spacing = (12, 40, 40), (3.0, 0.75, 0.75)
    truth = sphere(shape, spacing, radius_mm=10.0)
    vol = Volume(truth.astype(np.float32), spacing=spacing)
    card = make_card(spacing=(1.5, 1.5, 1.5), classes=CLASSES[:2])
    pred = predict(vol, ThresholdNet(), card)
    assert pred.labels.shape == shape
    assert pred.stats["resampled"] is True


def test_progress_reaches_total_and_is_monotonic():
    calls = []
    image = np.zeros((40, 20, 20), np.float32)
    pred = predict(
        image,
        TinyNet(),
        make_card(),
        spacing=(1, 1, 1),
        batch_size=2,
        progress=lambda d, t: calls.append((d, t)),
    )
    assert calls[-1] == (pred.windows, pred.windows)
    dones = [d for d, _ in calls]
    assert dones == sorted(dones) and len(calls) == math.ceil(pred.windows / 2)


def test_cancel_stops_within_one_batch():
    model = TinyNet()
    state = {"stop": False}

    def progress(done, total):
        if done >= 4:
            state["stop"] = True

    image = np.random.default_rng(0).normal(size=(48, 32, 32)).astype(np.float32)
    with pytest.raises(PredictionCancelled):
        predict(
            image,
            model,
            make_card(),
            spacing=(1, 1, 1),
            batch_size=2,
            progress=progress,
            should_stop=lambda: state["stop"],
        )
    assert model.calls == 2  # the batch that set the flag was the last one run


def test_cancel_before_start_runs_nothing():
    model = TinyNet()
    with pytest.raises(PredictionCancelled):
        predict(
            np.zeros((20, 20, 20), np.float32),
            model,
            make_card(),
            spacing=(1, 1, 1),
            should_stop=lambda: True,
        )
    assert model.calls == 0


def test_nonfinite_input_is_replaced_with_warning(caplog):
    image = np.random.default_rng(0).normal(size=(18, 18, 18)).astype(np.float32)
    image[3, 4, 5] = np.nan
    image[6, 7, 8] = np.inf
    image[1, 1, 1] = -np.inf
    card = make_card(norm={"kind": "zscore"})
    with caplog.at_level(logging.WARNING):
        pred = predict(image, TinyNet(), card, spacing=(1, 1, 1), return_probabilities=True)
    assert pred.stats["nonfinite_replaced"] == 3
    assert np.isfinite(pred.probabilities.astype(np.float32)).all()
    assert any("NaN" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("kind", ["zscore", "percentile"])
def test_constant_image_gives_no_nan(kind):
    image = np.full((17, 17, 17), 42.0, np.float32)
    card = make_card(norm={"kind": kind})
    pred = predict(image, TinyNet(), card, spacing=(1, 1, 1), return_probabilities=True)
    probs = pred.probabilities.astype(np.float32)
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=3e-3)


class OOMOnBigBatches(nn.Module):
    """Simulates a GPU that fits only ``limit`` windows per forward pass."""

    def __init__(self, inner, limit):
        super().__init__()
        self.inner, self.limit, self.failures = inner, limit, 0

    def forward(self, x):
        if x.shape[0] > self.limit:
            self.failures += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner(x)


def test_out_of_memory_retries_with_smaller_batches():
    image = np.random.default_rng(2).normal(size=(40, 24, 24)).astype(np.float32)
    inner = TinyNet()
    ref = predict(image, inner, make_card(), spacing=(1, 1, 1), batch_size=1)
    wrapped = OOMOnBigBatches(inner, limit=1)
    pred = predict(image, wrapped, make_card(), spacing=(1, 1, 1), batch_size=8)
    assert wrapped.failures == 3  # 8 -> 4 -> 2 -> 1
    assert pred.batch_size == 1 and pred.stats["oom_retries"] == 3
    np.testing.assert_array_equal(pred.labels, ref.labels)


def test_out_of_memory_at_batch_one_fails_clearly():
    wrapped = OOMOnBigBatches(TinyNet(), limit=0)
    with pytest.raises(InferenceMemoryError, match="out of memory on cpu.*batch size 1"):
        predict(np.zeros((20, 20, 20), np.float32), wrapped, make_card(), spacing=(1, 1, 1))


def test_other_errors_are_not_swallowed():
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("shape mismatch in layer 3")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        predict(np.zeros((20, 20, 20), np.float32), Broken(), make_card(), spacing=(1, 1, 1))


def test_wrong_class_count_is_reported():
    with pytest.raises(ValueError, match="3 classes"):
        predict(
            np.zeros((16, 16, 16), np.float32), TinyNet(n_classes=2), make_card(), spacing=(1, 1, 1)
        )


def test_bad_arguments_are_reported():
    with pytest.raises(ValueError, match="overlap"):
        predict(np.zeros((8, 8, 8)), TinyNet(), make_card(), spacing=(1, 1, 1), overlap=1.0)
    with pytest.raises(ValueError, match="input channel"):
        predict(np.zeros((8, 8)), TinyNet(), make_card(), spacing=(1, 1, 1))
    with pytest.raises(ValueError, match="spacing"):
        predict(np.zeros((8, 8, 8)), TinyNet(), make_card(), spacing=(1, 0, 1))


def test_model_mode_is_restored_and_large_label_values_fit():
    classes = [ClassInfo(0, "bg"), ClassInfo(300, "a"), ClassInfo(1000, "b")]
    model = TinyNet().train()
    pred = predict(
        np.random.default_rng(0).normal(size=(16, 16, 16)),
        model,
        make_card(classes=classes),
        spacing=(1, 1, 1),
    )
    assert model.training
    assert pred.labels.dtype == np.uint16
    assert set(np.unique(pred.labels)) <= {0, 300, 1000}


def test_window_starts_cover_evenly():
    assert sliding_window_starts(10, 16, 0.5) == [0]
    assert sliding_window_starts(16, 16, 0.5) == [0]
    starts = sliding_window_starts(100, 32, 0.5)
    assert starts[0] == 0 and starts[-1] == 100 - 32
    assert max(np.diff(starts)) <= 16
    assert len(starts) == math.ceil((100 - 32) / 16) + 1


def test_device_and_amp_policy(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") in (torch.device("cpu"), torch.device("mps"))
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu-9000")
    cpu = torch.device("cpu")
    assert resolve_amp(False, cpu) is None
    assert resolve_amp("bf16", cpu) is torch.bfloat16
    assert resolve_amp(True, cpu) is torch.bfloat16
    assert resolve_amp("on", cpu) is torch.bfloat16 and resolve_amp("off", cpu) is None
    assert resolve_amp("fp16", cpu) is torch.float16  # asked for explicitly: that one
    assert resolve_amp("auto", torch.device("meta")) is None  # no autocast elsewhere
    import napari_vnet.runtime as rt

    monkeypatch.setattr(rt, "cpu_has_native_bf16", lambda: False)
    assert resolve_amp("auto", cpu) is None  # emulated bf16 would be far slower than fp32
    monkeypatch.setattr(rt, "cpu_has_native_bf16", lambda: True)
    assert resolve_amp("auto", cpu) is torch.bfloat16
    with pytest.raises(ValueError, match="amp"):
        resolve_amp("fast please", cpu)


def test_uniform_windows_run_once_and_give_the_same_result(caplog):
    """Air around a body: windows that hold one value are computed once, reused exactly."""
    rng = np.random.default_rng(3)
    image = np.full((40, 48, 48), -1000.0, np.float32)  # air, clipped to 0 by the window
    image[14:26, 16:32, 16:32] = rng.normal(40, 30, size=(12, 16, 16))
    card = make_card(norm={"kind": "window", "low": -200, "high": 300})
    skip_model, full_model = TinyNet(), TinyNet()
    kw = dict(spacing=(1, 1, 1), batch_size=4, return_probabilities=True)
    with caplog.at_level(logging.INFO, logger="napari_vnet.inference.predict"):
        fast = predict(image, skip_model, card, **kw)
    slow = predict(image, full_model, card, skip_uniform=False, **kw)
    reused = fast.stats["uniform_windows_reused"]
    assert reused > 0 and fast.stats["windows_run"] == fast.windows - reused
    assert slow.stats["windows_run"] == slow.windows == fast.windows
    assert f"{fast.windows} windows: {fast.windows - reused} run through the network" in caplog.text
    assert skip_model.calls < full_model.calls
    np.testing.assert_array_equal(fast.labels, slow.labels)
    np.testing.assert_allclose(
        fast.probabilities.astype(np.float32), slow.probabilities.astype(np.float32), atol=1e-3
    )


def test_available_memory_reports_bytes():
    from napari_vnet.inference import available_memory

    free = available_memory()
    assert free is None or free > 10 * 1024**2


def test_absurd_patch_is_refused_before_allocating():
    card = make_card(patch=(2000, 2000, 2000))
    with pytest.raises(InferenceMemoryError, match="not enough memory"):
        predict(np.zeros((8, 8, 8), np.float32), TinyNet(), card, spacing=(1, 1, 1))
