"""Dice and HD95 against hand-computed cases, a brute-force reference and MONAI."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from napari_vnet.metrics import dice_per_class, hausdorff_per_class, hd95_per_class


def brute_force_hd(p, g, spacing, q=95.0):
    """All-pairs surface distances (tiny arrays only)."""

    def surface_points(m):
        s = m & ~ndimage.binary_erosion(m, ndimage.generate_binary_structure(3, 1))
        return np.argwhere(s) * np.asarray(spacing)

    a, b = surface_points(p), surface_points(g)
    d = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    return max(np.percentile(d.min(1), q), np.percentile(d.min(0), q))


def test_dice_hand_cases():
    gt = np.zeros((4, 4, 4), np.uint8)
    pred = np.zeros_like(gt)
    gt[0, 0, :4] = 5  # 4 voxels
    pred[0, 0, 2:4] = 5  # 2 voxels, both inside
    pred[3, 3, 3] = 7  # class absent from gt
    d = dice_per_class(pred, gt)
    assert d[5] == pytest.approx(2 * 2 / 6)
    assert d[7] == 0.0
    assert dice_per_class(pred, gt, labels=[9]) == {9: 1.0}  # absent from both


def test_hd95_shifted_slab_is_the_shift_in_mm():
    gt = np.zeros((20, 12, 12), np.uint8)
    gt[5:10, 2:10, 2:10] = 1
    pred = np.zeros_like(gt)
    pred[8:13, 2:10, 2:10] = 1  # shifted by 3 slices along z
    # every surface voxel of the z faces is 3 slices from the other's; side faces overlap
    spacing = (2.0, 0.5, 0.5)
    hd100 = hausdorff_per_class(pred, gt, spacing, percentile=100)[1]
    assert hd100 == pytest.approx(6.0)
    assert hd95_per_class(pred, gt, spacing)[1] == pytest.approx(
        brute_force_hd(pred == 1, gt == 1, spacing)
    )


def test_hd95_empty_cases():
    a = np.zeros((5, 5, 5), np.uint8)
    b = a.copy()
    b[2, 2, 2] = 3
    assert hd95_per_class(a, b)[3] == math.inf
    assert hd95_per_class(a, a, labels=[3])[3] == 0.0
    assert hd95_per_class(b, b)[3] == 0.0


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="same grid"):
        dice_per_class(np.zeros((3, 3, 3)), np.zeros((3, 3, 4)))
    with pytest.raises(ValueError, match="spacing"):
        hd95_per_class(np.zeros((3, 3, 3)), np.zeros((3, 3, 3)), spacing=(1, 1))


def random_blobs(rng, shape, n):
    field = ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
    labels = np.zeros(shape, np.uint8)
    for value, q in zip((1, 2, 5)[:n], (80, 90, 96), strict=False):
        labels[field > np.percentile(field, q)] = value
    return labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_brute_force_and_touching_the_border(seed):
    rng = np.random.default_rng(seed)
    shape = (9, 14, 11)
    gt = random_blobs(rng, shape, 3)
    pred = random_blobs(rng, shape, 3)
    spacing = (3.0, 0.8, 1.1)
    ours = hd95_per_class(pred, gt, spacing)
    for v, h in ours.items():
        p, g = pred == v, gt == v
        if p.any() and g.any():
            assert h == pytest.approx(brute_force_hd(p, g, spacing), rel=1e-9), v


@pytest.mark.parametrize("seed", [3, 4])
def test_against_monai(seed):
    import monai.metrics as monai_metrics  # the testing extra holds MONAI
    import torch

    rng = np.random.default_rng(seed)
    shape = (24, 30, 28)
    gt = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    # objects well inside the volume: MONAI and we agree on what a surface is there
    inner = (slice(3, -3), slice(3, -3), slice(3, -3))
    gt[inner] = random_blobs(rng, tuple(s - 6 for s in shape), 2)
    pred[inner] = random_blobs(rng, tuple(s - 6 for s in shape), 2)
    spacing = (2.0, 0.7, 0.9)
    ours_h = hd95_per_class(pred, gt, spacing, labels=[1, 2])
    ours_d = dice_per_class(pred, gt, labels=[1, 2])
    for v in (1, 2):
        p = torch.from_numpy((pred == v)[None, None].astype(np.float32))
        g = torch.from_numpy((gt == v)[None, None].astype(np.float32))
        ref_h = monai_metrics.compute_hausdorff_distance(
            p, g, include_background=True, percentile=95, spacing=list(spacing)
        ).item()
        ref_d = monai_metrics.compute_dice(p, g, include_background=True).item()
        assert ours_h[v] == pytest.approx(ref_h, rel=1e-5, abs=1e-5), v
        assert ours_d[v] == pytest.approx(ref_d, rel=1e-6), v
