"""Planning from the data, as nnU-Net v2's experiment planner does it (no Qt).

* :func:`foreground_intensity_stats` / :func:`plan_normalization`: CT intensities are
  normalised with fixed statistics of the training data's *foreground* (the labelled
  voxels): clip to their 0.5 / 99.5 percentiles, subtract their mean, divide by their
  standard deviation (nnU-Net's ``CTNormalization``; Isensee et al., Nature Methods
  2021). The statistics go into the card (``{"kind": "ct", ...}``) and inference applies
  the same numbers to every scan. Other modalities keep a per-volume z-score.
* :func:`plan_spacing`: the median spacing of the cases; for anisotropic data (largest
  spacing > 3x the smallest) the coarse axis takes the 10th percentile instead, as
  nnU-Net does, so thin-slice scans are not thrown away.
* :func:`plan_patch`: the training patch from the median case shape at that spacing and a
  memory budget: start from a patch of equal extent in mm, clip to the median shape,
  grow the other axes into the budget, then shrink the axis of largest extent in mm until
  the estimated activation memory of a batch fits; sizes are multiples of the network's down-sampling
  factor (nnU-Net's ``get_plans_for_configuration``, sized for a CPU).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = [
    "activation_bytes_per_voxel",
    "foreground_intensity_stats",
    "looks_like_ct",
    "plan_normalization",
    "plan_patch",
    "plan_spacing",
]

#: voxels sampled per case for the foreground statistics (nnU-Net samples 10 000)
SAMPLES_PER_CASE = 10_000


def looks_like_ct(images: Sequence[np.ndarray]) -> bool:
    """Hounsfield units: air (below -500; MR intensities are never that negative) and
    soft tissue (above -100) in the first image."""
    a = np.asarray(images[0])
    sample = a.ravel()[:: max(1, a.size // 200_000)]
    if sample.dtype.kind not in "iuf":
        return False
    lo, hi = np.percentile(sample, [1, 99.9])
    return bool(lo < -500 and hi > -100)


def foreground_intensity_stats(
    images: Sequence[np.ndarray],
    foregrounds: Sequence[np.ndarray],
    *,
    seed: int = 0,
    percentiles: tuple[float, float] = (0.5, 99.5),
) -> dict[str, float] | None:
    """0.5 / 99.5 percentiles, mean and std of the foreground voxels (clipped) of all
    cases, from up to :data:`SAMPLES_PER_CASE` voxels each; None without foreground."""
    rng = np.random.default_rng(seed)
    values = []
    for img, fg in zip(images, foregrounds, strict=True):
        v = np.asarray(img)[fg]
        v = v[np.isfinite(v)] if v.dtype.kind == "f" else v
        if v.size > SAMPLES_PER_CASE:
            v = v[rng.choice(v.size, SAMPLES_PER_CASE, replace=False)]
        values.append(v.astype(np.float64))
    if not values or sum(v.size for v in values) < 2:
        return None
    allv = np.concatenate(values)
    low, high = (float(x) for x in np.percentile(allv, percentiles))
    clipped = np.clip(allv, low, high)
    std = float(clipped.std())
    return {
        "low": low,
        "high": high,
        "mean": float(clipped.mean()),
        "std": max(std, 1e-8),
        "percentiles": [float(percentiles[0]), float(percentiles[1])],
        "voxels": int(allv.size),
    }


def plan_normalization(loaded, classes, *, seed: int = 0) -> dict[str, Any]:
    """``{"kind": "ct", ...}`` from the foreground of ``loaded`` (the pairs of the
    training plan) when the images are CT in HU, else ``{"kind": "zscore"}``."""
    images = [p.image for p in loaded]
    if not looks_like_ct(images):
        return {"kind": "zscore"}
    values = np.asarray([c.value for c in classes if c.value != 0])
    foregrounds = []
    for p in loaded:
        fg = np.isin(p.labels, values)
        if p.mask is not None:
            fg &= p.mask
        foregrounds.append(fg)
    stats = foreground_intensity_stats(images, foregrounds, seed=seed)
    if stats is None:
        return {"kind": "zscore"}
    log.info(
        "CT normalisation from %d foreground voxels: clip [%.1f, %.1f], mean %.1f, std %.1f",
        stats["voxels"], stats["low"], stats["high"], stats["mean"], stats["std"],
    )  # fmt: skip
    return {"kind": "ct", **stats}


def plan_spacing(spacings: Sequence[Sequence[float]]) -> tuple[float, float, float]:
    """Median spacing (z, y, x); an axis > 3x coarser than the finest takes its 10th
    percentile (nnU-Net's anisotropy rule)."""
    sp = np.asarray(spacings, dtype=np.float64).reshape(-1, 3)
    target = np.median(sp, axis=0)
    worst = int(np.argmax(target))
    others = [i for i in range(3) if i != worst]
    if target[worst] > 3 * max(target[others].min(), 1e-8) and len(sp) > 1:
        target[worst] = np.percentile(sp[:, worst], 10)
    return tuple(float(s) for s in target)  # type: ignore[return-value]


def activation_bytes_per_voxel(arch: str, widths: Sequence[int], n_classes: int) -> float:
    """Rough training memory per input voxel of a patch: the feature maps kept for the
    backward pass (conv, norm and activation outputs, encoder and decoder) at every level,
    4 bytes each, plus input, target and logits."""
    per_level = 0.0
    for level, w in enumerate(widths):
        tensors = 6 if arch == "unet3d" else 8  # two conv-norm-act units, up / down paths
        per_level += 2 * tensors * w / 8**level
    return 4.0 * per_level + 4.0 * (2 + 3 * n_classes)


def _divisor(arch: str, widths: Sequence[int]) -> int:
    return 2 ** (len(widths) - 1)


def plan_patch(
    median_shape: Sequence[int],
    spacing: Sequence[float],
    *,
    arch: str,
    widths: Sequence[int],
    n_classes: int,
    batch_size: int,
    memory_mb: float,
    max_voxels: int | None = None,
) -> tuple[int, int, int]:
    """Training patch (z, y, x) for data of ``median_shape`` voxels at ``spacing``."""
    div = _divisor(arch, widths)
    shape = np.maximum(np.asarray(median_shape, dtype=np.float64), 1)
    sp = np.asarray(spacing, dtype=np.float64)
    per_voxel = activation_bytes_per_voxel(arch, widths, n_classes) * max(1, batch_size)
    budget = float(memory_mb) * 1024**2 / per_voxel
    if max_voxels:
        budget = min(budget, float(max_voxels))
    # equal extent in mm, as many voxels as the budget allows, clipped to the data
    iso = 1.0 / sp
    patch = iso * (budget / np.prod(iso)) ** (1.0 / 3.0)
    patch = np.minimum(patch, shape)

    def rounded(p):
        # nearest multiples of the divisor (at least one; the sampler pads a thin case)
        return np.maximum(div, np.round(p / div) * div).astype(int)

    # grow the axes not limited by the data while the budget allows (the extent in mm
    # of a thin slab is limited by its slice count, not by memory)
    for _ in range(8):
        free = patch < shape - 1e-6
        if not free.any() or np.prod(patch) >= budget * 0.99:
            break
        scale = (budget / np.prod(patch)) ** (1.0 / free.sum())
        patch = np.where(free, np.minimum(patch * scale, shape), patch)
    out = rounded(patch)
    # shrink the axis of largest extent in mm until the budget holds (our networks pool
    # all axes alike, so a thin scan's z side cannot shrink in small steps as nnU-Net's
    # topology allows: keeping the patch near isotropic in mm keeps its 3-D context)
    while np.prod(out) > budget and out.max() > div:
        extent = out * sp
        extent[out <= div] = -np.inf
        axis = int(np.argmax(extent))
        out[axis] -= div
    # a thin axis below one divisor keeps the data's own size (the network pads it)
    out = np.where(shape < div, np.ceil(shape).astype(int), out)
    return tuple(int(v) for v in out)  # type: ignore[return-value]
