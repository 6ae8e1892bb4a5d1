"""Normalisation and resampling shared by inference and training."""

from __future__ import annotations

import numpy as np
import pytest

from napari_vnet.transforms import normalize_intensity, resample_to_spacing, resampled_shape


def _smooth(shape, seed=0):
    z, y, x = np.meshgrid(*[np.linspace(0, 1, n) for n in shape], indexing="ij")
    return (np.sin(3 * z) + np.cos(4 * y) * x).astype(np.float32)


def test_window_clips_and_scales():
    a = np.array([-1000, -200, 50, 300, 2000], dtype=np.int16).reshape(1, 1, 5)
    out = normalize_intensity(a, {"kind": "window", "low": -200, "high": 300})
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.ravel(), [0, 0, 0.5, 1, 1])


def test_zscore_and_constant_image_without_nan():
    a = _smooth((8, 9, 10)) * 100 + 5
    out = normalize_intensity(a, {"kind": "zscore"})
    assert abs(out.mean()) < 1e-4 and abs(out.std() - 1) < 1e-3
    const = normalize_intensity(np.full((4, 4, 4), 7), {"kind": "zscore"})
    assert np.isfinite(const).all() and (const == 0).all()


def test_nan_and_inf_never_reach_the_network():
    a = np.array([np.nan, 1.0, 2.0, np.inf, -np.inf], dtype=np.float64).reshape(1, 1, 5)
    out = normalize_intensity(a, {"kind": "window", "low": 0, "high": 2})
    np.testing.assert_allclose(out.ravel(), [0.5, 0.5, 1.0, 1.0, 0.5])
    assert np.isfinite(normalize_intensity(a, {"kind": "percentile"})).all()


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown normalization kind 'magic'"):
        normalize_intensity(np.zeros((2, 2, 2)), {"kind": "magic"})


def test_resample_round_trip_is_close_for_smooth_images():
    a = _smooth((21, 30, 37))
    b = resample_to_spacing(a, (3.0, 1.0, 1.0), (1.5, 1.5, 1.5), is_label=False)
    assert b.shape == resampled_shape(a.shape, (3, 1, 1), (1.5, 1.5, 1.5)) == (42, 20, 25)
    back = resample_to_spacing(b, (1.5, 1.5, 1.5), (3.0, 1.0, 1.0), is_label=False, shape=a.shape)
    assert back.shape == a.shape
    assert np.abs(back - a)[1:-1, 1:-1, 1:-1].mean() < 0.02


def test_label_resampling_keeps_values_and_dtype():
    labels = np.zeros((20, 32, 32), np.uint8)
    labels[5:15, 8:24, 8:20] = 5
    labels[8:12, 10:14, 22:28] = 1
    up = resample_to_spacing(labels, (4.0, 1.0, 1.0), (2.0, 2.0, 2.0), is_label=True)
    assert up.dtype == np.uint8 and set(np.unique(up)) == {0, 1, 5}
    back = resample_to_spacing(
        up, (2.0, 2.0, 2.0), (4.0, 1.0, 1.0), is_label=True, shape=labels.shape
    )
    assert (back == labels).mean() > 0.97


def test_resampling_matches_simpleitk_physical_grid():
    """Voxel (k, j, i) of the output sits at k*new_spacing from the same first voxel."""
    a = _smooth((10, 12, 14))
    out = resample_to_spacing(a, (2.0, 1.0, 1.0), (1.0, 1.0, 1.0), is_label=False)
    # physical z = 3 mm is halfway between slices 1 and 2 of the source
    assert out[3, 5, 5] == pytest.approx(0.5 * (a[1, 5, 5] + a[2, 5, 5]), abs=1e-5)


def test_identity_resampling_returns_input():
    a = _smooth((4, 5, 6))
    assert resample_to_spacing(a, (1, 1, 1), (1, 1, 1), is_label=False) is a
